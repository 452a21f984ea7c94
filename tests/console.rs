//! The operator console end to end: `tongban serve` as a process on a generated history, an
//! operator key set, a webhook receiver that refuses the first push (a dead letter to
//! redeliver), then `tests/console/console.mjs` in headless Chromium (Debian's package,
//! driven by playwright-core from the npm registry). Screenshots go to a temporary folder, or
//! to `docs/console/` with `TONGBAN_SCREENSHOTS=docs/console`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

mod common;

const KEY: &str = "console-test-operator-key-0123456789";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the browser test needs, or a message naming the install step.
fn browser_prerequisites() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let pw = root().join("tests/console/node_modules/playwright-core");
    assert!(
        chromium.exists() && node_ok && pw.exists(),
        "the console browser test needs Debian's chromium ({}: {}), Node.js ({}) and playwright-core ({}: {}); \
         install them with `apt-get install -y chromium nodejs npm && npm ci --prefix tests/console` (as .ci/run does)",
        chromium.display(),
        if chromium.exists() { "found" } else { "missing" },
        if node_ok { "found" } else { "missing" },
        pw.display(),
        if pw.exists() { "found" } else { "missing" },
    );
    chromium
}

/// A webhook receiver that answers 404 (a permanent failure: dead letter) to the first push and
/// 200 to every later one.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let c = c.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    axum::http::StatusCode::NOT_FOUND
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let chromium = browser_prerequisites();
    let m = tokio::task::spawn_blocking(|| common::small_model(1500, 300)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.csv");
    std::fs::write(&events, &m.events_csv).unwrap();
    let model2 = dir.path().join("model-copy.tbm");
    std::fs::copy(m.model_file.path(), &model2).unwrap();
    let approvals_json = dir.path().join("approvals.json");

    // The CLI twin on the same log: the page must show the same figures.
    let report = common::tongban(&[
        "report",
        "approvals",
        "--events",
        events.to_str().unwrap(),
        "--report",
        dir.path().join("report").to_str().unwrap(),
        "--json",
    ]);
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    std::fs::write(&approvals_json, &report.stdout).unwrap();
    let approvals: Value = serde_json::from_slice(&report.stdout).unwrap();

    let (hook, calls) = receiver().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let now = tongban_features::time::Timestamp(m.now).to_string();
    let log = dir.path().join("serve.log");
    let spawn = |import: bool, log: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tongban"));
        cmd.args(["serve", "--scan-every-secs", "0", "--max-attempts", "1", "--now", &now])
            .args(["--addr", &format!("127.0.0.1:{port}"), "--webhook-url", &hook])
            .arg("--model")
            .arg(m.model_file.path())
            .arg("--data")
            .arg(dir.path().join("state"));
        if import {
            cmd.arg("--import").arg(&events);
        }
        cmd.env("TONGBAN_OPERATOR_KEYS", KEY)
            .env("TONGBAN_WEBHOOK_SECRET", "console-test-webhook-secret")
            .env("RUST_LOG", "info,tongban_server::access=info")
            .env_remove("TONGBAN_REDIS_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let client = reqwest::Client::new();
    let wait_up = |log: PathBuf| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            for _ in 0..600 {
                if client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("serve did not come up: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
    };
    let server = Killed(spawn(true, &log));
    wait_up(log.clone()).await;
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = client.request(method, format!("{base}{path}")).header("x-api-key", KEY);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let res = r.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // A dead letter: a company that allowed SMS completes its registration; the receiver
    // refuses the push with 404.
    let (s, _) = call(
        reqwest::Method::PUT,
        "/v1/users/co-console/preferences",
        Some(json!({ "quiet_hours": null, "channels": ["sms"] })),
    )
    .await;
    assert_eq!(s, 200);
    let (s, r) = call(
        reqwest::Method::POST,
        "/v1/events",
        Some(json!({ "event_id": "console-1", "subject": "co-console", "service": "e.entry.registration", "kind": "completed" })),
    )
    .await;
    assert_eq!((s, r["pushed"].as_u64()), (200, Some(1)), "{r}");
    let mut dead = false;
    for _ in 0..200 {
        if call(reqwest::Method::GET, "/admin/queue", None).await.1["depth"]["dead"] == 1 {
            dead = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dead, "no dead letter: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let subject = m.log.subjects.name(m.log.events[0].subject).to_string();
    let shots = std::env::var_os("TONGBAN_SCREENSHOTS").map_or_else(
        || dir.path().join("shots"),
        |p| if Path::new(&p).is_absolute() { PathBuf::from(p) } else { root().join(p) },
    );
    let out = Command::new("node")
        .arg(root().join("tests/console/console.mjs"))
        .current_dir(root().join("tests/console"))
        .env("BASE", &base)
        .env("KEY", KEY)
        .env("MODEL1", m.model_file.path())
        .env("MODEL2", &model2)
        .env("SUBJECT", &subject)
        .env("APPROVALS", &approvals_json)
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    // The redelivered push reached the receiver.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A clean stop and a restart without --import: the console's figures are read back from
    // the data directory, not lost.
    let total = |page: String| {
        let start =
            page.find("id=\"approvals-total\">").expect("the approvals total") + "id=\"approvals-total\">".len();
        page[start..start + page[start..].find('<').unwrap()].to_string()
    };
    // Log in as a browser would: the session cookie comes with the redirect.
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = || async {
        let r = no_redirect.post(format!("{base}/console/login")).form(&[("key", KEY)]).send().await.unwrap();
        assert_eq!(r.status(), 303);
        let c = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        c[..c.find(';').unwrap()].to_owned()
    };
    let page = |cookie: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r = client.get(format!("{base}/console/approvals")).header("cookie", cookie).send().await.unwrap();
            r.text().await.unwrap()
        }
    };
    let before = total(page(login().await).await);
    let mut server = server;
    assert!(Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap().success());
    assert!(server.0.wait().unwrap().success(), "a clean exit on SIGTERM");
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    let log2 = dir.path().join("serve2.log");
    let _second = Killed(spawn(false, &log2));
    wait_up(log2.clone()).await;
    let after = total(page(login().await).await);
    assert_eq!(
        after,
        before,
        "the analytics survive a restart: {}",
        std::fs::read_to_string(&log2).unwrap_or_default()
    );
    assert_eq!(before, approvals["applications"].to_string());

    // The access log is on and names route templates, never a subject id (the console's
    // look-up is a POST: the id is in no URL either).
    assert!(server_log.contains("/console/subjects"), "the access log is on: {server_log}");
    assert!(!server_log.contains(&subject), "subject {subject} in the server log");
}
