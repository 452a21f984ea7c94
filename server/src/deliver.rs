//! From trigger to channel: [`Pusher`] runs the policy and enqueues; [`Worker`] claims jobs,
//! re-checks the policy at delivery (expired, done meanwhile, push switched off, erased, quiet
//! hours) and hands the message to the channels: the portal inbox (always), the log channel
//! (development), and a webhook gateway for SMS and app pushes (only for subjects who allowed
//! an outbound channel).
//!
//! The webhook receives `POST` JSON with `X-Tongban-Push-Id`, `X-Tongban-Timestamp` (Unix
//! seconds) and `X-Tongban-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` under
//! the shared secret. 2xx accepts; 429, 5xx, timeouts and connection errors are retried with
//! exponential backoff and jitter; any other answer dead-letters the push. Delivery is at
//! least once: receivers de-duplicate by push id (the inbox does).

use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use tongban_features::catalogue::Catalogue;
use tongban_features::profile::Profile;
use tongban_model::Model;

use crate::push::{self, Candidate, Caps, Job, Preferences, Skip, Templates, Trigger};
use crate::queue::{wall_ms, Claimed, Enqueue, Outcome, Queue, Status};
use crate::store::{Reservation, Store, StoreError};

/// Policy and enqueue, shared by the API, the worker's scan and `tongban scan`.
#[derive(Debug)]
pub struct Pusher {
    pub store: Arc<Store>,
    pub queue: Arc<Queue>,
    pub catalogue: Arc<Catalogue>,
    pub templates: Templates,
    pub caps: Caps,
    pub portal: String,
    /// Pins the policy clock (tests, demo); queue scheduling always runs on wall time.
    pub fixed_now: Option<i64>,
}

/// One subject's candidates with what the policy needs.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    pub subject: &'a str,
    pub profile: &'a Profile,
    pub prefs: &'a Preferences,
    pub candidates: &'a [Candidate],
}

/// What an offer of candidates did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Offered {
    pub queued: usize,
    pub skipped: Vec<(String, Skip)>,
    pub ids: Vec<String>,
}

/// What a scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub subjects: usize,
    pub candidates: usize,
    pub queued: usize,
    pub skipped: usize,
}

impl Pusher {
    pub fn now(&self) -> i64 {
        self.fixed_now.unwrap_or_else(|| (wall_ms() / 1000) as i64)
    }

    /// The model version written on pushes from catalogue rules (scans).
    pub fn rules_version(&self) -> String {
        format!("rules@{}", &self.catalogue.fingerprint()[..12.min(self.catalogue.fingerprint().len())])
    }

    /// Runs the policy on one subject's candidates, reserves the survivors (de-duplication and
    /// caps, atomically in the store) and enqueues them.
    pub async fn offer(
        &self,
        subject: &str,
        profile: &Profile,
        prefs: &Preferences,
        candidates: &[Candidate],
        model: &str,
    ) -> Result<Offered, StoreError> {
        self.offer_many(&[Offer { subject, profile, prefs, candidates }], model).await
    }

    /// [`Pusher::offer`] for several subjects: one round trip to reserve, one to enqueue.
    pub async fn offer_many(&self, offers: &[Offer<'_>], model: &str) -> Result<Offered, StoreError> {
        let now = self.now();
        let wall = wall_ms();
        let mut jobs: Vec<(Job, bool, Result<(), Skip>)> = Vec::new();
        for o in offers {
            for c in o.candidates {
                let job = push::job(&self.catalogue, &self.templates, o.prefs, o.subject, c, now, &self.portal, model);
                jobs.push((job, c.critical, push::decide(o.prefs, o.profile, c)));
            }
        }
        let reservations: Vec<Reservation<'_>> = jobs
            .iter()
            .filter(|(_, _, v)| v.is_ok())
            .map(|(job, critical, _)| Reservation { subject: &job.subject, id: &job.message.id, critical: *critical })
            .collect();
        let mut answers = self.store.reserve_many(&reservations, now, &self.caps).await?.into_iter();
        let mut out = Offered::default();
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        for (job, _, verdict) in jobs {
            let verdict = match verdict {
                Ok(()) => answers.next().expect("one answer per reservation"),
                Err(skip) => Err(skip),
            };
            if let Err(skip) = verdict {
                out.skipped.push((job.message.id.clone(), skip));
                skipped.push((job, skip));
                continue;
            }
            let wait = (job.message.deliver_at - now).max(0) as u64;
            let status = if wait > 0 { Status::Deferred } else { Status::Queued };
            out.ids.push(job.message.id.clone());
            items.push(Enqueue { job, due_ms: wall + wait * 1000, status });
        }
        out.queued = items.len();
        // Enqueue first: if it fails, the reservations are given back, so that nothing is held
        // that was never queued (a request dropped between the two round trips still can).
        if let Err(e) = self.queue.enqueue(&items).await {
            let held: Vec<Reservation<'_>> = items
                .iter()
                .map(|it| Reservation { subject: &it.job.subject, id: &it.job.message.id, critical: it.job.critical })
                .collect();
            if let Err(e2) = self.store.release(&held).await {
                eprintln!("warning: {} reservations not released after a failed enqueue: {e2}", held.len());
            }
            return Err(e);
        }
        // Skip records are for operators; losing them loses no push.
        if let Err(e) = self.queue.skipped(&skipped).await {
            eprintln!("warning: {} skip records not written: {e}", skipped.len());
        }
        Ok(out)
    }

    /// The next-step trigger after a subject completed `completed` (one proposal per bundle).
    /// With a model, steps below `caps.min_confidence` are left out of a digest.
    pub async fn after_events(
        &self,
        subject: &str,
        completed: &[u32],
        model: Option<&Model>,
        version: &str,
    ) -> Result<Offered, StoreError> {
        self.after_events_many(&[(subject, completed)], model, version).await
    }

    /// [`Pusher::after_events`] for several subjects (an ingest batch): three round trips in all.
    pub async fn after_events_many(
        &self,
        items: &[(&str, &[u32])],
        model: Option<&Model>,
        version: &str,
    ) -> Result<Offered, StoreError> {
        let subjects: Vec<&str> = items.iter().map(|x| x.0).collect();
        let data = self.store.profiles_and_prefs(&subjects).await?;
        let now = self.now();
        let mut scratch = model.map(Model::scratch).unwrap_or_default();
        let mut kept: Vec<(&str, Profile, Preferences, Vec<Candidate>)> = Vec::new();
        for (&(subject, completed), (profile, prefs)) in items.iter().zip(data) {
            let Some(profile) = profile else { continue };
            let mut cands: Vec<Candidate> = Vec::new();
            for &done in completed {
                for mut c in push::propose(&self.catalogue, &profile, done, now, &self.caps) {
                    if cands.iter().any(|x| x.key == c.key) {
                        continue;
                    }
                    // A sensitive bundle's message lists everything that remains, whatever the
                    // model thinks.
                    if let (Some(m), false) = (model, c.trigger == Trigger::Sensitive) {
                        let scores = m.score_services(&profile, &c.content.services, now, &mut scratch);
                        let keep =
                            |x: &Option<f32>| x.is_some_and(|l| 1.0 / (1.0 + (-l).exp()) >= self.caps.min_confidence);
                        let mut k = scores.iter();
                        c.content.services.retain(|_| k.next().is_some_and(keep));
                        if c.content.services.is_empty() {
                            continue;
                        }
                        c.reasons.push("model_confidence");
                    }
                    cands.push(c);
                }
            }
            if !cands.is_empty() {
                kept.push((subject, profile, prefs.unwrap_or_default(), cands));
            }
        }
        let offers: Vec<Offer<'_>> = kept
            .iter()
            .map(|(subject, profile, prefs, candidates)| Offer { subject, profile, prefs, candidates })
            .collect();
        self.offer_many(&offers, version).await
    }

    /// Deadlines and renewals coming due, for every subject in the store (a page at a time).
    pub async fn scan(&self) -> Result<ScanReport, StoreError> {
        let now = self.now();
        let version = self.rules_version();
        let mut report = ScanReport::default();
        let mut cursor = 0;
        loop {
            let (next, page) = self.store.page(cursor).await?;
            report.subjects += page.len();
            let mut due: Vec<(String, Profile, Preferences, Vec<Candidate>)> = Vec::new();
            for (subject, profile, prefs) in page {
                let prefs = prefs.unwrap_or_default();
                let locale = crate::render::Locale::parse(Some(&prefs.locale)).unwrap_or(crate::render::Locale::ZhCn);
                let cands = push::due(&self.catalogue, &profile, now, locale);
                if !cands.is_empty() {
                    report.candidates += cands.len();
                    due.push((subject, profile, prefs, cands));
                }
            }
            let offers: Vec<Offer<'_>> = due
                .iter()
                .map(|(subject, profile, prefs, candidates)| Offer { subject, profile, prefs, candidates })
                .collect();
            let o = self.offer_many(&offers, &version).await?;
            report.queued += o.queued;
            report.skipped += o.skipped.len();
            if next == 0 {
                return Ok(report);
            }
            cursor = next;
        }
    }

    /// An operator's campaign: scores `service` for every subject in the store (subjects
    /// whose audience does not fit or who did it already score nothing), keeps the `n` best and,
    /// unless `dry_run`, offers them the push (policy, caps and consent apply).
    pub async fn campaign(&self, model: &Model, version: &str, c: &CampaignIn) -> Result<CampaignReport, StoreError> {
        let service = self.catalogue.lookup(&c.service).expect("checked by the caller");
        let now = self.now();
        let mut scratch = model.scratch();
        let mut scored: Vec<(f32, String, Profile, Preferences)> = Vec::new();
        let mut report = CampaignReport { id: c.id.clone(), dry_run: c.dry_run, ..CampaignReport::default() };
        let mut cursor = 0;
        loop {
            let (next, page) = self.store.page(cursor).await?;
            for (subject, profile, prefs) in page {
                report.subjects += 1;
                let prefs = prefs.unwrap_or_default();
                if !prefs.push || !prefs.personalised {
                    continue;
                }
                let Some(score) = model.score_one(&profile, service, now, &mut scratch) else { continue };
                report.eligible += 1;
                if scored.len() < c.n || score > scored.last().map_or(f32::MIN, |x| x.0) {
                    let at = scored.partition_point(|x| x.0 >= score);
                    scored.insert(at, (score, subject, profile, prefs));
                    scored.truncate(c.n);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        report.selected = scored.len();
        report.score_min = scored.last().map(|x| x.0);
        report.score_max = scored.first().map(|x| x.0);
        if c.dry_run {
            return Ok(report);
        }
        let svc = self.catalogue.service(service);
        let cands: Vec<Candidate> = scored
            .iter()
            .map(|(_, _, _, prefs)| {
                let zh = prefs.locale != "en";
                let why = match (&c.reason, zh) {
                    (Some(r), _) => r.clone(),
                    (None, true) => format!("根据您办理过的事项，您可能需要办理「{}」。", svc.zh),
                    (None, false) => format!("From the services you used, you may need \"{}\".", svc.en),
                };
                Candidate {
                    trigger: Trigger::Campaign,
                    kind: push::Kind::Campaign,
                    content: push::Content { services: vec![service], why, ..push::Content::default() },
                    key: format!("{}|{}", c.id, svc.id),
                    window: 0,
                    critical: false,
                    expires_at: now + self.caps.ttl_days * 86_400,
                    // A repeatable service done within the last year counts as done.
                    done_after: now - 365 * 86_400,
                    reasons: vec!["campaign", "model_score"],
                    stage: svc.category,
                }
            })
            .collect();
        let offers: Vec<Offer<'_>> = scored
            .iter()
            .zip(&cands)
            .map(|((_, subject, profile, prefs), cand)| Offer {
                subject,
                profile,
                prefs,
                candidates: std::slice::from_ref(cand),
            })
            .collect();
        let o = self.offer_many(&offers, version).await?;
        report.queued = o.queued;
        for (_, s) in o.skipped {
            *report.skipped.entry(s.as_str().to_owned()).or_default() += 1;
        }
        Ok(report)
    }
}

/// `POST /admin/campaigns`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignIn {
    /// A campaign id of the operator's choosing: a subject gets at most one push per campaign.
    pub id: String,
    pub service: String,
    /// How many subjects, the most likely first.
    pub n: usize,
    #[serde(default)]
    pub dry_run: bool,
    /// The sentence explaining why (default: from the model, in the subject's locale).
    #[serde(default)]
    pub reason: Option<String>,
}

/// What a campaign did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CampaignReport {
    pub id: String,
    pub dry_run: bool,
    /// Subjects looked at.
    pub subjects: usize,
    /// Subjects the service fits (audience, not done, consent, personalisation on).
    pub eligible: usize,
    /// The best `n` of them.
    pub selected: usize,
    pub score_min: Option<f32>,
    pub score_max: Option<f32>,
    pub queued: usize,
    pub skipped: std::collections::BTreeMap<String, usize>,
}

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

    fn send(&self, job: &Job, reclaimed: bool) -> Result<(), ChannelError> {
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

    async fn send(&self, job: &Job, channels: &[String]) -> Result<(), ChannelError> {
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

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique per worker process (the consumer name in the group).
    pub consumer: String,
    /// Jobs claimed and delivered concurrently per round.
    pub batch: usize,
    /// Pending jobs of a worker idle this long are reclaimed by others.
    pub reclaim_idle_ms: u64,
    /// Attempts before a push is dead-lettered.
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// The deadline scan's period (none: no scan).
    pub scan_every: Option<Duration>,
}

impl WorkerConfig {
    /// Defaults with a unique consumer name (host, process id, start time).
    pub fn new() -> WorkerConfig {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        WorkerConfig {
            consumer: format!("{host}-{}-{}", std::process::id(), wall_ms()),
            batch: 256,
            reclaim_idle_ms: 30_000,
            max_attempts: 5,
            backoff_base_ms: 1000,
            backoff_cap_ms: 3_600_000,
            scan_every: Some(Duration::from_secs(3600)),
        }
    }

    /// Exponential backoff with jitter: half the delay fixed, half spread by a hash of the push
    /// id and attempt (deterministic, so retries of many pushes spread out).
    pub fn backoff_ms(&self, id: &str, attempt: u32) -> u64 {
        let d = self.backoff_base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30)).min(self.backoff_cap_ms);
        let h = tongban_features::io::fnv1a(format!("{id}|{attempt}").as_bytes());
        d / 2 + h % (d / 2 + 1)
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig::new()
    }
}

/// Delivers queued pushes.
#[derive(Debug)]
pub struct Worker {
    pub pusher: Arc<Pusher>,
    pub channels: Channels,
    pub cfg: WorkerConfig,
}

impl Worker {
    /// One round: due delayed jobs to the streams, claim a batch, re-check it (one read of the
    /// subjects' profiles and preferences), write the inboxes (one round trip), the outbound
    /// channels (webhook calls concurrently), record the outcomes and acknowledge. Returns how
    /// many jobs it finished.
    pub async fn round(&self) -> Result<usize, StoreError> {
        let p = &self.pusher;
        p.queue.promote(wall_ms()).await?;
        let claimed = p.queue.claim(&self.cfg.consumer, self.cfg.batch, self.cfg.reclaim_idle_ms).await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let n = claimed.len();
        let now = p.now();
        let subjects: Vec<&str> = claimed.iter().map(|c| c.job.subject.as_str()).collect();
        // Per job: the outcome so far (none: deliver) and the outbound channels allowed.
        let checked: Vec<Result<Vec<String>, Outcome>> = match p.store.profiles_and_prefs_each(&subjects).await {
            Ok(data) => claimed
                .iter()
                .zip(&data)
                .map(|(c, d)| match d {
                    Ok(d) => self.recheck(&c.job, d, now),
                    Err(e) => Err(self.failed(&c.job, ChannelError::Transient(e.to_string()))),
                })
                .collect(),
            Err(e) => {
                claimed.iter().map(|c| Err(self.failed(&c.job, ChannelError::Transient(e.to_string())))).collect()
            }
        };
        let mut outcomes: Vec<Option<Outcome>> = checked.iter().map(|r| r.as_ref().err().cloned()).collect();
        let go: Vec<usize> = (0..n).filter(|&i| outcomes[i].is_none()).collect();
        let items: Vec<(&str, &push::InboxMessage, i64)> = go
            .iter()
            .map(|&i| {
                let j = &claimed[i].job;
                (j.subject.as_str(), &j.message, (j.message.expires_at - now).max(1))
            })
            .collect();
        if let Err(e) = p.store.push_inbox_many(&items).await {
            for &i in &go {
                outcomes[i] = Some(self.failed(&claimed[i].job, ChannelError::Transient(format!("inbox: {e}"))));
            }
        }
        let outbound = futures_util::future::join_all(go.iter().filter(|&&i| outcomes[i].is_none()).map(|&i| {
            let channels = checked[i].as_ref().map_or(&[][..], Vec::as_slice);
            self.outbound(&claimed[i], channels, i)
        }))
        .await;
        for (i, o) in outbound {
            outcomes[i] = Some(o);
        }
        let done = claimed.into_iter().zip(outcomes).map(|(c, o)| (c, o.expect("every job has an outcome"))).collect();
        p.queue.finish(done).await?;
        Ok(n)
    }

    /// Delivers until `shutdown` completes; runs the periodic scan if configured. Store errors
    /// are logged and retried after a pause (the jobs stay pending and are redelivered).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut next_scan = self.cfg.scan_every.map(|_| tokio::time::Instant::now());
        loop {
            if let (Some(at), Some(every)) = (next_scan, self.cfg.scan_every) {
                if tokio::time::Instant::now() >= at {
                    match self.pusher.scan().await {
                        Ok(r) => eprintln!(
                            "scan: {} subjects, {} due, {} queued, {} skipped by policy",
                            r.subjects, r.candidates, r.queued, r.skipped
                        ),
                        Err(e) => eprintln!("warning: scan failed: {e}"),
                    }
                    next_scan = Some(tokio::time::Instant::now() + every);
                }
            }
            let pause = match self.round().await {
                Ok(0) => Duration::from_millis(20),
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    eprintln!("warning: delivery round failed: {e}");
                    Duration::from_millis(500)
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The policy again at delivery: the outbound channels the subject allows, or the outcome
    /// when the job is not to be delivered now.
    fn recheck(&self, job: &Job, data: &crate::store::ProfileAndPrefs, now: i64) -> Result<Vec<String>, Outcome> {
        let m = &job.message;
        if now >= m.expires_at {
            return Err(Outcome::Skipped(Skip::Expired));
        }
        let (profile, prefs) = data;
        let Some(profile) = profile else { return Err(Outcome::Skipped(Skip::Erased)) };
        let prefs = prefs.clone().unwrap_or_default();
        if !prefs.push {
            return Err(Outcome::Skipped(Skip::PushOff));
        }
        let ids: Vec<u32> = m.services.iter().filter_map(|s| self.pusher.catalogue.lookup(s)).collect();
        if !ids.is_empty() && ids.iter().all(|&s| push::done_since(profile, s, job.done_after)) {
            return Err(Outcome::Skipped(Skip::DoneMeanwhile));
        }
        let at = prefs.deliverable_at(now);
        if at > now {
            return Err(Outcome::Defer { due_ms: wall_ms() + (at - now) as u64 * 1000 });
        }
        Ok(prefs.channels)
    }

    /// The channels after the inbox: the log, and the webhook when the subject allowed an
    /// outbound channel. Returns the job's index with its outcome.
    async fn outbound(&self, c: &Claimed, channels: &[String], i: usize) -> (usize, Outcome) {
        let job = &c.job;
        let mut used = vec!["inbox"];
        if let Some(log) = &self.channels.log {
            if let Err(e) = log.send(job, c.reclaimed) {
                return (i, self.failed(job, e));
            }
            used.push("log");
        }
        if let (Some(hook), false) = (&self.channels.webhook, channels.is_empty()) {
            if let Err(e) = hook.send(job, channels).await {
                return (i, self.failed(job, e));
            }
            used.push("webhook");
        }
        (i, Outcome::Delivered { channels: used.join(",") })
    }

    fn failed(&self, job: &Job, e: ChannelError) -> Outcome {
        let attempts = job.attempts + 1;
        match e {
            ChannelError::Permanent(why) => Outcome::Dead { reason: why },
            ChannelError::Transient(why) if attempts >= self.cfg.max_attempts => {
                Outcome::Dead { reason: format!("{why} (after {attempts} attempts)") }
            }
            ChannelError::Transient(why) => {
                Outcome::Retry { due_ms: wall_ms() + self.cfg.backoff_ms(&job.message.id, attempts), error: why }
            }
        }
    }
}
