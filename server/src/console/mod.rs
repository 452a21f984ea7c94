//! The operator console (`/console`): server-rendered pages in zh-CN and en over the same state
//! as the API, and the analytics renderer that `tongban report` shares.
//!
//! Access: with operator keys configured, a log-in form exchanges a key for a session (a random
//! token in a cookie: HttpOnly, SameSite=Strict, Secure when the request came over HTTPS to a
//! proxy that says so in `x-forwarded-proto`); the key itself is never stored. Without keys the
//! console is open like the API and every page says so. Every action is a POST carrying the
//! session's CSRF token, checked before anything changes. Sessions live in process memory: a
//! restart logs operators out, and each replica has its own.
//!
//! Analytics: one [`Analytics`] accumulator per process, fed by the import at start-up and by
//! every event this process accepts; reports are recomputed at most every
//! [`REPORT_MAX_AGE`] and the pages show their age. With several replicas each counts its own
//! share of the traffic (say so to operators; a shared periodic job is the way to one figure).

pub mod analytics;
pub mod labels;
mod pages;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use tongban_features::analytics::{Analytics, Reports};
use tongban_features::catalogue::Catalogue;
use tongban_features::io::LogEvent;
use tongban_features::time::Timestamp;

use crate::app::AppState;
use crate::locale::Locale;
use crate::queue::{Count, Status};

/// How often the accumulator is saved to its snapshot (when it changed).
pub const SAVE_EVERY: Duration = Duration::from_secs(300);

/// How often the server samples the queue's counts, and how many samples it keeps (a day).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);
const SAMPLES_KEPT: usize = 24 * 60 + 1;

/// Reports older than this are recomputed on the next page view.
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(30);
/// A session ends this long after log-in.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const SESSION_COOKIE: &str = "tb_console";
/// Sessions kept at most (a tenth, the oldest, make room for new ones).
const MAX_SESSIONS: usize = 10_000;
const LANG_COOKIE: &str = "tb_lang";

struct Session {
    who: String,
    csrf: String,
    expires: Instant,
}

/// The console's state in [`AppState`].
pub struct Console {
    sessions: Mutex<HashMap<String, Session>>,
    /// Snapshots of the queue's transition counts, one per [`SAMPLE_EVERY`], for the pushes
    /// page's volumes over time (the counts are totals since the queue began).
    samples: Mutex<std::collections::VecDeque<(u64, Vec<Count>)>>,
    catalogue: Option<Arc<Catalogue>>,
    analytics: Mutex<Option<Analytics>>,
    cache: Mutex<Option<(Instant, Arc<Reports>)>>,
    /// Where the accumulator is kept across restarts (the durable store's directory), and the
    /// event count at the last save.
    snapshot: Mutex<Option<(std::path::PathBuf, u64)>>,
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the tokens.
        let sessions = self.sessions.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("Console").field("sessions", &sessions).finish_non_exhaustive()
    }
}

impl Console {
    pub fn new(catalogue: Option<Arc<Catalogue>>) -> Console {
        let analytics = catalogue.as_deref().map(Analytics::new);
        Console {
            sessions: Mutex::default(),
            samples: Mutex::default(),
            catalogue,
            analytics: Mutex::new(analytics),
            cache: Mutex::default(),
            snapshot: Mutex::default(),
        }
    }

    /// Replaces the accumulator (the import at start-up builds one from the whole log).
    pub fn set_analytics(&self, a: Analytics) {
        *self.analytics.lock().expect("no panics while holding the lock") = Some(a);
        *self.cache.lock().expect("no panics while holding the lock") = None;
    }

    /// Keeps the accumulator in `path` across restarts: reads it now (unless an import already
    /// set the accumulator: `from_import`), writes it on [`Console::save`]. A snapshot that
    /// cannot be read (another catalogue, another version) is set aside with a warning.
    pub fn keep_in(&self, path: std::path::PathBuf, from_import: bool) {
        if let (false, Some(cat), Ok(bytes)) = (from_import, &self.catalogue, std::fs::read(&path)) {
            match Analytics::from_snapshot(&bytes, cat) {
                Ok(a) => {
                    tracing::info!(events = a.events(), path = %path.display(), "console analytics read back");
                    self.set_analytics(a);
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "console analytics start empty"),
            }
        }
        *self.snapshot.lock().expect("no panics while holding the lock") = Some((path, u64::MAX));
    }

    /// Writes the accumulator to its snapshot file if it changed (a new file, fsync'd, then a
    /// rename: a crash leaves the old snapshot or the new). Events accepted after the last save
    /// and before a crash are in the store but missing from the console's figures.
    pub fn save(&self) -> std::io::Result<()> {
        let mut keep = self.snapshot.lock().expect("no panics while holding the lock");
        let Some((path, saved_at)) = keep.as_mut() else { return Ok(()) };
        let bytes = {
            let a = self.analytics.lock().expect("no panics while holding the lock");
            match a.as_ref() {
                Some(a) if a.events() != *saved_at => {
                    *saved_at = a.events();
                    a.to_snapshot()
                }
                _ => return Ok(()),
            }
        };
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &*path)
    }

    /// Counts the events a store accepted: per subject, its batch and the accepted positions
    /// (one lock per request, not per subject).
    pub fn feed(&self, accepted: &[(&str, &[LogEvent], &[u32])]) {
        let Some(cat) = &self.catalogue else { return };
        if accepted.iter().all(|(_, _, at)| at.is_empty()) {
            return;
        }
        let mut guard = self.analytics.lock().expect("no panics while holding the lock");
        if let Some(a) = guard.as_mut() {
            for (subject, events, at) in accepted {
                for &i in *at {
                    a.apply_named(subject, &events[i as usize], cat);
                }
            }
        }
    }

    /// After an erasure: the subject's own state goes, its share of the counts stays.
    pub fn forget(&self, subject: &str) {
        if let Some(a) = self.analytics.lock().expect("no panics while holding the lock").as_mut() {
            a.forget(subject);
        }
    }

    /// The reports and when they were computed; recomputed when older than [`REPORT_MAX_AGE`].
    pub fn reports(&self, now: Timestamp) -> Option<(Arc<Reports>, Instant)> {
        let cat = self.catalogue.as_ref()?;
        let mut cache = self.cache.lock().expect("no panics while holding the lock");
        if let Some((at, r)) = cache.as_ref() {
            if at.elapsed() < REPORT_MAX_AGE {
                return Some((r.clone(), *at));
            }
        }
        let reports =
            self.analytics.lock().expect("no panics while holding the lock").as_ref()?.reports(cat, Some(now));
        let fresh = (Instant::now(), Arc::new(reports));
        *cache = Some(fresh.clone());
        Some((fresh.1, fresh.0))
    }

    /// Records the queue's counts at `at_ms` (kept for [`SAMPLES_KEPT`] samples).
    pub fn sample(&self, at_ms: u64, counts: Vec<Count>) {
        let mut s = self.samples.lock().expect("no panics while holding the lock");
        s.push_back((at_ms, counts));
        while s.len() > SAMPLES_KEPT {
            s.pop_front();
        }
    }

    /// Pushes per status in each hour of the samples: (hour start in Unix ms, per status of
    /// [`Status::ALL`], the transitions in that hour), oldest first.
    pub fn hourly(&self) -> Vec<(u64, [u64; 6])> {
        let s = self.samples.lock().expect("no panics while holding the lock");
        let total = |c: &[Count]| {
            let mut t = [0u64; 6];
            for (status, _, n) in c {
                t[Status::ALL.iter().position(|x| x == status).expect("ALL lists every status")] += n;
            }
            t
        };
        let mut out: Vec<(u64, [u64; 6])> = Vec::new();
        for w in s.iter().collect::<Vec<_>>().windows(2) {
            let (a, b) = (total(&w[0].1), total(&w[1].1));
            let hour = w[1].0 / 3_600_000 * 3_600_000;
            if out.last().is_none_or(|(h, _)| *h != hour) {
                out.push((hour, [0; 6]));
            }
            let slot = &mut out.last_mut().expect("just pushed").1;
            for i in 0..6 {
                slot[i] += b[i].saturating_sub(a[i]);
            }
        }
        out
    }

    fn session(&self, token: &str) -> Option<(String, String)> {
        let mut s = self.sessions.lock().expect("no panics while holding the lock");
        let now = Instant::now();
        s.retain(|_, v| v.expires > now);
        s.get(token).map(|v| (v.who.clone(), v.csrf.clone()))
    }

    fn open_session(&self, who: String) -> String {
        let token = random_token();
        let mut s = self.sessions.lock().expect("no panics while holding the lock");
        if s.len() >= MAX_SESSIONS {
            // Bounded against a flood of log-ins (open mode makes one per new browser): the
            // expired go first, then the oldest.
            let now = Instant::now();
            s.retain(|_, v| v.expires > now);
            if s.len() >= MAX_SESSIONS {
                let mut by_age: Vec<(Instant, String)> = s.iter().map(|(k, v)| (v.expires, k.clone())).collect();
                by_age.sort();
                for (_, k) in by_age.into_iter().take(MAX_SESSIONS / 10) {
                    s.remove(&k);
                }
            }
        }
        s.insert(token.clone(), Session { who, csrf: random_token(), expires: Instant::now() + SESSION_TTL });
        token
    }

    fn close_session(&self, token: &str) {
        self.sessions.lock().expect("no panics while holding the lock").remove(token);
    }
}

fn random_token() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("the operating system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a page handler knows about the request.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub who: String,
    pub csrf: String,
    pub lang: Locale,
    /// No operator key configured: the console is open.
    pub open: bool,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // Hand-parsed: the console reads two cookies by name; the `cookie` crate's jar, signing and
    // encoding would add nothing here.
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let secure = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let mut c = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
    if let Some(s) = max_age {
        c.push_str(&format!("; Max-Age={s}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie values are hex or a locale tag")
}

fn lang_of(req: &Request) -> (Locale, bool) {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "lang")
            .and_then(|(_, v)| Locale::parse(Some(v)))
    });
    match from_query {
        Some(l) => (l, true),
        None => (cookie(req.headers(), LANG_COOKIE).and_then(|v| Locale::parse(Some(v))).unwrap_or_default(), false),
    }
}

/// Resolves the session (or makes one in open mode), the language, and the answer's cookies.
async fn gate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let (lang, lang_from_query) = lang_of(&req);
    let open = state.settings.keys.operator.is_empty();
    let path = req.uri().path().to_owned();
    let token = cookie(req.headers(), SESSION_COOKIE).map(str::to_owned);
    let found = token.as_deref().and_then(|t| state.console.session(t));
    let mut new_cookie = None;
    let (who, csrf) = match found {
        Some(s) => s,
        None if open => {
            let t = state.console.open_session("open console".into());
            let s = state.console.session(&t).expect("just made");
            new_cookie = Some(set_cookie(req.headers(), SESSION_COOKIE, &t, None));
            s
        }
        None if path == "/console/login" => (String::new(), String::new()),
        None => return Redirect::to("/console/login").into_response(),
    };
    let headers = req.headers().clone();
    req.extensions_mut().insert(Ctx { who, csrf, lang, open });
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    if let Some(c) = new_cookie {
        h.append(header::SET_COOKIE, c);
    }
    if lang_from_query {
        h.append(header::SET_COOKIE, set_cookie(&headers, LANG_COOKIE, lang.tag(), Some(365 * 86400)));
    }
    // Pages hold personal data: never cached, never framed; scripts and styles only our own.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"),
    );
    res
}

/// Checks a form's CSRF token against the session's.
pub(crate) fn csrf_ok(ctx: &Ctx, form: &HashMap<String, String>) -> bool {
    !ctx.csrf.is_empty() && form.get("csrf").is_some_and(|t| t.as_bytes() == ctx.csrf.as_bytes())
}

pub(crate) fn forbidden(ctx: &Ctx) -> Response {
    (StatusCode::FORBIDDEN, pages::message_page(ctx, labels::t("csrf", ctx.lang))).into_response()
}

/// The console's routes (merged into the application router).
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(pages::overview))
        .route("/console/login", get(pages::login_form).post(pages::login))
        .route("/console/logout", post(pages::logout))
        .route("/console/models", get(pages::models))
        .route("/console/models/activate", post(pages::activate))
        .route("/console/models/rollback", post(pages::rollback))
        .route("/console/pushes", get(pages::pushes))
        .route("/console/pushes/redeliver", post(pages::redeliver))
        .route("/console/ratings", get(pages::ratings))
        .route("/console/journeys", get(pages::journeys))
        .route("/console/approvals", get(pages::approvals))
        .route("/console/subjects", get(pages::subjects).post(pages::look_up))
        .route_layer(middleware::from_fn_with_state(state, gate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Trigger;

    #[test]
    fn sessions_are_bounded_oldest_out_first() {
        let c = Console::new(None);
        let first = c.open_session("a".into());
        for _ in 0..MAX_SESSIONS + 5 {
            c.open_session("b".into());
        }
        let n = c.sessions.lock().unwrap().len();
        assert!(n <= MAX_SESSIONS, "{n}");
        assert!(c.session(&first).is_none(), "the oldest went first");
    }

    #[test]
    fn hourly_volumes_are_the_differences_of_the_samples_per_hour() {
        let c = Console::new(None);
        let h = 3_600_000u64;
        c.sample(10 * h, vec![(Status::Delivered, Trigger::NextStep, 5)]);
        c.sample(
            10 * h + 60_000,
            vec![(Status::Delivered, Trigger::NextStep, 7), (Status::Dead, Trigger::Deadline, 1)],
        );
        c.sample(
            11 * h + 60_000,
            vec![(Status::Delivered, Trigger::NextStep, 10), (Status::Dead, Trigger::Deadline, 1)],
        );
        let rows = c.hourly();
        let delivered = Status::ALL.iter().position(|s| *s == Status::Delivered).unwrap();
        let dead = Status::ALL.iter().position(|s| *s == Status::Dead).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0, rows[0].1[delivered], rows[0].1[dead]), (10 * h, 2, 1));
        assert_eq!((rows[1].0, rows[1].1[delivered], rows[1].1[dead]), (11 * h, 3, 0));
    }
}
