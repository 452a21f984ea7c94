//! The delivery queue between the policy and the channels. One interface ([`Backend`]), one
//! file per backend: Redis Streams ([`redis`]) and the same semantics embedded, written once
//! ([`ledger`]) and kept in a database file of the data directory ([`disk`], the durable default
//! of `serve` and `demo`) or in process memory ([`memory`], volatile: tests, benchmarks). [`Queue`] only delegates; the contract suite
//! `server/tests/queue_contract.rs` runs every case on every backend.
//!
//! Semantics every backend keeps: a claimed job stays pending until its outcome is written;
//! outcomes are written before the acknowledgement, so a crash in between redelivers a job,
//! never loses one; a job pending at a worker idle longer than the visibility timeout is
//! reclaimed by another (delivery is at least once; receivers de-duplicate by push id); due
//! times order the delayed jobs (quiet hours, retries with backoff); dead letters keep the
//! reason, and an operator can take one back ([`Backend::redeliver`]). Each transition writes the push's audit record ([`PushRecord`], no subject in it)
//! and counts it by status and trigger.

pub mod disk;
pub(crate) mod ledger;
pub mod memory;
pub mod redis;

use std::future::Future;
use tongban_features::domain::SubjectId;

use serde::{Deserialize, Serialize};

use crate::push::{Job, Skip, Trigger};
use crate::store::StoreError;

pub use self::disk::DiskQueue;
pub use self::memory::MemQueue;
pub use self::redis::RedisQueue;

/// The consumer group of the delivery workers.
pub const GROUP: &str = "tongban";
/// Dead letters kept per partition (the oldest go first).
pub const DEAD_KEEP: usize = 100_000;
/// How long audit records are kept.
pub const RECORD_TTL_SECS: i64 = 90 * 86_400;

/// Where a push stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In the ready stream.
    Queued,
    /// Waiting for the end of quiet hours.
    Deferred,
    Delivered,
    /// Not sent, with the reason (policy before enqueue or at delivery).
    Skipped,
    /// A channel failed; waiting for the next attempt.
    Retrying,
    /// Given up: a permanent failure or too many attempts.
    Dead,
}

impl Status {
    pub const ALL: [Status; 6] =
        [Status::Queued, Status::Deferred, Status::Delivered, Status::Skipped, Status::Retrying, Status::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Deferred => "deferred",
            Status::Delivered => "delivered",
            Status::Skipped => "skipped",
            Status::Retrying => "retrying",
            Status::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The audit record of one push, for operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushRecord {
    pub id: String,
    #[schema(schema_with = crate::openapi::trigger)]
    pub trigger: Trigger,
    pub bundle: Option<String>,
    pub services: Vec<String>,
    pub model: String,
    pub reasons: Vec<String>,
    pub decisions: Vec<String>,
    pub critical: bool,
    pub created_at: i64,
    pub deliver_at: i64,
    pub expires_at: i64,
    pub attempts: u32,
    #[schema(schema_with = crate::openapi::status)]
    pub status: Status,
    /// The skip reason, the last error or the channels it was delivered to.
    pub detail: Option<String>,
    /// The `x-request-id` of the API request that made it (none for scans and campaigns run
    /// by the worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl PushRecord {
    pub fn of(job: &Job, status: Status, detail: Option<String>) -> PushRecord {
        let m = &job.message;
        PushRecord {
            id: m.id.clone(),
            trigger: m.trigger,
            bundle: m.bundle.clone(),
            services: m.services.clone(),
            model: m.model.clone(),
            reasons: job.reasons.clone(),
            decisions: job.decisions.clone(),
            critical: job.critical,
            created_at: m.created_at,
            deliver_at: m.deliver_at,
            expires_at: m.expires_at,
            attempts: job.attempts,
            status,
            detail,
            request_id: job.request_id.clone(),
        }
    }
}

/// A job handed to a worker; it must be finished with an [`Outcome`].
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Where the backend keeps it (partition and entry id).
    pub(crate) partition: usize,
    pub(crate) entry: String,
    pub job: Job,
    /// Whether it was reclaimed from a worker that stopped answering (it may have been
    /// delivered already).
    pub reclaimed: bool,
}

/// What became of a claimed job.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered {
        channels: String,
    },
    Skipped(Skip),
    /// A channel failed; try again at `due_ms`.
    Retry {
        due_ms: u64,
        error: String,
    },
    /// Not yet (quiet hours): back to the delayed set, attempts unchanged.
    Defer {
        due_ms: u64,
    },
    /// Given up after an attempt.
    Dead {
        reason: String,
    },
}

/// Queue sizes, summed over partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Depth {
    /// In the ready stream, not yet read by a worker.
    pub ready: u64,
    /// Read by a worker, not yet acknowledged.
    pub pending: u64,
    /// Waiting for their time (quiet hours, retries).
    pub delayed: u64,
    /// Given up on.
    pub dead: u64,
}

impl Depth {
    /// Nothing left to deliver.
    pub fn idle(&self) -> bool {
        self.ready == 0 && self.pending == 0 && self.delayed == 0
    }
}

/// A job to enqueue and when it is due (Unix milliseconds; at or before now: ready at once).
#[derive(Debug, Clone)]
pub struct Enqueue {
    pub job: Job,
    pub due_ms: u64,
    pub status: Status,
}

/// A transition count: (status, trigger, how many).
pub type Count = (Status, Trigger, u64);

/// Queue scheduling runs on wall time, even when the policy clock is pinned.
pub use crate::clock::wall_ms;

/// What a queue backend must do.
pub trait Backend: Send + Sync {
    /// Enqueues jobs (ready, or delayed to their due time) and writes their records.
    fn enqueue(&self, items: &[Enqueue]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records pushes the policy skipped before enqueue, never over an existing record (a
    /// re-proposal of a push already sent keeps that push's record; duplicates are only
    /// counted).
    fn skipped(&self, skipped: &[(Job, Skip)]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves delayed jobs due at `now_ms` to the ready streams. Returns how many moved.
    fn promote(&self, now_ms: u64) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Claims about `count` jobs for `consumer`: first those pending longer than
    /// `reclaim_idle_ms` at another (dead) worker, then new ones. An entry that is not a
    /// readable job goes to the dead letters at once.
    fn claim(
        &self,
        consumer: &str,
        count: usize,
        reclaim_idle_ms: u64,
    ) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send;

    /// Writes the outcomes of claimed jobs, then acknowledges them.
    fn finish(&self, done: Vec<(Claimed, Outcome)>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The audit record of a push.
    fn record(&self, id: &str) -> impl Future<Output = Result<Option<PushRecord>, StoreError>> + Send;

    /// Transitions counted by status and trigger, since the queue began.
    fn counts(&self) -> impl Future<Output = Result<Vec<Count>, StoreError>> + Send;

    fn depth(&self) -> impl Future<Output = Result<Depth, StoreError>> + Send;

    /// The `n` most recent dead letters (the job, if readable, and the reason), newest first.
    fn dead_letters(&self, n: usize) -> impl Future<Output = Result<Vec<(Option<Job>, String)>, StoreError>> + Send;

    /// Takes the dead letter of push `id` back into the ready queue with its attempts reset to
    /// 0, and writes its record as [`Status::Queued`] with a detail saying an operator
    /// redelivered it at `now_ms`; the dead letter is removed (every copy of it, should a
    /// reclaimed job have died twice). Returns false when there is no readable dead letter
    /// with that id (an unknown id, one redelivered already, or an entry that was never a
    /// readable job), so a second call redelivers nothing.
    fn redeliver(&self, id: &str, now_ms: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Erasure: removes the subject's dead letters (they hold its id and rendered messages);
    /// returns how many. Jobs still queued are skipped as `erased` at delivery; records name
    /// no subject.
    fn forget_subject(&self, subject: &SubjectId) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

/// The queue: one of the backends. Only delegates.
#[derive(Debug)]
pub enum Queue {
    Disk(DiskQueue),
    Memory(MemQueue),
    Redis(RedisQueue),
}

macro_rules! delegate {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Queue::Disk($b) => $call,
            Queue::Memory($b) => $call,
            Queue::Redis($b) => $call,
        }
    };
}

impl Queue {
    pub fn memory() -> Queue {
        Queue::Memory(MemQueue::default())
    }

    /// A queue on the Redis store's connection, with `partitions` streams; creates the
    /// consumer groups if missing.
    pub async fn redis(
        conn: ::redis::aio::ConnectionManager,
        prefix: &str,
        partitions: usize,
    ) -> Result<Queue, StoreError> {
        Ok(Queue::Redis(RedisQueue::new(conn, prefix, partitions).await?))
    }

    /// The durable embedded queue in `dir` (created if missing); see [`DiskQueue::open`].
    pub fn disk(dir: &std::path::Path) -> Result<Queue, StoreError> {
        Ok(Queue::Disk(DiskQueue::open(dir)?))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Queue::Disk(_) => "disk",
            Queue::Memory(_) => "memory",
            Queue::Redis(_) => "redis",
        }
    }

    pub async fn enqueue(&self, items: &[Enqueue]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        delegate!(self, b => b.enqueue(items).await)
    }

    pub async fn skipped(&self, skipped: &[(Job, Skip)]) -> Result<(), StoreError> {
        if skipped.is_empty() {
            return Ok(());
        }
        delegate!(self, b => b.skipped(skipped).await)
    }

    pub async fn promote(&self, now_ms: u64) -> Result<usize, StoreError> {
        delegate!(self, b => b.promote(now_ms).await)
    }

    pub async fn claim(&self, consumer: &str, count: usize, reclaim_idle_ms: u64) -> Result<Vec<Claimed>, StoreError> {
        delegate!(self, b => b.claim(consumer, count, reclaim_idle_ms).await)
    }

    pub async fn finish(&self, done: Vec<(Claimed, Outcome)>) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        delegate!(self, b => b.finish(done).await)
    }

    pub async fn record(&self, id: &str) -> Result<Option<PushRecord>, StoreError> {
        delegate!(self, b => b.record(id).await)
    }

    pub async fn counts(&self) -> Result<Vec<Count>, StoreError> {
        delegate!(self, b => b.counts().await)
    }

    pub async fn depth(&self) -> Result<Depth, StoreError> {
        delegate!(self, b => b.depth().await)
    }

    pub async fn dead_letters(&self, n: usize) -> Result<Vec<(Option<Job>, String)>, StoreError> {
        delegate!(self, b => b.dead_letters(n).await)
    }

    /// See [`Backend::redeliver`].
    pub async fn redeliver(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        delegate!(self, b => b.redeliver(id, now_ms).await)
    }

    pub async fn forget_subject(&self, subject: &SubjectId) -> Result<usize, StoreError> {
        delegate!(self, b => b.forget_subject(subject).await)
    }
}

/// The record an outcome leaves, and the job to schedule again (due time, job), if any.
/// Shared by every backend.
pub(crate) fn settle(job: &Job, outcome: &Outcome) -> (PushRecord, Option<(u64, Job)>) {
    match outcome {
        Outcome::Delivered { channels } => (PushRecord::of(job, Status::Delivered, Some(channels.clone())), None),
        Outcome::Skipped(why) => (PushRecord::of(job, Status::Skipped, Some(why.as_str().to_owned())), None),
        Outcome::Retry { due_ms, error } => {
            let mut next = job.clone();
            next.attempts += 1;
            next.last_error = Some(error.clone());
            (PushRecord::of(&next, Status::Retrying, Some(error.clone())), Some((*due_ms, next)))
        }
        Outcome::Defer { due_ms } => (PushRecord::of(job, Status::Deferred, None), Some((*due_ms, job.clone()))),
        Outcome::Dead { reason } => {
            let mut last = job.clone();
            last.attempts += 1;
            (PushRecord::of(&last, Status::Dead, Some(reason.clone())), None)
        }
    }
}

/// The job a redelivered dead letter becomes (a fresh start: attempts 0; the last error is kept
/// as history) and the record it writes. Shared by every backend.
pub(crate) fn redelivered(dead: &Job, now_ms: u64) -> (Job, PushRecord) {
    let mut job = dead.clone();
    job.attempts = 0;
    let rec = PushRecord::of(&job, Status::Queued, Some(format!("redelivered by an operator at {now_ms} ms")));
    (job, rec)
}
