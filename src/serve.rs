//! `tongban serve` and `tongban demo`: configuration, start-up, import, the HTTP server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use tongban_features::catalogue::Catalogue;
use tongban_features::domain::SubjectId;
use tongban_features::io::{read_subjects, BadRowPolicy, EventLog, LogFormat};
use tongban_features::time::Timestamp;
use tongban_server::queue::Queue;
use tongban_server::{ApiKeys, Models, Served, Settings, Store};

use crate::progress::eprintln;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The model file to serve.
    #[arg(long, env = "TONGBAN_MODEL")]
    pub model: PathBuf,
    /// The catalogue the model was trained with (default: ./catalogue when the model has one).
    #[arg(long, env = "TONGBAN_CATALOGUE")]
    pub catalogue: Option<PathBuf>,
    /// Redis URL (redis://host:port/db): the store and queue shared by replicas and `tongban
    /// worker`. Without it, the durable embedded store in --data.
    #[arg(long, env = "TONGBAN_REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// The data directory of the embedded store and push queue (created if missing; one process
    /// at a time). Profiles, event ids seen, preferences, inboxes, push reservations and records
    /// and queued pushes survive a restart: each acknowledged write is on disk (fsync) before
    /// the answer. Not with --redis or --memory. The default keeps the state where `serve` runs,
    /// so that a first start needs no setup: a deployment names its own (e.g.
    /// /var/lib/tongban). [default: ./tongban-data; config key: data_dir]
    #[arg(long = "data", env = "TONGBAN_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Volatile store and queue in process memory instead of --data, for tests and benchmarks:
    /// everything is lost on exit (an opt-out comes back as opt-in after a restart).
    #[arg(long, env = "TONGBAN_MEMORY")]
    pub memory: bool,
    /// Prefix of every Redis key (to share one Redis between deployments).
    /// Prefix of every Redis key (several deployments on one Redis).
    #[arg(long, env = "TONGBAN_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,
    /// Start even when Redis has no persistence (appendonly and save off): for tests only.
    #[arg(long, env = "TONGBAN_ALLOW_VOLATILE_REDIS")]
    pub allow_volatile_redis: bool,
    /// Address to listen on (HOST:PORT).
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
    /// The portal's base URL, for the links in suggestions and messages.
    #[arg(long, env = "TONGBAN_PORTAL_URL", default_value = "https://zwfw.dl.gov.cn")]
    pub portal_url: String,
    /// Most events in one POST /v1/events.
    #[arg(long, env = "TONGBAN_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// Largest request body in bytes (larger answers 413).
    #[arg(long, env = "TONGBAN_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Push templates folder (`zh-CN.toml`, `en.toml`), checked at start-up [default: the
    /// built-in templates].
    #[arg(long, env = "TONGBAN_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Requests per second per API key (429 with Retry-After beyond); 0 = no limit.
    #[arg(long, env = "TONGBAN_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,
    /// Run the push worker (delivery and periodic scan) in this process. Always on with the
    /// embedded store (--data or --memory), whose queue no other process can reach.
    #[arg(long, env = "TONGBAN_WITH_WORKER")]
    pub with_worker: bool,
    /// On SIGTERM or Ctrl-C, keep serving this many seconds with `/readyz` answering 503
    /// `draining` (set it to the load balancer's readiness period), then finish in-flight
    /// requests and stop.
    #[arg(long, env = "TONGBAN_DRAIN_SECS", default_value_t = 0)]
    pub drain_secs: u64,
    /// After the drain, in-flight requests get this many seconds to finish; then the process
    /// exits 0 anyway (keep drain + grace below the supervisor's kill timeout, e.g.
    /// Kubernetes' terminationGracePeriodSeconds).
    #[arg(long, env = "TONGBAN_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// The only directory `POST /admin/models` and the console activate model files from
    /// [default: the directory of --model].
    #[arg(long, env = "TONGBAN_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "TONGBAN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// How far ahead of this server's clock an event's time may be, in seconds; later ones are
    /// refused with 422 `event_in_future` (one far ahead would hold a place in the profile
    /// window that real events could never take back).
    #[arg(long, env = "TONGBAN_MAX_FUTURE_SECS", default_value_t = 86_400)]
    pub max_future_secs: i64,
    /// A browser origin allowed to call the API directly (CORS), e.g. https://zwfw.dl.gov.cn;
    /// repeat for several. CORS is off without it: API keys belong on the portal's backend,
    /// never in browsers.
    #[arg(long = "cors-origin", env = "TONGBAN_CORS_ORIGINS", value_delimiter = ',', value_name = "ORIGIN",
          value_parser = tongban_server::Settings::parse_origin)]
    pub cors_origins: Vec<tongban_server::config::Origin>,
    #[command(flatten)]
    pub push: PushArgs,
}

/// Push queue and delivery settings (serve, worker, scan).
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// Queue partitions (Redis streams; the same number for every process of a deployment).
    #[arg(long, env = "TONGBAN_PARTITIONS", default_value_t = 8)]
    pub partitions: usize,
    /// The webhook gateway for SMS and app pushes (http://...); the secret comes from
    /// TONGBAN_WEBHOOK_SECRET (at least 16 bytes).
    #[arg(long, env = "TONGBAN_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Webhook request timeout in milliseconds (a timeout is retried).
    #[arg(long, env = "TONGBAN_WEBHOOK_TIMEOUT_MS", default_value_t = 5000)]
    pub webhook_timeout_ms: u64,
    /// The log channel: one JSON line per delivered push, to this file (`-`: standard output).
    #[arg(long, env = "TONGBAN_PUSH_LOG")]
    pub push_log: Option<PathBuf>,
    /// Attempts before a push is dead-lettered.
    #[arg(long, env = "TONGBAN_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles (with jitter), up to an hour.
    #[arg(long, env = "TONGBAN_BACKOFF_MS", default_value_t = 1000)]
    pub backoff_ms: u64,
    /// Pushes a worker claimed and did not finish within this time are reclaimed by another.
    #[arg(long, env = "TONGBAN_RECLAIM_AFTER_MS", default_value_t = 30_000)]
    pub reclaim_after_ms: u64,
    /// Pushes claimed and delivered concurrently per round.
    #[arg(long, env = "TONGBAN_WORKER_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// The deadline scan's period in seconds (0: no periodic scan; with several workers, let
    /// one scan, or run `tongban scan` from cron).
    #[arg(long, env = "TONGBAN_SCAN_EVERY_SECS", default_value_t = 3600)]
    pub scan_every_secs: u64,
    /// Pushes per subject per day (the critical lane aside).
    #[arg(long, env = "TONGBAN_CAP_PER_DAY", default_value_t = 3)]
    pub cap_per_day: usize,
    /// Pushes per subject per week (the critical lane aside).
    #[arg(long, env = "TONGBAN_CAP_PER_WEEK", default_value_t = 10)]
    pub cap_per_week: usize,
    /// Critical pushes (legal deadlines) per subject per week.
    #[arg(long, env = "TONGBAN_CAP_CRITICAL_PER_WEEK", default_value_t = 3)]
    pub cap_critical_per_week: usize,
    /// Days in which a bundle's next-step digest is not repeated.
    #[arg(long, env = "TONGBAN_DEDUP_DAYS", default_value_t = 7)]
    pub dedup_days: i64,
    /// Days a push without a deadline stays valid.
    #[arg(long, env = "TONGBAN_PUSH_TTL_DAYS", default_value_t = 30)]
    pub push_ttl_days: i64,
    /// Next steps the model gives a lower probability than this are left out of a digest.
    #[arg(long, env = "TONGBAN_MIN_CONFIDENCE", default_value_t = tongban_server::push::MIN_CONFIDENCE)]
    pub min_confidence: f32,
}

impl PushArgs {
    /// The defaults (and any `TONGBAN_*` variables set), as `serve` would take them.
    fn defaults() -> PushArgs {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            push: PushArgs,
        }
        <Only as clap::Parser>::parse_from(["tongban"]).push
    }

    fn check(&self) -> Result<()> {
        if !(1..=1024).contains(&self.partitions) {
            bail!("--partitions {}: expected 1 to 1024", self.partitions);
        }
        if self.dedup_days > 365 || self.push_ttl_days > 365 {
            bail!("--dedup-days and --push-ttl-days: expected 1 to 365");
        }
        // The ranges the server itself enforces, named by their flags.
        self.caps().check().map_err(|e| {
            anyhow::anyhow!("push caps (--cap-*, --dedup-days, --push-ttl-days, --min-confidence): {e}")
        })?;
        self.worker_config()
            .check()
            .map_err(|e| anyhow::anyhow!("worker (--batch, --max-attempts, --backoff-ms): {e}"))?;
        Ok(())
    }

    fn caps(&self) -> tongban_server::push::Caps {
        tongban_server::push::Caps {
            per_day: self.cap_per_day,
            per_week: self.cap_per_week,
            critical_per_week: self.cap_critical_per_week,
            dedup_days: self.dedup_days,
            ttl_days: self.push_ttl_days,
            min_confidence: self.min_confidence,
        }
    }

    fn worker(&self, pusher: Arc<tongban_server::deliver::Pusher>) -> Result<tongban_server::deliver::Worker> {
        use tongban_server::deliver::{Channels, LogChannel, Webhook, Worker};
        let log = match &self.push_log {
            Some(p) => Some(LogChannel::open(p).with_context(|| format!("--push-log {}", p.display()))?),
            None => None,
        };
        let webhook = match &self.webhook_url {
            Some(url) => {
                let secret = std::env::var("TONGBAN_WEBHOOK_SECRET").unwrap_or_default();
                Some(
                    Webhook::new(url, secret.as_bytes(), std::time::Duration::from_millis(self.webhook_timeout_ms))
                        .map_err(|e| anyhow::anyhow!(e))?,
                )
            }
            None => None,
        };
        Ok(Worker { pusher, channels: Channels { log, webhook }, cfg: self.worker_config() })
    }

    fn worker_config(&self) -> tongban_server::deliver::WorkerConfig {
        tongban_server::deliver::WorkerConfig {
            batch: self.batch,
            reclaim_idle_ms: self.reclaim_after_ms,
            max_attempts: self.max_attempts,
            backoff_base_ms: self.backoff_ms.max(1),
            scan_every: (self.scan_every_secs > 0).then(|| std::time::Duration::from_secs(self.scan_every_secs)),
            ..tongban_server::deliver::WorkerConfig::new()
        }
    }
}

/// Where the store and the queue live.
#[derive(Debug, Clone, PartialEq)]
enum Backing {
    Redis {
        url: String,
        prefix: String,
        /// `--allow-volatile-redis`: start even when Redis keeps nothing across a restart.
        volatile_ok: bool,
    },
    /// The durable embedded store and queue in this data directory.
    Disk(PathBuf),
    /// Process memory: lost on exit.
    Memory,
}

/// The data directory when neither --data, --redis nor --memory is given.
const DEFAULT_DATA_DIR: &str = "tongban-data";

impl ServeArgs {
    fn backing(&self) -> Result<Backing> {
        Ok(match (&self.redis, &self.data, self.memory) {
            (Some(_), Some(d), _) => bail!(
                "--data {} and --redis: choose one (the data directory holds the embedded store; Redis is a \
                 store of its own)",
                d.display()
            ),
            (_, Some(d), true) => {
                bail!("--data {} and --memory: choose one (--memory keeps nothing on disk)", d.display())
            }
            (Some(_), None, true) => bail!("--redis and --memory: choose one"),
            (Some(url), None, false) => Backing::Redis {
                url: url.clone(),
                prefix: self.redis_prefix.clone(),
                volatile_ok: self.allow_volatile_redis,
            },
            (None, Some(d), false) => Backing::Disk(d.clone()),
            (None, None, false) => Backing::Disk(PathBuf::from(DEFAULT_DATA_DIR)),
            (None, None, true) => Backing::Memory,
        })
    }
}

/// Connects the store and the queue.
async fn connect(backing: &Backing, partitions: usize) -> Result<(Arc<Store>, Arc<Queue>)> {
    Ok(match backing {
        Backing::Redis { url, prefix, volatile_ok } => {
            let r = tongban_server::store::RedisStore::connect(url, prefix)
                .await
                .with_context(|| format!("connecting to Redis at {}", tongban_server::store::redact(url)))?;
            check_persistence(&r, url, *volatile_ok).await?;
            let (conn, prefix) = r.connection();
            let q = Queue::redis(conn, &prefix, partitions).await.context("creating the push queue in Redis")?;
            (Arc::new(Store::Redis(r)), Arc::new(q))
        }
        Backing::Disk(dir) => {
            // Opening reads the files (after a crash, redb repairs them first): off the runtime.
            let d = dir.clone();
            let (store, queue) = tokio::task::spawn_blocking(move || -> Result<(Store, Queue)> {
                // The store first: its lock also tells that another process has the directory.
                let store = Store::disk(&d).with_context(|| format!("opening the store in --data {}", d.display()))?;
                let queue =
                    Queue::disk(&d).with_context(|| format!("opening the push queue in --data {}", d.display()))?;
                Ok((store, queue))
            })
            .await
            .context("opening the data directory")??;
            let shown = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            eprintln!("state kept in {} (store.redb, queue.redb; fsync per write)", shown.display());
            (Arc::new(store), Arc::new(queue))
        }
        Backing::Memory => {
            eprintln!("warning: --memory: the store and the push queue are in process memory, lost on exit");
            (Arc::new(Store::memory()), Arc::new(Queue::memory()))
        }
    })
}

fn parse_now(now: &Option<String>) -> Result<Option<i64>> {
    match now {
        Some(t) => Ok(Some(Timestamp::parse(t).with_context(|| format!("--now {t:?}: expected RFC 3339"))?.0)),
        None => Ok(None),
    }
}

/// Refuses a Redis that keeps nothing across its own restart (every profile, opt-out and
/// erasure would be forgotten while tongban kept answering), unless `volatile_ok`.
async fn check_persistence(r: &tongban_server::store::RedisStore, url: &str, volatile_ok: bool) -> Result<()> {
    let shown = tongban_server::store::redact(url);
    match r.persistence().await {
        Ok(p) if p.append_only => Ok(()),
        Ok(p) if !p.save.trim().is_empty() => {
            eprintln!(
                "warning: Redis at {shown} keeps snapshots only (save \"{}\"): writes since the last snapshot are \
                 lost if Redis stops; `appendonly yes` keeps them",
                p.save
            );
            Ok(())
        }
        _ if volatile_ok => {
            eprintln!(
                "WARNING: --allow-volatile-redis: Redis at {shown} has no persistence; a Redis restart forgets every \
                 profile, preference, erasure and queued push"
            );
            Ok(())
        }
        Ok(_) => bail!(
            "Redis at {shown} has no persistence (appendonly no, save \"\"): a Redis restart would forget every \
             profile, preference, erasure and queued push. Turn on `appendonly yes` (redis.conf, or CONFIG SET \
             appendonly yes), or pass --allow-volatile-redis (tests, throw-away setups)"
        ),
        Err(e) => bail!(
            "cannot read the persistence settings of Redis at {shown} (CONFIG GET: {e}); check that appendonly or \
             save is on, then pass --allow-volatile-redis to start without this check"
        ),
    }
}

/// Settings of the processes that push without serving (worker, scan).
#[derive(clap::Args, Debug)]
pub struct PushProcessArgs {
    /// Redis URL (redis://host:port/db): the store and queue the servers use.
    #[arg(long, env = "TONGBAN_REDIS_URL", hide_env_values = true)]
    pub redis: String,
    /// Start even when Redis has no persistence (appendonly and save off): for tests only.
    #[arg(long, env = "TONGBAN_ALLOW_VOLATILE_REDIS")]
    pub allow_volatile_redis: bool,
    /// Prefix of every Redis key (several deployments on one Redis).
    #[arg(long, env = "TONGBAN_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,
    /// Catalogue file or folder [default: the built-in Dalian catalogue].
    #[arg(long, env = "TONGBAN_CATALOGUE")]
    pub catalogue: Option<PathBuf>,
    /// Push templates folder [default: the built-in templates].
    #[arg(long, env = "TONGBAN_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Pin the policy clock (RFC 3339).
    #[arg(long, env = "TONGBAN_NOW")]
    pub now: Option<String>,
    /// The portal's base URL, for the links in suggestions and messages.
    #[arg(long, env = "TONGBAN_PORTAL_URL", default_value = "https://zwfw.dl.gov.cn")]
    pub portal_url: String,
    #[command(flatten)]
    pub push: PushArgs,
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: PushProcessArgs,
    /// Serve /healthz, /readyz (the store and queue answer) and /metrics (push counts, queue
    /// depth) on this address (HOST:PORT), for a supervisor or Prometheus.
    #[arg(long, visible_alias = "health-addr", env = "TONGBAN_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// On SIGTERM or Ctrl-C the worker claims nothing more and finishes the batch in hand; if
    /// that takes longer than this, it exits anyway (those pushes stay claimed and another
    /// worker reclaims them after --reclaim-after-ms). Keep it below the supervisor's kill
    /// timeout (docker stop: 10 s; Kubernetes: 30 s).
    #[arg(long, env = "TONGBAN_SHUTDOWN_GRACE_SECS", default_value_t = 8)]
    pub shutdown_grace_secs: u64,
}

#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    #[command(flatten)]
    pub common: PushProcessArgs,
}

/// Templates from a folder, or the built-in ones, checked against the catalogue.
fn load_templates(dir: Option<&Path>, cat: &Catalogue) -> Result<tongban_server::push::Templates> {
    let t = match dir {
        Some(d) => tongban_server::push::Templates::load(d, cat),
        None => {
            let t = tongban_server::push::Templates::builtin();
            t.check(cat).map(|()| t)
        }
    };
    t.map_err(|e| anyhow::anyhow!("push templates: {e}"))
}

async fn pusher_for(a: &PushProcessArgs) -> Result<Arc<tongban_server::deliver::Pusher>> {
    a.push.check()?;
    let fixed_now = parse_now(&a.now)?;
    let cat = Arc::new(crate::load_catalogue(a.catalogue.as_deref())?);
    let templates = load_templates(a.templates.as_deref(), &cat)?;
    let backing =
        Backing::Redis { url: a.redis.clone(), prefix: a.redis_prefix.clone(), volatile_ok: a.allow_volatile_redis };
    let (store, queue) = connect(&backing, a.push.partitions).await?;
    Ok(Arc::new(tongban_server::deliver::Pusher {
        store,
        queue,
        catalogue: cat,
        templates: Arc::new(templates),
        caps: a.push.caps(),
        portal: a.portal_url.clone(),
        ids: push_id_key()?,
        clock: tongban_server::clock::Clock::pinned(fixed_now),
    }))
}

pub fn worker(args: &WorkerArgs) -> Result<ExitCode> {
    // One thread per worker process (scale out with processes): no wake-ups across threads,
    // which cost more than the work on a small machine (BENCHMARKS.md).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        // The handlers first: a SIGTERM while connecting is a clean stop too, never the
        // default action (killed on the spot).
        let stop = Stop::install()?;
        let pusher = tokio::select! {
            p = pusher_for(&args.common) => p?,
            () = stop.wait() => return Ok(ExitCode::SUCCESS),
        };
        let worker = args.common.push.worker(pusher.clone())?;
        if let Some(addr) = args.metrics_addr {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --metrics-addr {addr}"))?;
            tokio::spawn(tongban_server::deliver::health::serve(listener, pusher));
            eprintln!("worker health and metrics on http://{addr}/healthz, /readyz, /metrics");
        }
        eprintln!(
            "tongban worker {} delivering from Redis ({} partitions)",
            worker.cfg.consumer, args.common.push.partitions
        );
        // `run` returns once the round in hand is finished and acknowledged after the signal;
        // the deadline bounds a round stuck on a gateway or on Redis.
        let grace = std::time::Duration::from_secs(args.shutdown_grace_secs);
        let run = worker.run(stop.wait());
        let deadline = async {
            stop.wait().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = run => eprintln!("worker stopped: its last batch is finished"),
            () = deadline => eprintln!(
                "warning: the batch in hand did not finish within --shutdown-grace-secs {}: its pushes stay claimed \
                 and another worker reclaims them after --reclaim-after-ms {}",
                args.shutdown_grace_secs, args.common.push.reclaim_after_ms
            ),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGTERM or SIGINT, listened to from the moment it is installed (tokio's `ctrl_c()` and
/// `signal()` inside an `async fn` register only when first polled, leaving a window in which
/// a signal kills the process).
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn install() -> Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "interrupt",
            };
            eprintln!("shutting down ({which})");
            let _ = tx.send(true);
        });
        Ok(Stop(rx))
    }

    /// Completes once a signal came.
    async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the sender is gone, which happens only after it sent.
        let _ = rx.wait_for(|&stopped| stopped).await;
    }
}

pub fn scan(args: &ScanArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let pusher = pusher_for(&args.common).await?;
        // The scan reports no count as it goes (it lives in the server crate): a spinner.
        let spin = crate::progress::spinner("scanning every profile for deadlines and renewals".into());
        let report = pusher.scan().await.context("scanning profiles");
        spin.finish_and_clear();
        let report = report?;
        println!("{}", serde_json::to_string(&report).expect("reports serialise"));
        Ok(ExitCode::SUCCESS)
    })
}

/// Ctrl-C or SIGTERM (systemd, Kubernetes, `docker stop`).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler (tokio's signal driver is enabled)");
    let which = tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupt",
        _ = term.recv() => "SIGTERM",
    };
    eprintln!("shutting down ({which})");
}

/// The push id key, from the environment only (`TONGBAN_PUSH_ID_KEY`, never a flag: `ps` shows
/// flags).
fn push_id_key() -> Result<tongban_server::push::IdKey> {
    let secret = std::env::var("TONGBAN_PUSH_ID_KEY").ok();
    tongban_server::push::IdKey::new(secret.as_deref().map(str::as_bytes)).map_err(|e| anyhow::anyhow!(e))
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

/// The models directory: `--models-dir`, else the directory of `--model`.
fn models_dir(args: &ServeArgs) -> Result<PathBuf> {
    let dir = match &args.models_dir {
        Some(d) => d.clone(),
        None => args
            .model
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| ".".into()),
    };
    if !dir.is_dir() {
        anyhow::bail!("--models-dir {}: not a directory", dir.display());
    }
    Ok(dir)
}

/// Starts the server; `banner` is printed once it listens.
async fn run(args: &ServeArgs, banner: Option<String>) -> Result<ExitCode> {
    let fixed_now = parse_now(&args.now)?;
    args.push.check()?;
    let backing = args.backing()?;
    let header = tongban_model::artifact::read_header(&args.model)?;
    // A model trained with a catalogue serves with one: the given one, else the built-in one
    // (loading the model checks that the fingerprints agree).
    let catalogue = match (&args.catalogue, &header.catalogue_fingerprint) {
        (Some(p), _) => Some(Arc::new(crate::load_catalogue(Some(p))?)),
        (None, Some(_)) => Some(Arc::new(Catalogue::builtin())),
        (None, None) => None,
    };
    let (model, header) = tongban_model::artifact::load(&args.model, catalogue.clone())?;
    let (store, queue) = connect(&backing, args.push.partitions).await?;
    let mut segments = HashMap::new();
    // The console's analytics start from the whole imported log (the store keeps profiles,
    // bounded, not every event).
    let mut analytics = None;
    let keys = keys_from_env();
    if keys.is_open() {
        eprintln!("warning: no API key configured (TONGBAN_PORTAL_KEYS, TONGBAN_INGEST_KEYS, TONGBAN_OPERATOR_KEYS): the API is open");
    }
    let push_ids = push_id_key()?;
    if !push_ids.is_set() {
        eprintln!("note: push ids are plain hashes (set TONGBAN_PUSH_ID_KEY, shared by every replica and worker, so they cannot be recomputed from subject ids)");
    }
    let settings = Settings {
        keys,
        max_body_bytes: args.max_body_bytes,
        max_batch: args.max_batch,
        max_k: 50,
        portal_url: args.portal_url.clone(),
        fixed_now,
        rate_per_key: args.rate_limit,
        caps: args.push.caps(),
        push_ids,
        cors_origins: args.cors_origins.clone(),
        max_future_secs: args.max_future_secs,
        models_dir: Some(models_dir(args)?),
        max_connections: args.max_connections,
    };
    settings.check().map_err(|e| {
        anyhow::anyhow!("serve settings (--max-body-bytes, --max-batch, --portal-url, --max-future-secs): {e}")
    })?;
    if let Some(log_path) = &args.import {
        let started = std::time::Instant::now();
        let base = catalogue.as_deref().map_or_else(EventLog::default, EventLog::for_catalogue);
        let format = LogFormat::from_name("native", log_path).expect("native is a format");
        let (mut log, _) = crate::read_log_with_progress(log_path, format, BadRowPolicy::Fail, base)?;
        let beside = log_path.parent().map(|d| d.join("subjects.csv")).filter(|p| p.exists());
        let now = fixed_now.unwrap_or_else(|| log.events.iter().map(|e| e.at.0).max().unwrap_or(0));
        let segs = match args.subjects.clone().or(beside) {
            Some(p) => read_subjects(&p, &mut log, Timestamp(now).date_shanghai())?,
            None => vec![0; log.subjects.len()],
        };
        let spin = crate::progress::spinner("building the profiles and the console's analytics".into());
        let profiles = model.profiles(&log, &segs);
        if let Some(cat) = catalogue.as_deref() {
            let mut a = tongban_features::analytics::Analytics::new(cat);
            for e in &log.events {
                a.apply_named(log.subjects.name(e.subject), e, cat);
            }
            analytics = Some(a);
        }
        spin.finish_and_clear();
        let mut subjects = Vec::with_capacity(profiles.len());
        for (i, &seg) in segs.iter().enumerate().take(profiles.len()) {
            let id = log.subjects.name(i as u32);
            // The log reader validated every subject id.
            subjects
                .push(SubjectId::parse(id).with_context(|| format!("subject id {id:?} in {}", log_path.display()))?);
            segments.insert(id.to_owned(), seg);
        }
        // In slices: one commit (fsync) per slice on the durable store, not one per profile.
        let mut kept = 0;
        let pairs: Vec<(&SubjectId, &tongban_features::profile::Profile)> = subjects.iter().zip(&profiles).collect();
        let bar = crate::progress::bar(pairs.len() as u64, "importing", "profiles");
        for chunk in pairs.chunks(1000) {
            let stored = store
                .import_profiles(chunk)
                .await
                .with_context(|| format!("importing the profiles of {} ({})", log_path.display(), store.kind()))?;
            kept += stored.iter().filter(|&&s| !s).count();
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        eprintln!(
            "imported {} events of {} subjects into the {} store ({kept} existing profiles kept) in {:.1} s",
            log.events.len(),
            log.subjects.len(),
            store.kind(),
            started.elapsed().as_secs_f64()
        );
    }
    let served = Served::new(model, header, args.model.clone());
    let version = served.version.clone();
    let templates = match &catalogue {
        Some(cat) => Some(load_templates(args.templates.as_deref(), cat)?),
        None => None,
    };
    let state = tongban_server::state(Models::new(served, catalogue), store, queue, settings, segments, templates);
    let imported = analytics.is_some();
    if let Some(a) = analytics {
        state.console.set_analytics(a);
    }
    // On the durable store the console's analytics survive a restart too (an import rebuilds
    // them from the whole log instead).
    if let Backing::Disk(dir) = &backing {
        state.console.keep_in(dir.join("analytics.bin"), imported);
    }
    let with_worker = args.with_worker || !matches!(backing, Backing::Redis { .. });
    let worker = match (&state.pusher, with_worker) {
        (Some(p), true) => Some(args.push.worker(p.clone())?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    eprintln!("tongban serving model {version} with the {} store on http://{}", state.store.kind(), args.addr);
    if let Some(b) = banner {
        // A reader that went away (`| head`, a closed pipe) must not take the server down:
        // the banner is a courtesy, so a failed write is ignored.
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{b}").and_then(|()| out.flush());
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if worker.is_none() && state.pusher.is_some() {
        eprintln!("pushes are queued in Redis: run `tongban worker` (or serve --with-worker) to deliver them");
    }
    let worker_task = worker.map(|w| {
        eprintln!("push worker {} running in process ({} queue)", w.cfg.consumer, state.queue.kind());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            w.run(async move {
                let _ = stopped.changed().await;
            })
            .await
        })
    });
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    };
    let drain = std::time::Duration::from_secs(args.drain_secs);
    let grace = std::time::Duration::from_secs(args.shutdown_grace_secs);
    tongban_server::serve_draining(listener, state, shutdown, drain, grace).await.context("serving")?;
    if let Some(t) = worker_task {
        let _ = t.await;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the demo keeps its generated data, its model and its state (DIR/state: the durable
    /// embedded store and queue; delete it to start over).
    #[arg(long, default_value = "data/demo")]
    pub dir: PathBuf,
    /// Address to listen on (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Catalogue file or folder [default: the built-in Dalian catalogue].
    #[arg(long)]
    pub catalogue: Option<PathBuf>,
    /// Persons of the generated history (when DIR has none yet).
    #[arg(long, default_value_t = 20_000)]
    pub persons: u64,
    /// Companies of the generated history (when DIR has none yet).
    #[arg(long, default_value_t = 2_000)]
    pub enterprises: u64,
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
    // The steps run this binary with one catalogue: the given one, or the built-in one written
    // into the demo folder (the same fingerprint), so the demo runs from any directory.
    let catalogue = match &args.catalogue {
        Some(p) => p.clone(),
        None => {
            let d = dir.join("catalogue");
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            for (path, text) in Catalogue::builtin_files() {
                let name = Path::new(path).file_name().context("a catalogue file name")?;
                std::fs::write(d.join(name), text).with_context(|| format!("writing {}", d.display()))?;
            }
            d
        }
    };
    let cat: Vec<std::ffi::OsString> = vec!["--catalogue".into(), catalogue.clone().into()];
    if !events.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        step(
            std::process::Command::new(exe()?)
                .args([
                    "generate",
                    "--persons",
                    &args.persons.to_string(),
                    "--enterprises",
                    &args.enterprises.to_string(),
                ])
                .args(["--seed", "7", "--truth-samples", "0"])
                .args(&cat)
                .arg("--out")
                .arg(dir),
            &format!("generating a small Dalian history ({} people, {} companies)", args.persons, args.enterprises),
        )?;
    }
    if !model.exists() {
        // A quick start: the sequence model trains 4 epochs instead of the default 16 (minutes
        // sooner, at some cost in quality).
        let params = dir.join("demo-params.json");
        let mut p = tongban_model::ModelParams::default();
        p.seq.epochs = 4;
        std::fs::write(&params, serde_json::to_vec_pretty(&p)?)
            .with_context(|| format!("writing {}", params.display()))?;
        step(
            std::process::Command::new(exe()?)
                .arg("train")
                .args(&cat)
                .arg("--events")
                .arg(&events)
                .arg("--params")
                .arg(&params)
                .arg("--out")
                .arg(&model),
            "training a model (sequence model: 4 epochs, for a quick start)",
        )?;
        // Its evaluation on the 90 days after the cut-off, recorded in the file: the console's
        // overview and model comparison show it.
        step(
            std::process::Command::new(exe()?)
                .arg("eval")
                .args(&cat)
                .arg("--events")
                .arg(&events)
                .arg("--protocol")
                .arg("temporal")
                .arg("--future")
                .arg(dir.join("future.csv"))
                .args(["--k", "1,5,10"])
                .arg("--model")
                .arg(&model)
                .arg("--record"),
            "evaluating it on the 90 days after the cut-off (recorded in the model file)",
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
    let state_dir = dir.join("state");
    let state = state_dir.display();
    let banner = format!(
        "\ntongban demo is up (durable store in {state}, clock pinned to {now}, just after the data's cut-off). Try:\n\n  \
         curl -s '{base}/v1/users/{subject}/recommendations?k=5' | jq\n  \
         curl -s '{base}/v1/users/{subject}/recommendations?k=5&locale=en' | jq\n  \
         curl -s -X POST {base}/v1/events -H 'content-type: application/json' \\\n    \
         -d '{{\"event_id\":\"demo-1\",\"subject\":\"{subject}\",\"service\":\"e.entry.seal\",\"kind\":\"completed\"}}'\n  \
         curl -s '{base}/v1/services/e.entry.registration' | jq\n\n\
         A company completes its registration (营业执照, the business licence); the push worker puts\n\
         guidance for the next steps of 开办企业一件事 in its inbox:\n\n  \
         curl -s -X POST {base}/v1/events -H 'content-type: application/json' \\\n    \
         -d '{{\"event_id\":\"demo-2\",\"subject\":\"e-demo\",\"service\":\"e.entry.registration\",\"kind\":\"completed\"}}'\n  \
         curl -s '{base}/v1/users/e-demo/inbox' | jq '.messages[0] | .title, .body'\n  \
         curl -s '{base}/admin/pushes/'$(curl -s '{base}/v1/users/e-demo/inbox' | jq -r '.messages[0].id') | jq\n  \
         curl -s '{base}/metrics' | grep tongban_push\n\n  \
         curl -s '{base}/v1/services/popular?segment=person:30-39&k=5' | jq\n  \
         curl -s {base}/openapi.json | jq '.paths | keys'\n\n\
         The operator console (open: no operator key is set in the demo): {base}/console/\n\nCtrl-C stops it.\n"
    );
    let serve_args = ServeArgs {
        model,
        catalogue: Some(catalogue),
        redis: None,
        redis_prefix: String::new(),
        allow_volatile_redis: false,
        data: Some(state_dir.clone()),
        memory: false,
        addr: args.addr,
        import: Some(events),
        subjects: None,
        now: Some(now),
        portal_url: "https://zwfw.dl.gov.cn".into(),
        max_batch: 1000,
        max_body_bytes: 4 << 20,
        rate_limit: 0,
        templates: None,
        with_worker: true,
        drain_secs: 0,
        shutdown_grace_secs: 10,
        max_future_secs: 86_400,
        models_dir: None,
        max_connections: 10_000,
        cors_origins: Vec::new(),
        push: PushArgs::defaults(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run(&serve_args, Some(banner)))
}
