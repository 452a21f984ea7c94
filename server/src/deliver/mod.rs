//! Delivery: [`Worker`] claims jobs, re-checks the policy at delivery (expired, done
//! meanwhile, push switched off, erased, quiet hours) and hands the message to the channels:
//! the portal inbox (always), the log channel (development), and the webhook gateway for SMS
//! and app pushes ([`channel`], only for subjects who allowed an outbound channel). Delivery is
//! at least once: receivers de-duplicate by push id (the inbox does).

pub mod channel;
pub mod health;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use self::channel::{sign, ChannelError, Channels, LogChannel, Webhook};
pub use crate::app::pusher::Pusher;
use crate::clock::wall_ms;
use crate::push::{self, Job, Outbound, Skip};
use crate::queue::{Claimed, Outcome};
use crate::store::{InboxItem, StoreError};

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

impl WorkerConfig {
    /// Checks ranges; the message names the setting.
    pub fn check(&self) -> Result<(), String> {
        if self.consumer.is_empty() {
            return Err("worker: the consumer name must not be empty".into());
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err(format!("worker batch: expected 1 to 10000, got {}", self.batch));
        }
        if self.max_attempts == 0 {
            return Err("worker max_attempts: expected at least 1".into());
        }
        if self.backoff_base_ms == 0 || self.backoff_cap_ms < self.backoff_base_ms {
            return Err(format!(
                "worker backoff: base must be at least 1 ms and the cap at least the base (got {} and {})",
                self.backoff_base_ms, self.backoff_cap_ms
            ));
        }
        if self.scan_every.is_some_and(|d| d.is_zero()) {
            return Err("worker scan period: expected more than 0 (or no scan)".into());
        }
        Ok(())
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
        let subjects: Vec<&tongban_features::domain::SubjectId> = claimed.iter().map(|c| &c.job.subject).collect();
        // Per job: the outcome so far (none: deliver) and the outbound channels allowed.
        let checked: Vec<Result<Vec<Outbound>, Outcome>> = match p.store.profiles_and_prefs_each(&subjects).await {
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
        // A job whose every worker stopped (each reclaim counts as an attempt) is not tried
        // again and again until it expires: it goes to the dead letters.
        for (i, c) in claimed.iter().enumerate() {
            if c.reclaimed && c.job.attempts >= self.cfg.max_attempts {
                outcomes[i] = Some(Outcome::Dead {
                    reason: format!("reclaimed from stopped workers ({} attempts)", c.job.attempts),
                });
            }
        }
        let go: Vec<usize> = (0..n).filter(|&i| outcomes[i].is_none()).collect();
        let items: Vec<InboxItem<'_>> = go
            .iter()
            .map(|&i| {
                let j = &claimed[i].job;
                InboxItem { subject: &j.subject, message: &j.message, ttl_secs: (j.message.expires_at - now).max(1) }
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
    /// are logged and retried after a pause (the jobs stay pending and are redelivered). A round
    /// under way when `shutdown` completes is finished (delivered and acknowledged) first, and
    /// no round starts after it.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut next_scan = self.cfg.scan_every.map(|_| tokio::time::Instant::now());
        loop {
            if let (Some(at), Some(every)) = (next_scan, self.cfg.scan_every) {
                // One scanner among many workers: the lease outlives a period, so its holder
                // renews it each time and a dead holder's passes to another worker within two
                // periods. A scan longer than that may overlap another's: harmless (the
                // reservations de-duplicate pushes, and the outbox gives each entry to one
                // recovery pass per grace), only wasted work.
                if tokio::time::Instant::now() >= at {
                    let ttl = u64::try_from(every.as_millis().saturating_mul(2)).unwrap_or(u64::MAX);
                    match self.pusher.store.lease("scan", &self.cfg.consumer, ttl).await {
                        Ok(true) => match self.pusher.scan().await {
                            Ok(r) => tracing::info!(
                                subjects = r.subjects,
                                due = r.candidates,
                                queued = r.queued,
                                skipped = r.skipped,
                                "scan done"
                            ),
                            Err(e) => tracing::warn!(error = %e, "scan failed"),
                        },
                        Ok(false) => tracing::debug!("another worker holds the scan lease"),
                        Err(e) => tracing::warn!(error = %e, "scan lease"),
                    }
                    next_scan = Some(tokio::time::Instant::now() + every);
                }
            }
            let pause = match self.round().await {
                Ok(0) => Duration::from_millis(20),
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery round failed");
                    Duration::from_millis(500)
                }
            };
            // Biased: after a full round the pause is zero, and an unbiased select would pick
            // between a pending stop and another round at random, claiming more after the stop.
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The policy again at delivery: the outbound channels the subject allows, or the outcome
    /// when the job is not to be delivered now.
    fn recheck(&self, job: &Job, data: &crate::store::ProfileAndPrefs, now: i64) -> Result<Vec<Outbound>, Outcome> {
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
    async fn outbound(&self, c: &Claimed, channels: &[Outbound], i: usize) -> (usize, Outcome) {
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
