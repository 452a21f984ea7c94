//! `tongban demo` as a newcomer meets it: run from another directory (the catalogue and templates
//! are built in), it generates, trains, evaluates and serves, then prints a walk-through. Every
//! request it prints is sent here as printed, and what the text promises is checked: a
//! company's registration pushes guidance into its inbox, the push has an audit record, the
//! metrics count it, and the console answers.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The printed commands: `curl` lines, with `\` continuations joined.
fn commands(banner: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in banner.lines().map(str::trim) {
        if line.starts_with("curl ") || !current.is_empty() {
            current.push_str(line.trim_end_matches('\\').trim());
            current.push(' ');
            if !line.ends_with('\\') {
                out.push(current.trim().to_string());
                current.clear();
            }
        }
    }
    out
}

/// The first URL of a command, unquoted.
fn url(cmd: &str) -> String {
    let start = cmd.find("http://").expect("a URL");
    cmd[start..].split(['\'', ' ']).next().unwrap().to_string()
}

/// The JSON body after `-d '...'`.
fn body(cmd: &str) -> Option<Value> {
    let start = cmd.find("-d '")? + 4;
    let end = start + cmd[start..].find('\'')?;
    Some(serde_json::from_str(&cmd[start..end]).expect("the printed body is JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_walk_through_does_what_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tongban"))
        .args(["demo", "--persons", "1500", "--enterprises", "300", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--dir")
        .arg(dir.path().join("demo"))
        // Not the repository: the binary must carry its catalogue and templates.
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("demo.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the banner, then keeps reading (the pipe stays open for whatever comes later).
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            text.push_str(&line);
            text.push('\n');
            if line.contains("Ctrl-C stops it") {
                break;
            }
        }
        let _ = tx.send(text);
        for _ in lines {}
    });
    let banner = tokio::task::spawn_blocking(move || rx.recv().unwrap_or_default());
    let banner = tokio::time::timeout(Duration::from_secs(900), banner)
        .await
        .unwrap_or_else(|_| {
            panic!("no banner: {}", std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default())
        })
        .unwrap();
    assert!(
        banner.contains("tongban demo is up"),
        "{banner}\n{}",
        std::fs::read_to_string(dir.path().join("demo.log")).unwrap()
    );
    let base = format!("http://127.0.0.1:{port}");
    assert!(banner.contains(&format!("{base}/console/")), "the banner names the console: {banner}");

    let client = reqwest::Client::new();
    let cmds = commands(&banner);
    assert!(cmds.len() >= 10, "{cmds:?}");
    let mut checked = 0;
    for cmd in &cmds {
        let u = url(cmd);
        if cmd.contains("-X POST") {
            let b = body(cmd).expect("a POST with a body");
            let r = client.post(&u).json(&b).send().await.unwrap();
            assert_eq!(r.status(), 200, "{cmd}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["accepted"], 1, "{cmd}: {v}");
            if b["subject"] == "e-demo" {
                // "the push worker puts guidance for the next steps ... in its inbox"
                assert_eq!(v["pushed"], 1, "the registration queues the guidance: {v}");
            }
        } else if cmd.contains("/admin/pushes/'$(") {
            // The nested command: the id of the inbox's first message, then its audit record.
            let mut inbox = Value::Null;
            for _ in 0..100 {
                inbox = client.get(format!("{base}/v1/users/e-demo/inbox")).send().await.unwrap().json().await.unwrap();
                if inbox["messages"].as_array().is_some_and(|m| !m.is_empty()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let first = &inbox["messages"][0];
            assert!(!first["title"].as_str().unwrap_or("").is_empty(), "a message with a title: {inbox}");
            assert!(!first["body"].as_str().unwrap_or("").is_empty(), "and a body: {inbox}");
            let id = first["id"].as_str().unwrap();
            let mut rec = Value::Null;
            for _ in 0..100 {
                rec = client.get(format!("{u}{id}")).send().await.unwrap().json().await.unwrap();
                if rec["status"] == "delivered" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(rec["status"], "delivered", "{rec}");
        } else {
            let r = client.get(&u).send().await.unwrap();
            assert_eq!(r.status(), 200, "{cmd}");
            let text = r.text().await.unwrap();
            if cmd.contains("grep tongban_push") {
                assert!(text.contains("tongban_pushes_total{status=\"delivered\",trigger=\"next_step\"}"), "{text}");
            } else if cmd.contains("/recommendations") || cmd.contains("/popular") {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert!(!v["suggestions"].as_array().unwrap().is_empty(), "{cmd}: {v}");
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_ne!(v, json!(null), "{cmd}");
            }
        }
        checked += 1;
    }
    // The console the banner names.
    let page = client.get(format!("{base}/console/approvals?lang=en")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"open-mode\"") && page.contains("id=\"approvals-total\""), "{page}");
    // The overview shows the evaluation the demo recorded in its model file.
    let overview = client.get(format!("{base}/console/")).send().await.unwrap().text().await.unwrap();
    assert!(overview.contains("id=\"model-metrics\"") && overview.contains("temporal"), "{overview}");
    println!("demo walk-through: {checked} printed requests checked");
}
