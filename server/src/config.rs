//! The settings of a running server: API keys by scope, limits, the portal's address, push
//! caps. Checked here, whoever builds them (the CLI, tests).

use crate::push::Caps;

/// Limits and secrets of a running server.
#[derive(Clone)]
pub struct Settings {
    pub keys: ApiKeys,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    pub max_k: usize,
    pub portal_url: String,
    /// Server time source: `None` reads the clock; tests and the demo pin it.
    pub fixed_now: Option<i64>,
    /// Requests per second allowed per API key (burst: one second's worth); 0 = no limit.
    pub rate_per_key: u32,
    /// Push caps and lifetimes.
    pub caps: Caps,
    /// The key of push ids (`TONGBAN_PUSH_ID_KEY`).
    pub push_ids: crate::push::IdKey,
    /// Browser origins allowed by CORS (`--cors-origin`); empty: CORS off.
    pub cors_origins: Vec<Origin>,
    /// How far ahead of the server's clock an event's time may be (`--max-future-secs`).
    pub max_future_secs: i64,
    /// The only directory models are activated from (`--models-dir`); `None`: any path (tests).
    pub models_dir: Option<std::path::PathBuf>,
    /// Connections served at once (`--max-connections`); more wait in the listen backlog.
    pub max_connections: usize,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("keys", &self.keys)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// A browser origin allowed by CORS, as the `Origin` header carries it.
pub type Origin = axum::http::HeaderValue;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            keys: ApiKeys::default(),
            max_body_bytes: 1 << 20,
            max_batch: 1000,
            max_k: 50,
            portal_url: "https://zwfw.dl.gov.cn".into(),
            fixed_now: None,
            caps: Caps::default(),
            rate_per_key: 0,
            push_ids: crate::push::IdKey::default(),
            cors_origins: Vec::new(),
            max_future_secs: 86_400,
            models_dir: None,
            max_connections: 10_000,
        }
    }
}

impl Settings {
    /// Checks ranges; the message names the setting.
    pub fn check(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err(format!("max_body_bytes: expected at least 1024, got {}", self.max_body_bytes));
        }
        if self.max_batch == 0 || self.max_batch > crate::store::MAX_IDS_PER_WRITE {
            return Err(format!(
                "max_batch: expected 1 to {}, got {}",
                crate::store::MAX_IDS_PER_WRITE,
                self.max_batch
            ));
        }
        if !(0..=31 * 86_400).contains(&self.max_future_secs) {
            return Err(format!("max_future_secs: expected 0 to 2678400 (31 days), got {}", self.max_future_secs));
        }
        if self.max_connections == 0 {
            return Err("max_connections: expected at least 1".into());
        }
        if self.max_k == 0 || self.max_k > 1000 {
            return Err(format!("max_k: expected 1 to 1000, got {}", self.max_k));
        }
        if !(self.portal_url.starts_with("https://") || self.portal_url.starts_with("http://")) {
            return Err(format!("portal_url: expected an http(s):// address, got {:?}", self.portal_url));
        }
        let keys = self.keys.portal.iter().chain(&self.keys.ingest).chain(&self.keys.operator);
        if keys.clone().any(|k| k.is_empty() || k.chars().any(char::is_whitespace)) {
            return Err("API keys: expected non-empty keys without spaces".into());
        }
        self.caps.check()
    }

    /// Parses `--cors-origin` values: `scheme://host[:port]`, nothing after it (a browser's
    /// `Origin` header is compared with them byte for byte).
    pub fn parse_origin(s: &str) -> Result<Origin, String> {
        let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
        let ok = rest.is_some_and(|r| !r.is_empty() && !r.contains('/') && !r.contains(char::is_whitespace));
        match (ok, axum::http::HeaderValue::from_str(s)) {
            (true, Ok(v)) => Ok(v),
            _ => Err(format!("cors origin: expected scheme://host[:port] such as https://zwfw.dl.gov.cn, got {s:?}")),
        }
    }
}

/// API keys by scope. With no key at all configured, the API is open (development only).
#[derive(Clone, Default)]
pub struct ApiKeys {
    pub portal: Vec<String>,
    pub ingest: Vec<String>,
    pub operator: Vec<String>,
}

impl std::fmt::Debug for ApiKeys {
    /// Never prints a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ApiKeys {{ portal: {}, ingest: {}, operator: {} }}",
            self.portal.len(),
            self.ingest.len(),
            self.operator.len()
        )
    }
}

impl ApiKeys {
    pub fn is_open(&self) -> bool {
        self.portal.is_empty() && self.ingest.is_empty() && self.operator.is_empty()
    }
}
