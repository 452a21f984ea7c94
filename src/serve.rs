//! `tongban serve` and `tongban demo`: configuration, start-up, import, the HTTP server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use tongban_features::catalogue::Catalogue;
use tongban_features::io::{read_log_into, read_subjects, BadRowPolicy, EventLog, LogFormat};
use tongban_features::time::Timestamp;
use tongban_server::{ApiKeys, Models, Served, Settings, Store};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The model file to serve.
    #[arg(long, env = "TONGBAN_MODEL")]
    pub model: PathBuf,
    /// The catalogue the model was trained with (default: ./catalogue when the model has one).
    #[arg(long, env = "TONGBAN_CATALOGUE")]
    pub catalogue: Option<PathBuf>,
    /// Redis URL (redis://host:port/db); without it, the embedded in-memory store.
    #[arg(long, env = "TONGBAN_REDIS_URL")]
    pub redis: Option<String>,
    /// Prefix of every Redis key (to share one Redis between deployments).
    #[arg(long, env = "TONGBAN_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,
    #[arg(long, env = "TONGBAN_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Build profiles from this event log at start-up (native CSV/JSONL).
    #[arg(long)]
    pub import: Option<PathBuf>,
    /// subjects.csv for segments (default: beside the imported log, if present).
    #[arg(long)]
    pub subjects: Option<PathBuf>,
    /// Pin the serving clock (RFC 3339), e.g. to a generated data set's cut-off.
    #[arg(long, env = "TONGBAN_NOW")]
    pub now: Option<String>,
    /// Base URL of the portal, for links to services.
    #[arg(long, env = "TONGBAN_PORTAL_URL", default_value = "https://zwfw.dl.gov.cn")]
    pub portal_url: String,
    #[arg(long, env = "TONGBAN_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    #[arg(long, env = "TONGBAN_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Push templates folder (`zh-CN.toml`, `en.toml`), checked at start-up.
    #[arg(long, env = "TONGBAN_TEMPLATES", default_value = "templates")]
    pub templates: PathBuf,
    /// Requests per second per API key (429 with Retry-After beyond); 0 = no limit.
    #[arg(long, env = "TONGBAN_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,
}

/// API keys come from the environment only (never flags, which `ps` shows):
/// `TONGBAN_PORTAL_KEYS`, `TONGBAN_INGEST_KEYS`, `TONGBAN_OPERATOR_KEYS`, comma-separated.
fn keys_from_env() -> ApiKeys {
    let list = |name: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    ApiKeys {
        portal: list("TONGBAN_PORTAL_KEYS"),
        ingest: list("TONGBAN_INGEST_KEYS"),
        operator: list("TONGBAN_OPERATOR_KEYS"),
    }
}

pub fn serve(args: &ServeArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run(args, None))
}

/// Starts the server; `banner` is printed once it listens.
async fn run(args: &ServeArgs, banner: Option<String>) -> Result<ExitCode> {
    let fixed_now = match &args.now {
        Some(t) => Some(Timestamp::parse(t).with_context(|| format!("--now {t:?}: expected RFC 3339"))?.0),
        None => None,
    };
    let header = tongban_model::artifact::read_header(&args.model)?;
    let catalogue = match (&args.catalogue, &header.catalogue_fingerprint) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(_)) => Some(PathBuf::from("catalogue")),
        (None, None) => None,
    };
    let catalogue = match catalogue {
        Some(p) => {
            Some(Arc::new(Catalogue::load(&p).with_context(|| format!("loading the catalogue {}", p.display()))?))
        }
        None => None,
    };
    let (model, header) = tongban_model::artifact::load(&args.model, catalogue.clone())?;
    let store = match &args.redis {
        Some(url) => Store::Redis(
            tongban_server::store::RedisStore::connect(url, &args.redis_prefix)
                .await
                .with_context(|| format!("connecting to Redis at {}", tongban_server::store::redact(url)))?,
        ),
        None => Store::memory(),
    };
    let mut segments = HashMap::new();
    if let Some(log_path) = &args.import {
        let started = std::time::Instant::now();
        let base = catalogue.as_deref().map_or_else(EventLog::default, EventLog::for_catalogue);
        let format = LogFormat::from_name("native", log_path).expect("native is a format");
        let (mut log, _) = read_log_into(log_path, format, BadRowPolicy::Fail, base)?;
        let beside = log_path.parent().map(|d| d.join("subjects.csv")).filter(|p| p.exists());
        let now = fixed_now.unwrap_or_else(|| log.events.iter().map(|e| e.at.0).max().unwrap_or(0));
        let segs = match args.subjects.clone().or(beside) {
            Some(p) => read_subjects(&p, &mut log, Timestamp(now).date_shanghai())?,
            None => vec![0; log.subjects.len()],
        };
        let profiles = model.profiles(&log, &segs);
        let mut kept = 0;
        for (i, p) in profiles.iter().enumerate() {
            let id = log.subjects.name(i as u32);
            if !store.import_profile(id, p).await.with_context(|| format!("importing the profile of {id}"))? {
                kept += 1;
            }
            segments.insert(id.to_owned(), segs[i]);
        }
        eprintln!(
            "imported {} events of {} subjects into the {} store ({kept} existing profiles kept) in {:.1} s",
            log.events.len(),
            log.subjects.len(),
            store.kind(),
            started.elapsed().as_secs_f64()
        );
    }
    if args.max_batch == 0 || args.max_batch > tongban_server::store::MAX_IDS_PER_WRITE {
        bail!("--max-batch {}: expected 1 to {}", args.max_batch, tongban_server::store::MAX_IDS_PER_WRITE);
    }
    let keys = keys_from_env();
    if keys.is_open() {
        eprintln!("warning: no API key configured (TONGBAN_PORTAL_KEYS, TONGBAN_INGEST_KEYS, TONGBAN_OPERATOR_KEYS): the API is open");
    }
    let settings = Settings {
        keys,
        max_body_bytes: args.max_body_bytes,
        max_batch: args.max_batch,
        max_k: 50,
        portal_url: args.portal_url.clone(),
        fixed_now,
        rate_per_key: args.rate_limit,
    };
    let served = Served::new(model, header, args.model.clone());
    let version = served.version.clone();
    let templates = match &catalogue {
        Some(cat) => Some(
            tongban_server::push::Templates::load(&args.templates, cat)
                .map_err(|e| anyhow::anyhow!("push templates: {e}"))?,
        ),
        None => None,
    };
    let state = tongban_server::state(Models::new(served, catalogue), store, settings, segments, templates);
    let listener = tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    eprintln!("tongban serving model {version} with the {} store on http://{}", state.store.kind(), args.addr);
    if let Some(b) = banner {
        println!("{b}");
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down");
    };
    tongban_server::serve(listener, state, shutdown).await.context("serving")?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the demo keeps its generated data and model.
    #[arg(long, default_value = "data/demo")]
    pub dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    #[arg(long, default_value = "catalogue")]
    pub catalogue: PathBuf,
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the tongban binary")
}

fn step(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    eprintln!("demo: {what}");
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed");
    }
    Ok(())
}

/// The company that most recently completed its business registration: its opening bundle is
/// still open, a good first example.
fn example_subject(events: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(events).ok()?;
    let mut last: Option<(String, String)> = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        // RFC 3339 times in UTC compare as strings.
        if f.len() == 7
            && f[3] == "completed"
            && f[2] == "e.entry.registration"
            && last.as_ref().is_none_or(|l| f[5] > l.1.as_str())
        {
            last = Some((f[1].to_owned(), f[5].to_owned()));
        }
    }
    last
}

pub fn demo(args: &DemoArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    let events = dir.join("events.csv");
    let model = dir.join("demo.model");
    let cat = args.catalogue.to_str().context("catalogue path")?.to_owned();
    if !events.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        step(
            std::process::Command::new(exe()?)
                .args([
                    "generate",
                    "--persons",
                    "20000",
                    "--enterprises",
                    "2000",
                    "--seed",
                    "7",
                    "--truth-samples",
                    "0",
                    "--catalogue",
                    &cat,
                    "--out",
                ])
                .arg(dir),
            "generating a small Dalian history (20,000 people, 2,000 companies)",
        )?;
    }
    if !model.exists() {
        step(
            std::process::Command::new(exe()?)
                .args(["train", "--catalogue", &cat, "--events"])
                .arg(&events)
                .arg("--out")
                .arg(&model),
            "training a model",
        )?;
    }
    let manifest: serde_json::Value = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .context("reading the demo manifest.json (delete the demo folder to regenerate)")?;
    let cutoff = manifest["cutoff"].as_str().context("manifest.json: cutoff")?.to_owned();
    // 10:00 in Shanghai on the cut-off day: office hours, outside the default quiet hours.
    let now = Timestamp(Timestamp::parse(&cutoff).context("manifest.json: cutoff")?.0 + 10 * 3600).to_string();
    let (subject, _) = example_subject(&events).unwrap_or_else(|| ("p0000001".into(), String::new()));
    let base = format!("http://{}", args.addr);
    let banner = format!(
        "\ntongban demo is up (memory store, clock pinned to {now}, just after the data's cut-off). Try:\n\n  \
         curl -s '{base}/v1/users/{subject}/recommendations?k=5' | jq\n  \
         curl -s '{base}/v1/users/{subject}/recommendations?k=5&locale=en' | jq\n  \
         curl -s -X POST {base}/v1/events -H 'content-type: application/json' \\\n    \
         -d '{{\"event_id\":\"demo-1\",\"subject\":\"{subject}\",\"service\":\"e.entry.seal\",\"kind\":\"completed\"}}'\n  \
         curl -s '{base}/v1/services/e.entry.registration' | jq\n  \
         curl -s -X POST {base}/v1/events -H 'content-type: application/json' \\\n    \
         -d '{{\"event_id\":\"demo-2\",\"subject\":\"e-demo\",\"service\":\"e.entry.registration\",\"kind\":\"completed\"}}'\n  \
         curl -s '{base}/v1/users/e-demo/inbox' | jq\n  \
         curl -s '{base}/v1/services/popular?segment=person:30-39&k=5' | jq\n  \
         curl -s {base}/openapi.json | jq '.paths | keys'\n\nCtrl-C stops it.\n"
    );
    let serve_args = ServeArgs {
        model,
        catalogue: Some(args.catalogue.clone()),
        redis: None,
        redis_prefix: String::new(),
        addr: args.addr,
        import: Some(events),
        subjects: None,
        now: Some(now),
        portal_url: "https://zwfw.dl.gov.cn".into(),
        max_batch: 1000,
        max_body_bytes: 4 << 20,
        rate_limit: 0,
        templates: PathBuf::from("templates"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run(&serve_args, Some(banner)))
}
