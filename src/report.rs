//! `--report DIR`: the evaluation as Markdown and as one self-contained HTML page with SVG bars.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use tongban_model::eval::EvalReport;

fn markdown(r: &EvalReport, source: &Path) -> String {
    let mut md = format!(
        "# Evaluation\n\n- data: `{}`\n- protocol: {}\n- services ranked: {}\n- cases: {}\n- ties: {}\n\n",
        source.display(),
        r.protocol,
        r.services,
        r.scorers.first().map_or(0, |s| s.metrics.cases),
        r.tie_rule
    );
    md += "| scorer |";
    for k in &r.ks {
        let _ = write!(md, " HR@{k} | NDCG@{k} |");
    }
    md += " MRR | coverage |\n|---|";
    md += &"---|".repeat(2 * r.ks.len() + 2);
    md += "\n";
    for s in &r.scorers {
        let _ = write!(md, "| {} |", s.name);
        for (h, n) in s.metrics.hr.iter().zip(&s.metrics.ndcg) {
            let _ = write!(md, " {:.4} | {:.4} |", h.1, n.1);
        }
        let _ = writeln!(md, " {:.4} | {:.3} |", s.metrics.mrr, s.metrics.coverage);
    }
    let segs: Vec<&String> =
        r.scorers.first().map(|s| s.per_segment.iter().map(|p| &p.0).collect()).unwrap_or_default();
    if segs.len() > 1 {
        let k = r.ks.iter().copied().find(|&k| k == 5).unwrap_or(r.ks[0]);
        let ki = r.ks.iter().position(|&x| x == k).unwrap_or(0);
        let _ = write!(md, "\n## HR@{k} per segment\n\n| segment |");
        for s in &r.scorers {
            let _ = write!(md, " {} |", s.name);
        }
        md += "\n|---|";
        md += &"---|".repeat(r.scorers.len());
        md += "\n";
        for (i, seg) in segs.iter().enumerate() {
            let _ = write!(md, "| {seg} ({} cases) |", r.scorers[0].per_segment[i].1.cases);
            for s in &r.scorers {
                let _ = write!(md, " {:.4} |", s.per_segment.get(i).map_or(0.0, |p| p.1.hr[ki].1));
            }
            md += "\n";
        }
    }
    if let Some(rk) = &r.ranker {
        if let Some(f) = &rk.forest {
            md += "\n## Ranker\n\n";
            let _ = writeln!(md, "Boosted trees (perpetual): {} trees, {} nodes.", f.roots.len(), f.nodes.len());
        } else {
            md += "\n## Ranker weights (logistic regression; features then their square roots)\n\n";
            let row: Vec<&str> = tongban_features::vector::SCHEMA
                .iter()
                .chain(tongban_model::ranker::MODEL_FEATURES.iter())
                .map(|f| f.name)
                .collect();
            let names: Vec<String> =
                row.iter().map(|n| (*n).to_owned()).chain(row.iter().map(|n| format!("sqrt({n})"))).collect();
            md += "| feature | weight |\n|---|---|\n";
            for (n, w) in names.iter().zip(&rk.weights) {
                let _ = writeln!(md, "| {n} | {w:.4} |");
            }
            let _ = writeln!(md, "| (bias) | {:.4} |", rk.bias);
        }
    }
    md
}

/// Grouped horizontal bars: one group per cut-off k, one bar per scorer.
fn svg(r: &EvalReport, title: &str, pick: impl Fn(&tongban_model::eval::Metrics) -> Vec<f64>) -> String {
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
    let bar = 14.0;
    let group = bar * r.scorers.len() as f64 + 12.0;
    let height = 40.0 + group * r.ks.len() as f64 + 20.0 * r.scorers.len() as f64;
    let max = r.scorers.iter().flat_map(|s| pick(&s.metrics)).fold(1e-9, f64::max);
    let width = 640.0;
    let plot = width - 200.0;
    let mut out = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='11'><text x='10' y='18' font-size='14'>{title}</text>");
    for (ki, k) in r.ks.iter().enumerate() {
        let y0 = 30.0 + ki as f64 * group;
        let _ = write!(out, "<text x='10' y='{}'>k = {k}</text>", y0 + group / 2.0);
        for (si, s) in r.scorers.iter().enumerate() {
            let v = pick(&s.metrics)[ki];
            let y = y0 + si as f64 * bar;
            let w = v / max * plot;
            let _ = write!(
                out,
                "<rect x='70' y='{y}' width='{w:.1}' height='{}' fill='{}'/><text x='{:.1}' y='{}'>{v:.4}</text>",
                bar - 2.0,
                colours[si % colours.len()],
                74.0 + w,
                y + bar - 4.0
            );
        }
    }
    let ly = 30.0 + group * r.ks.len() as f64;
    for (si, s) in r.scorers.iter().enumerate() {
        let y = ly + si as f64 * 18.0;
        let _ = write!(
            out,
            "<rect x='70' y='{y}' width='12' height='12' fill='{}'/><text x='88' y='{}'>{}</text>",
            colours[si % colours.len()],
            y + 10.0,
            s.name
        );
    }
    out + "</svg>"
}

/// The report's Markdown as HTML (tables as tables). Raw HTML in the Markdown is escaped: the
/// report quotes file names and scorer names, which must not become markup.
fn markdown_html(md: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser};
    let parser = Parser::new_ext(md, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        e => e,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

pub fn write(dir: &Path, r: &EvalReport, source: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = markdown(r, source);
    std::fs::write(dir.join("report.md"), &md)
        .with_context(|| format!("writing {}", dir.join("report.md").display()))?;
    let hr = svg(r, "HR@k", |m| m.hr.iter().map(|x| x.1).collect());
    let ndcg = svg(r, "NDCG@k", |m| m.ndcg.iter().map(|x| x.1).collect());
    let html = format!(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tongban evaluation</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         th,td{{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:right}}th:first-child,td:first-child{{text-align:left}}</style></head>\
         <body><h1>tongban evaluation</h1>{hr}{ndcg}{}</body></html>\n",
        markdown_html(&md)
    );
    std::fs::write(dir.join("report.html"), html)
        .with_context(|| format!("writing {}", dir.join("report.html").display()))?;
    Ok(())
}
