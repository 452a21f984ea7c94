//! The analytics tables and charts, as HTML (the console's pages and `report.html`) and as
//! Markdown (`report.md`): one renderer for both, so the console and `tongban report` show the
//! same figures.

use std::fmt::Write as _;

use maud::{html, Markup, PreEscaped};
use tongban_features::analytics::{ApprovalsReport, JourneysReport, RatingsReport, Reports};

use super::labels::t;
use crate::locale::Locale;

/// Which analytics a page or report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Ratings,
    Approvals,
    Journeys,
}

impl Which {
    pub fn parse(s: &str) -> Option<Which> {
        match s {
            "ratings" => Some(Which::Ratings),
            "approvals" => Some(Which::Approvals),
            "journeys" => Some(Which::Journeys),
            _ => None,
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            Which::Ratings => "ratings",
            Which::Approvals => "approvals",
            Which::Journeys => "journeys",
        }
    }
}

/// Rows shown per table on a page (reports write every row).
pub const PAGE_ROWS: usize = 30;

fn name<'a>(l: Locale, zh: &'a str, en: &'a str) -> &'a str {
    if l == Locale::En && !en.is_empty() {
        en
    } else {
        zh
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

/// Horizontal bars: one per row, scaled to the largest value, with the value written beside.
pub fn bars(title: &str, rows: &[(String, f64, String)]) -> Markup {
    let max = rows.iter().map(|r| r.1).fold(1e-12, f64::max);
    let (bar, label_w, plot) = (18.0, 300.0, 360.0);
    let height = 30.0 + bar * rows.len() as f64 + 10.0;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label=(title)
            width=(label_w + plot + 90.0) height=(height) font-family="sans-serif" font-size="12" {
            text x="4" y="18" font-size="14" { (title) }
            @for (i, (label, v, shown)) in rows.iter().enumerate() {
                @let y = 28.0 + i as f64 * bar;
                @let w = (v / max * plot).max(0.0);
                text x=(label_w - 6.0) y=(y + 13.0) text-anchor="end" { (truncate(label, 38)) }
                rect x=(label_w) y=(y + 2.0) width=(format!("{w:.1}")) height=(bar - 5.0) fill="#3b6ea5" {}
                text x=(label_w + w + 4.0) y=(y + 13.0) { (shown) }
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}

pub fn ratings_html(r: &RatingsReport, l: Locale, rows: usize) -> Markup {
    let worst: Vec<_> = r.services.iter().take(rows).collect();
    let chart: Vec<(String, f64, String)> =
        worst.iter().take(12).map(|s| (name(l, &s.zh, &s.en).to_string(), s.bad_share, pct(s.bad_share))).collect();
    html! {
        @if r.n == 0 { p.empty { (t("none", l)) } } @else {
            (bars(t("worst_services", l), &chart))
            h2 { (t("worst_services", l)) }
            table #ratings-services {
                thead { tr { th { (t("service", l)) } th { (t("department", l)) } th.num { (t("n_ratings", l)) }
                    th.num { (t("mean_rating", l)) } th.num { (t("bad_share", l)) } th { (t("trend", l)) } } }
                tbody { @for s in &worst { tr data-service=(s.service) {
                    td { a href=(format!("/console/ratings?service={}", s.service)) { (name(l, &s.zh, &s.en)) } br; small { code { (s.service) } } }
                    td { (name(l, &s.department, &s.department_en)) }
                    td.num { (s.n) } td.num { (format!("{:.2}", s.mean)) } td.num.bad { (pct(s.bad_share)) }
                    td { (spark(&s.trend.iter().map(|m| m.mean).collect::<Vec<_>>())) }
                } } }
            }
            h2 { (t("departments_by_bad", l)) }
            table #ratings-departments {
                thead { tr { th { (t("department", l)) } th.num { (t("n_ratings", l)) } th.num { (t("mean_rating", l)) } th.num { (t("bad_share", l)) } } }
                tbody { @for d in &r.departments { tr {
                    td { (name(l, &d.department, &d.department_en)) } td.num { (d.n) } td.num { (format!("{:.2}", d.mean)) } td.num { (pct(d.bad_share)) }
                } } }
            }
            h2 { (t("months", l)) }
            (bars(t("months", l), &r.months.iter().rev().take(24).rev().map(|m| (m.month.clone(), m.mean, format!("{:.2} ({})", m.mean, m.n))).collect::<Vec<_>>()))
            h2 { (t("push_feedback", l)) }
            table #push-feedback { tbody {
                tr { th { (t("opened", l)) } td.num { (r.push.opened) } }
                tr { th { (t("dismissed", l)) } td.num { (r.push.dismissed) } }
                tr { th { (t("rated", l)) } td.num { (r.push.rated) } }
                tr { th { (t("mean_rating", l)) } td.num { (format!("{:.2}", r.push.mean_rating)) } }
            } }
        }
    }
}

/// A small line of the values (monthly means 1-5), newest right.
fn spark(values: &[f64]) -> Markup {
    if values.len() < 2 {
        return html! {};
    }
    let (w, h) = (120.0, 24.0);
    let step = w / (values.len() - 1) as f64;
    let mut points = String::new();
    for (i, v) in values.iter().enumerate() {
        let _ = write!(points, "{:.1},{:.1} ", i as f64 * step, h - (v - 1.0) / 4.0 * h);
    }
    html! { svg xmlns="http://www.w3.org/2000/svg" width=(w) height=(h) class="spark" {
        polyline points=(points.trim_end()) fill="none" stroke="#3b6ea5" stroke-width="1.5" {}
    } }
}

pub fn approvals_html(r: &ApprovalsReport, l: Locale, rows: usize) -> Markup {
    let over: Vec<_> = r.services.iter().filter(|s| s.over > 0).take(rows).collect();
    let chart: Vec<(String, f64, String)> = r
        .departments
        .iter()
        .take(12)
        .map(|d| (name(l, &d.department, &d.department_en).to_string(), d.excess_days, format!("{:.0}", d.excess_days)))
        .collect();
    html! {
        @if r.applications == 0 { p.empty { (t("none", l)) } } @else {
            p.note { (t("approvals_note", l)) }
            p { (t("applications", l)) ": " strong #approvals-total { (r.applications) } " · " (t("over", l)) ": " strong #approvals-over { (r.over) } }
            (bars(t("departments_by_excess", l), &chart))
            h2 { (t("services_over", l)) }
            table #approvals-services {
                thead { tr { th { (t("service", l)) } th { (t("department", l)) } th.num { (t("limit_days", l)) } th.num { (t("applications", l)) }
                    th.num { (t("median_days", l)) } th.num { (t("p90_days", l)) } th.num { (t("over_share", l)) } th.num { (t("excess_days", l)) }
                    th.num { (t("untimed_share", l)) } th.num { (t("untimed_median", l)) } } }
                tbody { @for s in &over { tr data-service=(s.service) data-over-share=(s.over_share) {
                    td { (name(l, &s.zh, &s.en)) br; small { code { (s.service) } } }
                    td { (name(l, &s.department, &s.department_en)) }
                    td.num { (s.limit_days) } td.num { (s.applications) } td.num { (opt(s.median_days)) } td.num { (opt(s.p90_days)) }
                    td.num.bad { (pct(s.over_share)) } td.num { (format!("{:.1}", s.excess_days)) }
                    td.num { (pct(s.untimed_share)) } td.num { (opt(s.untimed_median_days)) }
                } } }
            }
            h2 { (t("departments_by_excess", l)) }
            table #approvals-departments {
                thead { tr { th { (t("department", l)) } th.num { (t("applications", l)) } th.num { (t("over", l)) } th.num { (t("over_share", l)) } th.num { (t("excess_days", l)) } } }
                tbody { @for d in &r.departments { tr {
                    td { (name(l, &d.department, &d.department_en)) } td.num { (d.applications) } td.num { (d.over) } td.num { (pct(d.over_share)) } td.num { (format!("{:.1}", d.excess_days)) }
                } } }
            }
        }
    }
}

pub fn journeys_html(r: &JourneysReport, l: Locale, rows: usize) -> Markup {
    html! {
        @if r.bundles.is_empty() { p.empty { (t("none", l)) } } @else {
            p.note { (t("journeys_note", l)) }
            h2 { (t("stalls", l)) }
            table #journeys-stalls {
                thead { tr { th { (t("bundle", l)) } th { (t("step", l)) } th.num { (t("stalled", l)) } th.num { (t("waiting", l)) } th.num { (t("median_wait", l)) } th.num { (t("stall_after", l)) } } }
                tbody { @for s in r.stalls.iter().take(rows) { tr {
                    td { (name(l, &s.bundle_zh, &s.bundle_en)) } td { (s.step + 1) ". " (name(l, &s.zh, &s.en)) }
                    td.num.bad { (s.stalled) } td.num { (s.waiting) } td.num { (opt(s.median_wait_days)) } td.num { (opt(s.stall_after_days)) }
                } } }
            }
            @for b in &r.bundles {
                section.bundle data-bundle=(b.bundle) {
                    h2 { (name(l, &b.zh, &b.en)) " " small { code { (b.bundle) } } }
                    p { (t("started", l)) ": " strong.started { (b.started) } " · " (t("finished", l)) ": " strong { (b.finished) } }
                    (bars(&format!("{} · {}", name(l, &b.zh, &b.en), t("reached", l)),
                        &b.steps.iter().map(|s| (format!("{}. {}", s.step + 1, name(l, &s.zh, &s.en)), s.reached as f64, s.reached.to_string())).collect::<Vec<_>>()))
                    table.funnel {
                        thead { tr { th { (t("step", l)) } th.num { (t("reached", l)) } th.num { (t("waiting", l)) } th.num { (t("stalled", l)) }
                            th.num { (t("median_wait", l)) } th.num { (t("p90_wait", l)) } th.num { (t("stall_after", l)) } } }
                        tbody { @for s in &b.steps { tr {
                            td { (s.step + 1) ". " (name(l, &s.zh, &s.en)) }
                            td.num { (s.reached) } td.num { (s.waiting) } td.num { (s.stalled) }
                            td.num { (opt(s.median_wait_days)) } td.num { (opt(s.p90_wait_days)) } td.num { (opt(s.stall_after_days)) }
                        } } }
                    }
                }
            }
        }
    }
}

pub fn section_html(r: &Reports, which: Which, l: Locale, rows: usize) -> Markup {
    match which {
        Which::Ratings => ratings_html(&r.ratings, l, rows),
        Which::Approvals => approvals_html(&r.approvals, l, rows),
        Which::Journeys => journeys_html(&r.journeys, l, rows),
    }
}

pub const STYLE: &str = "body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:0;color:#1d2733}\
main{max-width:78em;margin:0 auto;padding:1em 1.5em}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}\
th,td{border-bottom:1px solid #dde3ea;padding:.3em .6em;text-align:left;vertical-align:top}td.num,th.num{text-align:right}\
td.bad{color:#b3261e;font-weight:600}.note{color:#4a5a6a;font-size:13px;max-width:60em}.chart{display:block;margin:.5em 0}\
nav{background:#173a5e;padding:.5em 1.5em}nav a{color:#fff;margin-right:1.2em;text-decoration:none}nav a.on{font-weight:700;text-decoration:underline}\
.banner{background:#fff3cd;border-bottom:1px solid #e0c36a;padding:.5em 1.5em}.flash{background:#e6f4ea;padding:.5em 1em}\
.error{background:#fce8e6;padding:.5em 1em}form.inline{display:inline}button{cursor:pointer}";

/// A whole report document (`report.html`).
pub fn report_document(r: &Reports, which: Which, l: Locale, source: &str) -> String {
    html! {
        (maud::DOCTYPE)
        html lang=(l.tag()) {
            head { meta charset="utf-8"; title { "tongban · " (t(which.key(), l)) } style { (PreEscaped(STYLE)) } }
            body { main {
                h1 { (t(which.key(), l)) }
                p.note { (t("events", l)) ": " (r.events) " · " (t("period", l)) ": "
                    (r.first_at.as_deref().unwrap_or("-")) " – " (r.last_at.as_deref().unwrap_or("-")) " · " code { (source) } }
                (section_html(r, which, l, usize::MAX))
            } }
        }
    }
    .into_string()
}

/// The same tables in Markdown (`report.md`).
pub fn markdown(r: &Reports, which: Which, l: Locale, source: &str) -> String {
    let mut out = format!(
        "# {}\n\n{}: {} · {}: {} – {} · `{}`\n\n",
        t(which.key(), l),
        t("events", l),
        r.events,
        t("period", l),
        r.first_at.as_deref().unwrap_or("-"),
        r.last_at.as_deref().unwrap_or("-"),
        source
    );
    fn table(out: &mut String, title: &str, head: &[&str], rows: Vec<Vec<String>>) {
        let _ = writeln!(
            out,
            "## {title}\n\n| {} |\n|{}|",
            head.join(" | "),
            head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        );
        for row in rows {
            let _ = writeln!(out, "| {} |", row.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | "));
        }
        out.push('\n');
    }
    match which {
        Which::Ratings => {
            let x = &r.ratings;
            table(
                &mut out,
                t("worst_services", l),
                &[t("service", l), t("department", l), t("n_ratings", l), t("mean_rating", l), t("bad_share", l)],
                x.services
                    .iter()
                    .map(|s| {
                        vec![
                            format!("{} (`{}`)", name(l, &s.zh, &s.en), s.service),
                            name(l, &s.department, &s.department_en).into(),
                            s.n.to_string(),
                            format!("{:.2}", s.mean),
                            pct(s.bad_share),
                        ]
                    })
                    .collect(),
            );
            table(
                &mut out,
                t("departments_by_bad", l),
                &[t("department", l), t("n_ratings", l), t("mean_rating", l), t("bad_share", l)],
                x.departments
                    .iter()
                    .map(|d| {
                        vec![
                            name(l, &d.department, &d.department_en).into(),
                            d.n.to_string(),
                            format!("{:.2}", d.mean),
                            pct(d.bad_share),
                        ]
                    })
                    .collect(),
            );
            table(
                &mut out,
                t("months", l),
                &[t("month", l), t("n_ratings", l), t("mean_rating", l), t("bad_share", l)],
                x.months
                    .iter()
                    .map(|m| vec![m.month.clone(), m.n.to_string(), format!("{:.2}", m.mean), pct(m.bad_share)])
                    .collect(),
            );
            table(
                &mut out,
                t("push_feedback", l),
                &[t("opened", l), t("dismissed", l), t("rated", l), t("mean_rating", l)],
                vec![vec![
                    x.push.opened.to_string(),
                    x.push.dismissed.to_string(),
                    x.push.rated.to_string(),
                    format!("{:.2}", x.push.mean_rating),
                ]],
            );
        }
        Which::Approvals => {
            let x = &r.approvals;
            let _ = writeln!(out, "{}\n", t("approvals_note", l));
            let _ = writeln!(out, "{}: {} · {}: {}\n", t("applications", l), x.applications, t("over", l), x.over);
            table(
                &mut out,
                t("services_over", l),
                &[
                    t("service", l),
                    t("department", l),
                    t("limit_days", l),
                    t("applications", l),
                    t("median_days", l),
                    t("p90_days", l),
                    t("over_share", l),
                    t("excess_days", l),
                    t("untimed_share", l),
                    t("untimed_median", l),
                ],
                x.services
                    .iter()
                    .filter(|s| s.over > 0)
                    .map(|s| {
                        vec![
                            format!("{} (`{}`)", name(l, &s.zh, &s.en), s.service),
                            name(l, &s.department, &s.department_en).into(),
                            s.limit_days.to_string(),
                            s.applications.to_string(),
                            opt(s.median_days),
                            opt(s.p90_days),
                            pct(s.over_share),
                            format!("{:.1}", s.excess_days),
                            pct(s.untimed_share),
                            opt(s.untimed_median_days),
                        ]
                    })
                    .collect(),
            );
            table(
                &mut out,
                t("departments_by_excess", l),
                &[t("department", l), t("applications", l), t("over", l), t("over_share", l), t("excess_days", l)],
                x.departments
                    .iter()
                    .map(|d| {
                        vec![
                            name(l, &d.department, &d.department_en).into(),
                            d.applications.to_string(),
                            d.over.to_string(),
                            pct(d.over_share),
                            format!("{:.1}", d.excess_days),
                        ]
                    })
                    .collect(),
            );
        }
        Which::Journeys => {
            let x = &r.journeys;
            let _ = writeln!(out, "{}\n", t("journeys_note", l));
            table(
                &mut out,
                t("stalls", l),
                &[
                    t("bundle", l),
                    t("step", l),
                    t("stalled", l),
                    t("waiting", l),
                    t("median_wait", l),
                    t("stall_after", l),
                ],
                x.stalls
                    .iter()
                    .map(|s| {
                        vec![
                            name(l, &s.bundle_zh, &s.bundle_en).into(),
                            format!("{}. {}", s.step + 1, name(l, &s.zh, &s.en)),
                            s.stalled.to_string(),
                            s.waiting.to_string(),
                            opt(s.median_wait_days),
                            opt(s.stall_after_days),
                        ]
                    })
                    .collect(),
            );
            for b in &x.bundles {
                table(
                    &mut out,
                    &format!(
                        "{} (`{}`): {} {}, {} {}",
                        name(l, &b.zh, &b.en),
                        b.bundle,
                        t("started", l),
                        b.started,
                        t("finished", l),
                        b.finished
                    ),
                    &[
                        t("step", l),
                        t("reached", l),
                        t("waiting", l),
                        t("stalled", l),
                        t("median_wait", l),
                        t("p90_wait", l),
                    ],
                    b.steps
                        .iter()
                        .map(|s| {
                            vec![
                                format!("{}. {}", s.step + 1, name(l, &s.zh, &s.en)),
                                s.reached.to_string(),
                                s.waiting.to_string(),
                                s.stalled.to_string(),
                                opt(s.median_wait_days),
                                opt(s.p90_wait_days),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    out
}
