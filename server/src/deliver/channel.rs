//! The channels after the portal inbox: the log (development) and the webhook gateway (SMS,
//! app pushes).
//!
//! The webhook receives `POST` JSON with `X-Tongban-Push-Id`, `X-Tongban-Timestamp` (Unix
//! seconds) and `X-Tongban-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` under
//! the shared secret. 2xx accepts; 429, 5xx, timeouts and connection errors are retried with
//! exponential backoff and jitter; any other answer dead-letters the push.

use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::clock::wall_ms;
use crate::push::{Job, Outbound};

/// Why a channel did not accept a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// Worth retrying (timeouts, 429, 5xx, the store unavailable).
    Transient(String),
    /// Not worth retrying (other 4xx).
    Permanent(String),
}

/// The development channel: one JSON line per delivery, to a file or standard output.
pub struct LogChannel {
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

impl std::fmt::Debug for LogChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogChannel")
    }
}

impl LogChannel {
    /// `-` is standard output; anything else a file, appended to.
    pub fn open(path: &Path) -> std::io::Result<LogChannel> {
        let out: Box<dyn std::io::Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
        };
        Ok(LogChannel { out: Mutex::new(out) })
    }

    pub(crate) fn send(&self, job: &Job, reclaimed: bool) -> Result<(), ChannelError> {
        let m = &job.message;
        let mut line = json!({
            "id": m.id, "subject": job.subject, "trigger": m.trigger, "title": m.title, "sms": m.sms,
            "attempt": job.attempts + 1, "reclaimed": reclaimed, "at_ms": wall_ms(),
        })
        .to_string();
        line.push('\n');
        // One write per line (the file is unbuffered and in append mode).
        let mut out = self.out.lock().expect("no panics while holding the lock");
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| ChannelError::Transient(format!("log: {e}")))
    }
}

/// The webhook gateway (SMS, app push).
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
    secret: Vec<u8>,
    client: reqwest::Client,
}

/// `X-Tongban-Signature` for a body at a timestamp.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Webhook {
    /// Only `http://` URLs: TLS is not built in (put a gateway sidecar or proxy in front).
    pub fn new(url: &str, secret: &[u8], timeout: Duration) -> Result<Webhook, String> {
        if !url.starts_with("http://") {
            return Err(format!("webhook URL {url:?}: expected http://host:port/path (TLS is not built in)"));
        }
        if secret.len() < 16 {
            return Err("webhook secret (TONGBAN_WEBHOOK_SECRET): expected at least 16 bytes".into());
        }
        let client = reqwest::Client::builder().timeout(timeout).build().map_err(|e| format!("webhook client: {e}"))?;
        Ok(Webhook { url: url.to_owned(), secret: secret.to_vec(), client })
    }

    pub(crate) async fn send(&self, job: &Job, channels: &[Outbound]) -> Result<(), ChannelError> {
        let m = &job.message;
        let body = json!({
            "id": m.id, "subject": job.subject, "channels": channels, "trigger": m.trigger,
            "title": m.title, "body": m.body, "sms": m.sms, "services": m.services,
            "expires_at": m.expires_at, "attempt": job.attempts + 1,
        })
        .to_string();
        let ts = (wall_ms() / 1000) as i64;
        let sig = sign(&self.secret, ts, body.as_bytes());
        let r = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-tongban-push-id", &m.id)
            .header("x-tongban-timestamp", ts.to_string())
            .header("x-tongban-signature", sig)
            .body(body)
            .send()
            .await
            .map_err(|e| ChannelError::Transient(format!("webhook: {e}")))?;
        let code = r.status().as_u16();
        match code {
            200..=299 => Ok(()),
            429 | 500..=599 => Err(ChannelError::Transient(format!("webhook answered {code}"))),
            _ => Err(ChannelError::Permanent(format!("webhook answered {code}"))),
        }
    }
}

/// Outbound channels of a worker.
#[derive(Debug, Default)]
pub struct Channels {
    pub log: Option<LogChannel>,
    pub webhook: Option<Webhook>,
}
