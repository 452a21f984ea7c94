//! The console's pages: one handler per page or action.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;
use tower::ServiceExt;

use tongban_features::domain::SubjectId;
use tongban_features::time::Timestamp;

use super::analytics::{self as view, Which, PAGE_ROWS, STYLE};
use super::labels::t;
use super::{csrf_ok, forbidden, Ctx};
use crate::app::AppState;
use crate::clock::wall_ms;
use crate::locale::Locale;
use crate::store::AuditEntry;

type Params = Query<HashMap<String, String>>;
type Fields = Form<HashMap<String, String>>;

const NAV: [(&str, &str); 7] = [
    ("overview", "/console/"),
    ("models", "/console/models"),
    ("pushes", "/console/pushes"),
    ("ratings", "/console/ratings"),
    ("journeys", "/console/journeys"),
    ("approvals", "/console/approvals"),
    ("subjects", "/console/subjects"),
];

fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

/// A page: navigation, language switch, the open-console banner, an optional flash message.
fn layout(ctx: &Ctx, current: &str, flash: Option<(bool, String)>, body: Markup) -> Html<String> {
    let l = ctx.lang;
    let other = if l == Locale::En { "zh-CN" } else { "en" };
    let href = NAV.iter().find(|(k, _)| *k == current).map_or("/console/", |(_, h)| h);
    Html(
        html! {
            (DOCTYPE)
            html lang=(l.tag()) {
                head { meta charset="utf-8"; title { (t(current, l)) " · " (t("console", l)) } style { (PreEscaped(STYLE)) } }
                body {
                    nav {
                        @for (key, href) in NAV {
                            a href=(href) class=[(key == current).then_some("on")] { (t(key, l)) }
                        }
                        a href=(format!("{href}?lang={other}")) #lang { (t("language", l)) }
                        @if !ctx.open && !ctx.csrf.is_empty() {
                            form.inline method="post" action="/console/logout" {
                                (csrf_field(ctx)) button type="submit" #logout { (t("logout", l)) }
                            }
                        }
                    }
                    @if ctx.open { div.banner #open-mode { (t("open_mode", l)) } }
                    main {
                        h1 { (t(current, l)) }
                        @if let Some((ok, text)) = &flash { div class=(if *ok { "flash" } else { "error" }) #flash { (text) } }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

pub(super) fn message_page(ctx: &Ctx, text: &str) -> Html<String> {
    layout(ctx, "overview", Some((false, text.to_string())), html! {})
}

pub(super) async fn login_form(Extension(ctx): Extension<Ctx>) -> Response {
    if !ctx.csrf.is_empty() {
        return Redirect::to("/console/").into_response();
    }
    login_page(&ctx, None).into_response()
}

fn login_page(ctx: &Ctx, error: Option<&str>) -> Html<String> {
    let l = ctx.lang;
    Html(
        html! {
            (DOCTYPE)
            html lang=(l.tag()) {
                head { meta charset="utf-8"; title { (t("login", l)) " · " (t("console", l)) } style { (PreEscaped(STYLE)) } }
                body { main {
                    h1 { (t("console", l)) }
                    @if let Some(e) = error { div.error #flash { (e) } }
                    form method="post" action="/console/login" {
                        label { (t("operator_key", l)) " " input type="password" name="key" autocomplete="current-password" required; }
                        " " button type="submit" { (t("login", l)) }
                    }
                    p { a href="/console/login?lang=en" { "English" } " · " a href="/console/login?lang=zh-CN" { "中文" } }
                } }
            }
        }
        .into_string(),
    )
}

/// Exchanges an operator key for a session. The form has no CSRF token (there is no session
/// yet); SameSite=Strict on the cookie and the key itself stand in for it.
pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    headers: axum::http::HeaderMap,
    Form(f): Fields,
) -> Response {
    let key = f.get("key").map(String::as_str).unwrap_or("");
    if !crate::http::auth::is_operator_key(&state.settings.keys, key) {
        return (StatusCode::UNAUTHORIZED, login_page(&ctx, Some(t("wrong_key", ctx.lang)))).into_response();
    }
    // Who, in the audit log: a fingerprint of the key, never the key.
    let who = format!("operator-{:016x}", tongban_features::io::fnv1a(key.as_bytes()));
    let token = state.console.open_session(who);
    let mut res = Redirect::to("/console/").into_response();
    res.headers_mut().append(header::SET_COOKIE, super::set_cookie(&headers, super::SESSION_COOKIE, &token, None));
    res
}

pub(super) async fn logout(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    headers: axum::http::HeaderMap,
    Form(f): Fields,
) -> Response {
    if !csrf_ok(&ctx, &f) {
        return forbidden(&ctx);
    }
    if let Some(tok) = super::cookie(&headers, super::SESSION_COOKIE) {
        state.console.close_session(tok);
    }
    let mut res = Redirect::to("/console/login").into_response();
    res.headers_mut().append(header::SET_COOKIE, super::set_cookie(&headers, super::SESSION_COOKIE, "", Some(0)));
    res
}

/// Scalar leaves of a JSON value as (path, text), at most `max`.
fn flatten(v: &Value, prefix: &str, out: &mut Vec<(String, String)>, max: usize) {
    if out.len() >= max {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(x, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, out, max);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(x, &format!("{prefix}[{i}]"), out, max);
            }
        }
        Value::Null => {}
        Value::Number(n) => {
            out.push((prefix.to_string(), n.as_f64().map_or_else(|| n.to_string(), |f| format!("{f:.4}"))))
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Bool(b) => out.push((prefix.to_string(), b.to_string())),
    }
}

pub(super) async fn overview(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> Html<String> {
    let l = ctx.lang;
    let served = state.models.active();
    let h = &served.header;
    let mut metrics = Vec::new();
    if let Some(m) = &h.metrics {
        flatten(m, "", &mut metrics, 40);
    }
    let store = state.store.ping().await;
    let depth = state.queue.depth().await;
    let routes = state.metrics.routes();
    layout(
        &ctx,
        "overview",
        None,
        html! {
            h2 { (t("active_model", l)) }
            table #active-model { tbody {
                tr { th { (t("version", l)) } td #model-version { (served.version) } }
                tr { th { (t("trained_on", l)) } td { code { (h.data.source) } " · " (h.data.events) " " (t("events", l)) " · " (h.data.subjects) } }
                tr { th { (t("path", l)) } td { code { (served.path.display()) } } }
            } }
            h3 { (t("evaluation", l)) }
            @if metrics.is_empty() { p { (t("none", l)) } } @else {
                table #model-metrics { tbody { @for (k, v) in &metrics { tr { th { code { (k) } } td.num { (v) } } } } }
            }
            h2 { (t("health", l)) }
            table #health { tbody {
                tr { th { (t("store", l)) " (" (state.store.kind()) ")" } td { @match &store { Ok(()) => { (t("ok", l)) }, Err(e) => { (t("down", l)) ": " (e.to_string()) } } } }
                tr { th { (t("queue", l)) " (" (state.queue.kind()) ")" } td { @match &depth {
                    Ok(d) => { (t("ok", l)) " · " (t("ready", l)) " " (d.ready) " · " (t("pending", l)) " " (d.pending) " · " (t("delayed", l)) " " (d.delayed) " · " (t("dead", l)) " " (d.dead) },
                    Err(e) => { (t("down", l)) ": " (e.to_string()) } } } }
            } }
            h2 { (t("traffic", l)) }
            table #routes {
                thead { tr { th { (t("route", l)) } th.num { (t("requests", l)) } th.num { (t("errors", l)) } th.num { (t("mean_ms", l)) } } }
                tbody { @for (route, n, errors, mean) in &routes { tr data-route=(route) {
                    td { code { (route) } } td.num.requests { (n) } td.num { (errors) } td.num { (format!("{mean:.2}")) }
                } } }
            }
        },
    )
}

fn models_page(
    state: &AppState,
    ctx: &Ctx,
    q: &HashMap<String, String>,
    flash: Option<(bool, String)>,
) -> Html<String> {
    let l = ctx.lang;
    let list = serde_json::to_value(state.models.list()).unwrap_or_default();
    let models = list["models"].as_array().cloned().unwrap_or_default();
    let pick = |k: &str| q.get(k).and_then(|v| v.parse::<usize>().ok()).filter(|&i| i < models.len());
    let (a, b) = (pick("a"), pick("b"));
    let compared: Option<Vec<(String, String, String)>> = a.zip(b).map(|(a, b)| {
        let (mut fa, mut fb) = (Vec::new(), Vec::new());
        flatten(&models[a]["metrics"], "", &mut fa, 200);
        flatten(&models[b]["metrics"], "", &mut fb, 200);
        let mut keys: Vec<String> = fa.iter().chain(&fb).map(|(k, _)| k.clone()).collect();
        keys.dedup();
        let get = |f: &[(String, String)], k: &str| {
            f.iter().find(|(x, _)| x == k).map_or("-".to_string(), |(_, v)| v.clone())
        };
        let mut seen = std::collections::HashSet::new();
        keys.into_iter().filter(|k| seen.insert(k.clone())).map(|k| (get(&fa, &k), get(&fb, &k), k)).collect()
    });
    layout(
        ctx,
        "models",
        flash,
        html! {
            table #models {
                thead { tr { th { "#" } th { (t("version", l)) } th { (t("path", l)) } th { (t("trained_on", l)) } th { (t("active", l)) } th {} } }
                tbody { @for (i, m) in models.iter().enumerate() { tr data-version=(m["version"].as_str().unwrap_or("")) {
                    td { (i) } td { code { (m["version"].as_str().unwrap_or("")) } } td { code { (m["path"].as_str().unwrap_or("")) } }
                    td { (m["data"]["events"].as_u64().unwrap_or(0)) " " (t("events", l)) }
                    td { @if m["active"].as_bool() == Some(true) { strong.active { "✓ " (t("active", l)) } } }
                    td { @if m["active"].as_bool() != Some(true) {
                        form.inline method="post" action="/console/models/activate" {
                            (csrf_field(ctx)) input type="hidden" name="path" value=(m["path"].as_str().unwrap_or(""));
                            button type="submit" { (t("activate", l)) }
                        }
                    } }
                } } }
            }
            form method="post" action="/console/models/rollback" { (csrf_field(ctx)) button type="submit" #rollback { (t("rollback", l)) } }
            h2 { (t("load_model", l)) }
            form method="post" action="/console/models/activate" {
                (csrf_field(ctx)) input type="text" name="path" size="60" required; " " button type="submit" { (t("activate", l)) }
            }
            h2 { (t("compare_models", l)) }
            form method="get" action="/console/models" {
                select name="a" { @for i in 0..models.len() { option value=(i) selected[a == Some(i)] { "#" (i) " " (models[i]["version"].as_str().unwrap_or("")) } } }
                " · "
                select name="b" { @for i in 0..models.len() { option value=(i) selected[b == Some(i) || (b.is_none() && i + 1 == models.len())] { "#" (i) " " (models[i]["version"].as_str().unwrap_or("")) } } }
                " " button type="submit" { (t("compare", l)) }
            }
            @if let (Some(rows), Some(a), Some(b)) = (&compared, a, b) {
                table #compare {
                    thead { tr { th {} th { "#" (a) } th { "#" (b) } } }
                    tbody { @for (va, vb, k) in rows { tr { th { code { (k) } } td.num { (va) } td.num { (vb) } } } }
                }
            }
        },
    )
}

pub(super) async fn models(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Params,
) -> Html<String> {
    models_page(&state, &ctx, &q, None)
}

pub(super) async fn activate(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Form(f): Fields,
) -> Response {
    if !csrf_ok(&ctx, &f) {
        return forbidden(&ctx);
    }
    let path = f.get("path").cloned().unwrap_or_default();
    let flash = match crate::http::admin::activate_file(state.clone(), &path).await {
        Ok(v) => (true, format!("{} {v}", t("done", ctx.lang))),
        Err(e) => (false, e.detail),
    };
    models_page(&state, &ctx, &HashMap::new(), Some(flash)).into_response()
}

pub(super) async fn rollback(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Form(f): Fields,
) -> Response {
    if !csrf_ok(&ctx, &f) {
        return forbidden(&ctx);
    }
    let flash = match state.models.rollback() {
        Some(v) => (true, format!("{} {v}", t("done", ctx.lang))),
        None => (false, t("no_previous", ctx.lang).to_string()),
    };
    models_page(&state, &ctx, &HashMap::new(), Some(flash)).into_response()
}

async fn pushes_page(state: &AppState, ctx: &Ctx, flash: Option<(bool, String)>) -> Html<String> {
    let l = ctx.lang;
    let counts = state.queue.counts().await.unwrap_or_default();
    let depth = state.queue.depth().await.ok();
    let dead = state.queue.dead_letters(50).await.unwrap_or_default();
    let skipped = state.metrics.skipped();
    let delivered: u64 =
        counts.iter().filter(|(s, _, _)| *s == crate::queue::Status::Delivered).map(|(_, _, n)| n).sum();
    let feedback = state.console.reports(Timestamp(state.now())).map(|(r, _)| r.ratings.push.clone());
    let opened = feedback.as_ref().map_or(0, |f| f.opened);
    let hourly = state.console.hourly();
    let chart: Vec<(String, f64, String)> = counts
        .iter()
        .map(|(s, tr, n)| (format!("{} · {}", s.as_str(), tr.as_str()), *n as f64, n.to_string()))
        .collect();
    layout(
        ctx,
        "pushes",
        flash,
        html! {
            h2 { (t("depth", l)) }
            @if let Some(d) = depth {
                table #depth { tbody {
                    tr { th { (t("ready", l)) } td.num { (d.ready) } } tr { th { (t("pending", l)) } td.num { (d.pending) } }
                    tr { th { (t("delayed", l)) } td.num { (d.delayed) } } tr { th { (t("dead", l)) } td.num #dead-count { (d.dead) } }
                } }
            } @else { p.error { (t("down", l)) } }
            h2 { (t("over_time", l)) }
            p.note { (t("over_time_note", l)) }
            @if hourly.is_empty() { p { (t("none", l)) } } @else {
                table #push-hourly {
                    thead { tr { th { (t("when", l)) } @for s in crate::queue::Status::ALL { th.num { (s.as_str()) } } } }
                    tbody { @for (hour, n) in &hourly { tr {
                        td { (Timestamp((hour / 1000) as i64).to_string()) } @for v in n { td.num { (v) } }
                    } } }
                }
            }
            h2 { (t("by_status", l)) }
            (view::bars(t("by_status", l), &chart))
            table #push-counts {
                thead { tr { th { (t("status", l)) } th { (t("trigger", l)) } th.num { (t("count", l)) } } }
                tbody { @for (s, tr, n) in &counts { tr data-status=(s.as_str()) data-trigger=(tr.as_str()) { td { (s.as_str()) } td { (tr.as_str()) } td.num { (n) } } } }
            }
            h2 { (t("skip_reasons", l)) }
            table #skip-reasons {
                thead { tr { th { (t("reason", l)) } th.num { (t("count", l)) } } }
                tbody { @for (r, n) in &skipped { tr { td { (r) } td.num { (n) } } } }
            }
            h2 { (t("push_feedback", l)) }
            table #push-feedback { tbody {
                tr { th { (t("delivered", l)) } td.num { (delivered) } }
                tr { th { (t("open_rate", l)) } td.num { @if delivered > 0 { (format!("{:.1}%", opened as f64 / delivered as f64 * 100.0)) } @else { "-" } } }
                @if let Some(f) = &feedback {
                    tr { th { (t("opened", l)) } td.num { (f.opened) } }
                    tr { th { (t("dismissed", l)) } td.num { (f.dismissed) } }
                    tr { th { (t("rated", l)) } td.num { (f.rated) } }
                    tr { th { (t("mean_rating", l)) } td.num { (format!("{:.2}", f.mean_rating)) } }
                }
            } }
            h2 { (t("dead", l)) }
            @if dead.is_empty() { p { (t("none", l)) } } @else {
                table #dead-letters {
                    thead { tr { th { "id" } th { (t("trigger", l)) } th.num { (t("attempts", l)) } th { (t("reason", l)) } th {} } }
                    tbody { @for (job, reason) in &dead { tr {
                        @if let Some(job) = job {
                            td { code.push-id { (job.message.id) } } td { (job.message.trigger.as_str()) } td.num { (job.attempts) } td { (reason) }
                            td { form.inline method="post" action="/console/pushes/redeliver" {
                                (csrf_field(ctx)) input type="hidden" name="id" value=(job.message.id);
                                button type="submit" class="redeliver" { (t("redeliver", l)) }
                            } }
                        } @else { td { "-" } td {} td {} td { (reason) } td {} }
                    } } }
                }
            }
        },
    )
}

pub(super) async fn pushes(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> Html<String> {
    pushes_page(&state, &ctx, None).await
}

pub(super) async fn redeliver(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Form(f): Fields,
) -> Response {
    if !csrf_ok(&ctx, &f) {
        return forbidden(&ctx);
    }
    let id = f.get("id").cloned().unwrap_or_default();
    let flash = match state.queue.redeliver(&id, wall_ms()).await {
        Ok(true) => (true, format!("{} {id}", t("done", ctx.lang))),
        Ok(false) => (false, format!("{id}: {}", t("none", ctx.lang))),
        Err(e) => (false, e.to_string()),
    };
    tracing::info!(target: "tongban_server::audit", who = %ctx.who, action = "redeliver", push = %id, ok = flash.0);
    pushes_page(&state, &ctx, Some(flash)).await.into_response()
}

fn analytics_page(state: &AppState, ctx: &Ctx, which: Which, extra: Markup) -> Html<String> {
    let l = ctx.lang;
    let body = match state.console.reports(Timestamp(state.now())) {
        None => html! { p { (t("none", l)) } },
        Some((r, at)) => html! {
            p.note #computed { (t("computed", l)) " " (r.last_at.as_deref().unwrap_or("-")) " · " (r.events) " " (t("events", l))
                " · " (format!("{} s", at.elapsed().as_secs())) }
            (extra)
            (view::section_html(&r, which, l, PAGE_ROWS))
        },
    };
    layout(ctx, which.key(), None, body)
}

pub(super) async fn ratings(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Params,
) -> Html<String> {
    let l = ctx.lang;
    // Click-through from a service row: that service's figures and trend.
    let detail = q.get("service").and_then(|id| {
        let (r, _) = state.console.reports(Timestamp(state.now()))?;
        let s = r.ratings.services.iter().find(|s| &s.service == id)?.clone();
        Some(html! {
            section #service-detail {
                h2 { (if l == Locale::En { &s.en } else { &s.zh }) " " small { code { (s.service) } } }
                p { (t("n_ratings", l)) " " strong { (s.n) } " · " (t("mean_rating", l)) " " strong { (format!("{:.2}", s.mean)) } " · "
                    (t("bad_share", l)) " " strong { (format!("{:.1}%", s.bad_share * 100.0)) } }
                (view::bars(t("trend", l), &s.trend.iter().map(|m| (m.month.clone(), m.mean, format!("{:.2} ({})", m.mean, m.n))).collect::<Vec<_>>()))
            }
        })
    });
    analytics_page(&state, &ctx, Which::Ratings, detail.unwrap_or_default())
}

pub(super) async fn journeys(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> Html<String> {
    analytics_page(&state, &ctx, Which::Journeys, html! {})
}

pub(super) async fn approvals(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> Html<String> {
    analytics_page(&state, &ctx, Which::Approvals, html! {})
}

async fn subjects_page(state: &AppState, ctx: &Ctx, found: Markup, flash: Option<(bool, String)>) -> Html<String> {
    let l = ctx.lang;
    let log = state.store.audit_log(50).await;
    layout(
        ctx,
        "subjects",
        flash,
        html! {
            // POST, so that subject ids stay out of URLs, browser history and proxies' logs.
            form method="post" action="/console/subjects" {
                (csrf_field(ctx)) label { (t("subject", l)) " " input type="text" name="id" required pattern="[A-Za-z0-9._:-]{1,64}"; }
                " " button type="submit" #look-up { (t("look_up", l)) }
            }
            (found)
            h2 { (t("audit", l)) }
            p.note { (t("audit_note", l)) }
            @match log {
                Ok(entries) => table #audit-log {
                    thead { tr { th { (t("when", l)) } th { (t("who", l)) } th { (t("action", l)) } th { (t("subject", l)) } } }
                    tbody { @for e in &entries { tr {
                        td { (Timestamp((e.at_ms / 1000) as i64).to_string()) } td { (e.who) } td { (e.action) } td.subject { code { (e.subject) } }
                    } } }
                },
                Err(e) => p.error { (e.to_string()) },
            }
        },
    )
}

pub(super) async fn subjects(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> Html<String> {
    subjects_page(&state, &ctx, html! {}, None).await
}

/// The API's answer to a GET, in process (the console shows what the portal would get).
async fn api_get(state: &Arc<AppState>, uri: &str) -> Option<Value> {
    let mut req = axum::http::Request::get(uri).body(Body::empty()).ok()?;
    if let Some(k) = state.settings.keys.operator.first() {
        req.headers_mut().insert("x-api-key", k.parse().ok()?);
    }
    let res = crate::http::router(state.clone()).oneshot(req).await.ok()?;
    let bytes = axum::body::to_bytes(res.into_body(), 4 << 20).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(super) async fn look_up(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Form(f): Fields,
) -> Response {
    if !csrf_ok(&ctx, &f) {
        return forbidden(&ctx);
    }
    let l = ctx.lang;
    let raw = f.get("id").map(|s| s.trim().to_string()).unwrap_or_default();
    let Ok(subject) = SubjectId::parse(&raw) else {
        return subjects_page(&state, &ctx, html! {}, Some((false, format!("{}: {raw:?}", t("subject", l)))))
            .await
            .into_response();
    };
    // The audit entry first: no look-up without its record.
    let entry = AuditEntry {
        at_ms: wall_ms(),
        who: ctx.who.clone(),
        action: "look_up".into(),
        subject: subject.as_str().to_string(),
    };
    if let Err(e) = state.store.audit(&entry).await {
        return subjects_page(&state, &ctx, html! {}, Some((false, e.to_string()))).await.into_response();
    }
    let profile = state.store.profile(&subject).await.ok().flatten();
    let inbox = state.store.inbox(&subject).await.unwrap_or_default();
    let mut records = Vec::new();
    for m in inbox.iter().take(20) {
        records.push(state.queue.record(&m.id).await.ok().flatten().map(|r| r.status.as_str()));
    }
    let recs = api_get(&state, &format!("/v1/users/{}/recommendations?k=5&locale={}", subject.as_str(), l.tag())).await;
    let cat = state.models.catalogue();
    let service_name = |i: u32| {
        cat.as_ref().map_or(i.to_string(), |c| {
            let s = c.service(i);
            format!("{} ({})", if l == Locale::En { &s.en } else { &s.zh }, s.id)
        })
    };
    let found = html! {
        section #subject-detail data-subject=(subject.as_str()) {
            h2 { (t("profile", l)) " " code { (subject.as_str()) } }
            @match &profile {
                None => p #no-profile { (t("not_found", l)) },
                Some(p) => {
                    p { (t("events", l)) ": " strong #profile-events { (p.events()) } " · "
                        (p.first_at().map(|x| Timestamp(x).to_string()).unwrap_or_default()) " – " (p.last_at().map(|x| Timestamp(x).to_string()).unwrap_or_default()) }
                    h3 { (t("recent", l)) }
                    table #recent { tbody { @for r in p.recent().iter().rev().take(15) { tr {
                        td { (Timestamp(r.at).to_string()) } td { (r.kind.as_str()) } td { (service_name(r.service)) }
                    } } } }
                },
            }
            h3 { (t("suggestions", l)) }
            @match recs.as_ref().and_then(|v| v["suggestions"].as_array()) {
                None => p { (t("none", l)) },
                Some(list) => table #suggestions {
                    thead { tr { th { (t("service", l)) } th.num { (t("score", l)) } th { (t("reason", l)) } } }
                    tbody { @for s in list { tr data-service=(s["service"]["id"].as_str().unwrap_or("")) {
                        td { (s["service"]["name"].as_str().unwrap_or("")) br; small { code { (s["service"]["id"].as_str().unwrap_or("")) } } }
                        td.num { (format!("{:.4}", s["score"].as_f64().unwrap_or(0.0))) }
                        td { (s["reason_text"].as_str().unwrap_or("")) }
                    } } }
                },
            }
            h3 { (t("inbox", l)) }
            @if inbox.is_empty() { p { (t("none", l)) } } @else {
                table #inbox {
                    thead { tr { th { "id" } th { (t("trigger", l)) } th { (t("title", l)) } th { (t("read", l)) } th { (t("status", l)) } } }
                    tbody { @for (i, m) in inbox.iter().take(20).enumerate() { tr {
                        td { code { (m.id) } } td { (m.trigger.as_str()) } td { (m.title) } td { @if m.read { "✓" } }
                        td { (records.get(i).copied().flatten().unwrap_or("-")) }
                    } } }
                }
            }
        }
    };
    subjects_page(&state, &ctx, found, None).await.into_response()
}
