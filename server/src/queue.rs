//! The delivery queue between the policy and the channels: Redis Streams, or the same
//! semantics in process memory for the embedded default and `demo`.
//!
//! Redis layout, `P` partitions (a fixed number, chosen by a hash of the subject) so that the
//! queue spreads over the nodes of a Redis Cluster; the keys of one partition share a hash tag:
//! - `tb:{q:N}:ready`: a stream read by the consumer group `tongban`; every worker has a
//!   unique consumer name. An entry is acknowledged (and deleted) only after its outcome is
//!   written: delivered, skipped, rescheduled or dead-lettered. A worker that dies leaves its
//!   entries pending; another worker reclaims those idle longer than the visibility timeout
//!   with `XAUTOCLAIM`. So delivery is at least once; receivers de-duplicate by push id.
//! - `tb:{q:N}:delayed`: a sorted set of jobs by due time in milliseconds: pushes deferred by
//!   quiet hours and retries (exponential backoff with jitter). A Lua script moves due jobs to
//!   the stream atomically.
//! - `tb:{q:N}:dead`: the dead-letter stream (jobs with the reason), capped at `DEAD_KEEP`.
//!
//! Outcomes are written before the acknowledgement, in one pipeline: a crash between the two
//! redelivers a job, never loses one.
//!
//! Per-push audit records (`tb:{p:<id>}:rec`, JSON, kept `RECORD_TTL_SECS`) and counters by
//! status and trigger (`tb:stats:push`, a hash) are written with every transition. Records
//! name no subject: the push id is a hash.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use serde::{Deserialize, Serialize};

use crate::push::Job;
use crate::store::StoreError;

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
}

/// The audit record of one push, for operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRecord {
    pub id: String,
    pub trigger: String,
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
    pub status: Status,
    /// The skip reason, the last error or the channels it was delivered to.
    pub detail: Option<String>,
}

impl PushRecord {
    pub fn of(job: &Job, status: Status, detail: Option<String>) -> PushRecord {
        let m = &job.message;
        PushRecord {
            id: m.id.clone(),
            trigger: m.trigger.clone(),
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
        }
    }
}

/// A job handed to a worker; it must be finished with an [`Outcome`].
#[derive(Debug, Clone)]
pub struct Claimed {
    partition: usize,
    entry: String,
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
    Skipped(crate::push::Skip),
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Depth {
    /// In the ready stream, not yet read by a worker.
    pub ready: u64,
    /// Read by a worker, not yet acknowledged.
    pub pending: u64,
    pub delayed: u64,
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

/// Wall-clock milliseconds (queue scheduling runs on real time, even when the policy clock is
/// pinned).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Default)]
struct Mem {
    seq: u64,
    ready: VecDeque<(u64, Job)>,
    pending: BTreeMap<u64, (String, Instant, Job)>,
    delayed: BTreeMap<(u64, u64), Job>,
    dead: VecDeque<(Job, String)>,
    records: HashMap<String, PushRecord>,
    record_order: VecDeque<String>,
    counts: BTreeMap<(Status, String), u64>,
}

/// Records kept by the memory queue (the oldest go first).
const MEM_RECORDS: usize = 200_000;

impl Mem {
    fn record(&mut self, r: PushRecord) {
        *self.counts.entry((r.status, r.trigger.clone())).or_default() += 1;
        if self.records.insert(r.id.clone(), r.clone()).is_none() {
            self.record_order.push_back(r.id);
            if self.record_order.len() > MEM_RECORDS {
                if let Some(old) = self.record_order.pop_front() {
                    self.records.remove(&old);
                }
            }
        }
    }
}

/// The Redis queue.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    prefix: String,
    partitions: usize,
    promote: redis::Script,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue").field("prefix", &self.prefix).field("partitions", &self.partitions).finish()
    }
}

/// KEYS: delayed, ready. ARGV: now (ms), at most this many. Moves due jobs to the stream.
const PROMOTE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, j in ipairs(due) do redis.call('XADD', KEYS[2], '*', 'job', j) end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return #due
";

impl RedisQueue {
    fn keys(&self, p: usize) -> [String; 3] {
        let tag = format!("{}tb:{{q:{p}}}", self.prefix);
        [format!("{tag}:ready"), format!("{tag}:delayed"), format!("{tag}:dead")]
    }
    fn record_key(&self, id: &str) -> String {
        format!("{}tb:{{p:{id}}}:rec", self.prefix)
    }
    fn stats_key(&self) -> String {
        format!("{}tb:stats:push", self.prefix)
    }
}

/// The queue: memory or Redis, one interface.
#[derive(Debug)]
pub enum Queue {
    Memory(Mutex<MemQueue>),
    Redis(RedisQueue),
}

/// The in-process queue (lost with the process: for the embedded default and `demo`).
#[derive(Debug, Default)]
pub struct MemQueue(Mem);

fn parse_job(raw: &str) -> Result<Job, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Unavailable(format!("unreadable queued job: {e}")))
}

fn entry_job(e: &StreamId) -> Result<Job, StoreError> {
    let raw: String =
        e.get("job").ok_or_else(|| StoreError::Unavailable(format!("queue entry {} has no job field", e.id)))?;
    parse_job(&raw)
}

fn partition_of(subject: &str, partitions: usize) -> usize {
    (tongban_features::io::fnv1a(subject.as_bytes()) % partitions.max(1) as u64) as usize
}

impl Queue {
    pub fn memory() -> Queue {
        Queue::Memory(Mutex::new(MemQueue::default()))
    }

    /// A queue on the Redis store's connection, with `partitions` streams; creates the consumer
    /// groups if missing.
    pub async fn redis(conn: ConnectionManager, prefix: &str, partitions: usize) -> Result<Queue, StoreError> {
        let q = RedisQueue {
            conn,
            prefix: prefix.to_owned(),
            partitions: partitions.max(1),
            promote: redis::Script::new(PROMOTE),
        };
        let mut c = q.conn.clone();
        let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(PROMOTE).query_async(&mut c).await?;
        q.ensure_groups().await?;
        Ok(Queue::Redis(q))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Queue::Memory(_) => "memory",
            Queue::Redis(_) => "redis",
        }
    }

    /// Enqueues jobs (ready or delayed by their due time) and writes their records.
    pub async fn enqueue(&self, items: &[Enqueue]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let now = wall_ms();
        match self {
            Queue::Memory(m) => {
                let mut q = m.lock().expect("no panics while holding the lock");
                for it in items {
                    q.0.seq += 1;
                    let seq = q.0.seq;
                    if it.due_ms > now {
                        q.0.delayed.insert((it.due_ms, seq), it.job.clone());
                    } else {
                        q.0.ready.push_back((seq, it.job.clone()));
                    }
                    q.0.record(PushRecord::of(&it.job, it.status, None));
                }
                Ok(())
            }
            Queue::Redis(r) => {
                let mut pipe = redis::pipe();
                for it in items {
                    let [ready, delayed, _] = r.keys(partition_of(&it.job.subject, r.partitions));
                    let json = serde_json::to_string(&it.job).expect("jobs serialise");
                    if it.due_ms > now {
                        pipe.cmd("ZADD").arg(delayed).arg(it.due_ms).arg(json).ignore();
                    } else {
                        pipe.cmd("XADD").arg(ready).arg("*").arg("job").arg(json).ignore();
                    }
                    r.write_record(&mut pipe, &PushRecord::of(&it.job, it.status, None));
                }
                let mut c = r.conn.clone();
                let _: () = pipe.query_async(&mut c).await?;
                Ok(())
            }
        }
    }

    /// Records pushes the policy skipped before enqueue (never over an existing record: a
    /// re-proposal of a push already sent keeps that push's record; duplicates are only
    /// counted).
    pub async fn skipped(&self, skipped: &[(Job, crate::push::Skip)]) -> Result<(), StoreError> {
        if skipped.is_empty() {
            return Ok(());
        }
        let records = skipped
            .iter()
            .map(|(job, why)| (*why, PushRecord::of(job, Status::Skipped, Some(why.as_str().to_owned()))));
        match self {
            Queue::Memory(m) => {
                let mut q = m.lock().expect("no panics while holding the lock");
                for (why, rec) in records {
                    if why == crate::push::Skip::Duplicate || q.0.records.contains_key(&rec.id) {
                        *q.0.counts.entry((Status::Skipped, rec.trigger)).or_default() += 1;
                    } else {
                        q.0.record(rec);
                    }
                }
                Ok(())
            }
            Queue::Redis(r) => {
                let mut pipe = redis::pipe();
                for (why, rec) in records {
                    if why == crate::push::Skip::Duplicate {
                        pipe.cmd("HINCRBY").arg(r.stats_key()).arg(format!("skipped|{}", rec.trigger)).arg(1).ignore();
                    } else {
                        r.write_record_if(&mut pipe, &rec, true);
                    }
                }
                let mut c = r.conn.clone();
                let _: () = pipe.query_async(&mut c).await?;
                Ok(())
            }
        }
    }

    /// Moves due delayed jobs to the ready streams. Returns how many moved.
    pub async fn promote(&self, now_ms: u64) -> Result<usize, StoreError> {
        match self {
            Queue::Memory(m) => {
                let mut q = m.lock().expect("no panics while holding the lock");
                let later = q.0.delayed.split_off(&(now_ms + 1, 0));
                let due = std::mem::replace(&mut q.0.delayed, later);
                let n = due.len();
                for (_, job) in due {
                    q.0.seq += 1;
                    let seq = q.0.seq;
                    q.0.ready.push_back((seq, job));
                }
                Ok(n)
            }
            Queue::Redis(r) => {
                let mut pipe = redis::pipe();
                for p in 0..r.partitions {
                    let [ready, delayed, _] = r.keys(p);
                    pipe.cmd("EVALSHA").arg(r.promote.get_hash()).arg(2).arg(delayed).arg(ready).arg(now_ms).arg(1000);
                }
                let mut c = r.conn.clone();
                let moved: Vec<usize> = match pipe.query_async(&mut c).await {
                    Ok(v) => v,
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(PROMOTE).query_async(&mut c).await?;
                        pipe.query_async(&mut c).await?
                    }
                    Err(e) => return Err(e.into()),
                };
                Ok(moved.into_iter().sum())
            }
        }
    }

    /// Claims about `count` jobs for `consumer`: first those pending longer than
    /// `reclaim_idle_ms` at another (dead) worker, then new ones (on Redis, up to
    /// `count / partitions` rounded up from each partition, of each kind). An entry that is not
    /// a readable job goes to the dead letters at once.
    pub async fn claim(&self, consumer: &str, count: usize, reclaim_idle_ms: u64) -> Result<Vec<Claimed>, StoreError> {
        let mut out = Vec::new();
        match self {
            Queue::Memory(m) => {
                let mut q = m.lock().expect("no panics while holding the lock");
                let now = Instant::now();
                let stale: Vec<u64> =
                    q.0.pending
                        .iter()
                        .filter(|(_, (_, since, _))| now.duration_since(*since).as_millis() as u64 >= reclaim_idle_ms)
                        .map(|(&k, _)| k)
                        .take(count)
                        .collect();
                for k in stale {
                    let e = q.0.pending.get_mut(&k).expect("listed above");
                    e.0 = consumer.to_owned();
                    e.1 = now;
                    out.push(Claimed { partition: 0, entry: k.to_string(), job: e.2.clone(), reclaimed: true });
                }
                while out.len() < count {
                    let Some((k, job)) = q.0.ready.pop_front() else { break };
                    q.0.pending.insert(k, (consumer.to_owned(), now, job.clone()));
                    out.push(Claimed { partition: 0, entry: k.to_string(), job, reclaimed: false });
                }
                Ok(out)
            }
            Queue::Redis(r) => match r.claim(consumer, count, reclaim_idle_ms).await {
                Err(StoreError::Unavailable(e)) if e.contains("NOGROUP") => {
                    r.ensure_groups().await?;
                    Ok(Vec::new())
                }
                other => other,
            },
        }
    }

    /// Writes the outcomes of claimed jobs, then acknowledges them (in that order, so that a
    /// crash in between redelivers, never loses).
    pub async fn finish(&self, done: Vec<(Claimed, Outcome)>) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        match self {
            Queue::Memory(m) => {
                let mut q = m.lock().expect("no panics while holding the lock");
                for (c, outcome) in done {
                    let Ok(k) = c.entry.parse::<u64>() else { continue };
                    q.0.pending.remove(&k);
                    let (rec, later) = settle(&c.job, &outcome);
                    if let Some((due, job)) = later {
                        q.0.seq += 1;
                        let seq = q.0.seq;
                        q.0.delayed.insert((due, seq), job);
                    }
                    if let Outcome::Dead { reason } = &outcome {
                        q.0.dead.push_back((c.job.clone(), reason.clone()));
                        if q.0.dead.len() > DEAD_KEEP {
                            q.0.dead.pop_front();
                        }
                    }
                    q.0.record(rec);
                }
                Ok(())
            }
            Queue::Redis(r) => {
                let mut pipe = redis::pipe();
                let mut acks: BTreeMap<usize, Vec<String>> = BTreeMap::new();
                for (c, outcome) in &done {
                    let [_, delayed, dead] = r.keys(c.partition);
                    let (rec, later) = settle(&c.job, outcome);
                    if let Some((due, job)) = later {
                        let json = serde_json::to_string(&job).expect("jobs serialise");
                        pipe.cmd("ZADD").arg(delayed).arg(due).arg(json).ignore();
                    }
                    if let Outcome::Dead { reason } = outcome {
                        let json = serde_json::to_string(&c.job).expect("jobs serialise");
                        pipe.cmd("XADD")
                            .arg(dead)
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(DEAD_KEEP)
                            .arg("*")
                            .arg("job")
                            .arg(json)
                            .arg("reason")
                            .arg(reason)
                            .ignore();
                    }
                    r.write_record(&mut pipe, &rec);
                    acks.entry(c.partition).or_default().push(c.entry.clone());
                }
                for (p, ids) in acks {
                    let [ready, ..] = r.keys(p);
                    pipe.cmd("XACK").arg(&ready).arg(GROUP).arg(&ids).ignore();
                    pipe.cmd("XDEL").arg(&ready).arg(&ids).ignore();
                }
                let mut c = r.conn.clone();
                let _: () = pipe.query_async(&mut c).await?;
                Ok(())
            }
        }
    }

    /// The audit record of a push.
    pub async fn record(&self, id: &str) -> Result<Option<PushRecord>, StoreError> {
        match self {
            Queue::Memory(m) => Ok(m.lock().expect("no panics while holding the lock").0.records.get(id).cloned()),
            Queue::Redis(r) => {
                let mut c = r.conn.clone();
                let raw: Option<String> = redis::cmd("GET").arg(r.record_key(id)).query_async(&mut c).await?;
                raw.map(|x| {
                    serde_json::from_str(&x)
                        .map_err(|e| StoreError::Unavailable(format!("unreadable push record: {e}")))
                })
                .transpose()
            }
        }
    }

    /// Transitions counted by (status, trigger), since the queue began.
    pub async fn counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        match self {
            Queue::Memory(m) => Ok(m
                .lock()
                .expect("no panics while holding the lock")
                .0
                .counts
                .iter()
                .map(|((s, t), n)| (s.as_str().to_owned(), t.clone(), *n))
                .collect()),
            Queue::Redis(r) => {
                let mut c = r.conn.clone();
                let all: BTreeMap<String, u64> = redis::cmd("HGETALL").arg(r.stats_key()).query_async(&mut c).await?;
                Ok(all
                    .into_iter()
                    .filter_map(|(k, n)| k.split_once('|').map(|(s, t)| (s.to_owned(), t.to_owned(), n)))
                    .collect())
            }
        }
    }

    /// Queue sizes.
    pub async fn depth(&self) -> Result<Depth, StoreError> {
        match self {
            Queue::Memory(m) => {
                let q = m.lock().expect("no panics while holding the lock");
                Ok(Depth {
                    ready: q.0.ready.len() as u64,
                    pending: q.0.pending.len() as u64,
                    delayed: q.0.delayed.len() as u64,
                    dead: q.0.dead.len() as u64,
                })
            }
            Queue::Redis(r) => {
                let mut pipe = redis::pipe();
                for p in 0..r.partitions {
                    let [ready, delayed, dead] = r.keys(p);
                    pipe.cmd("XLEN").arg(&ready).cmd("XPENDING").arg(&ready).arg(GROUP);
                    pipe.cmd("ZCARD").arg(delayed).cmd("XLEN").arg(dead);
                }
                let mut c = r.conn.clone();
                let values: Vec<redis::Value> = pipe.query_async(&mut c).await?;
                let mut d = Depth::default();
                let int = |v: &redis::Value| -> u64 { redis::FromRedisValue::from_redis_value(v.clone()).unwrap_or(0) };
                for chunk in values.chunks(4) {
                    let pending = match &chunk[1] {
                        redis::Value::Array(items) => items.first().map_or(0, int),
                        _ => 0,
                    };
                    // XLEN counts pending entries too (they stay in the stream until acknowledged).
                    d.ready += int(&chunk[0]).saturating_sub(pending);
                    d.pending += pending;
                    d.delayed += int(&chunk[2]);
                    d.dead += int(&chunk[3]);
                }
                Ok(d)
            }
        }
    }

    /// The most recent dead letters (job, if readable, and reason), newest first.
    pub async fn dead_letters(&self, n: usize) -> Result<Vec<(Option<Job>, String)>, StoreError> {
        match self {
            Queue::Memory(m) => {
                let q = m.lock().expect("no panics while holding the lock");
                Ok(q.0.dead.iter().rev().take(n).map(|(j, r)| (Some(j.clone()), r.clone())).collect())
            }
            Queue::Redis(r) => {
                let mut c = r.conn.clone();
                let mut out = Vec::new();
                for p in 0..r.partitions {
                    let [_, _, dead] = r.keys(p);
                    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                        .arg(&dead)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(n)
                        .query_async(&mut c)
                        .await?;
                    for e in &reply.ids {
                        let reason: String = e.get("reason").unwrap_or_default();
                        out.push((e.id.clone(), entry_job(e).ok(), reason));
                    }
                }
                // Stream ids are `<ms>-<seq>`: compare them as numbers.
                let key = |id: &str| {
                    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
                    (ms.parse::<u64>().unwrap_or(0), seq.parse::<u64>().unwrap_or(0))
                };
                out.sort_by_key(|x| std::cmp::Reverse(key(&x.0)));
                Ok(out.into_iter().take(n).map(|(_, j, r)| (j, r)).collect())
            }
        }
    }
}

impl RedisQueue {
    async fn claim(&self, consumer: &str, count: usize, reclaim_idle_ms: u64) -> Result<Vec<Claimed>, StoreError> {
        // One pipeline reclaims stale entries of every partition, one reads new ones; each
        // partition gives up to `count / partitions`, rounded up.
        let each = count.div_ceil(self.partitions).max(1);
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        for p in 0..self.partitions {
            let [ready, ..] = self.keys(p);
            pipe.cmd("XAUTOCLAIM").arg(ready).arg(GROUP).arg(consumer).arg(reclaim_idle_ms).arg("0-0");
            pipe.arg("COUNT").arg(each);
        }
        let reclaimed: Vec<StreamAutoClaimReply> = pipe.query_async(&mut c).await?;
        let mut pipe = redis::pipe();
        for p in 0..self.partitions {
            let [ready, ..] = self.keys(p);
            pipe.cmd("XREADGROUP").arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(each);
            pipe.arg("STREAMS").arg(ready).arg(">");
        }
        let fresh: Vec<Option<StreamReadReply>> = pipe.query_async(&mut c).await?;
        let mut out = Vec::new();
        let mut poison = Vec::new();
        let entries =
            reclaimed.iter().enumerate().flat_map(|(p, r)| r.claimed.iter().map(move |e| (p, e, true))).chain(
                fresh.iter().enumerate().flat_map(|(p, r)| {
                    r.iter().flat_map(|r| r.keys.iter()).flat_map(move |k| k.ids.iter().map(move |e| (p, e, false)))
                }),
            );
        for (p, e, reclaimed) in entries {
            match entry_job(e) {
                Ok(job) => out.push(Claimed { partition: p, entry: e.id.clone(), job, reclaimed }),
                Err(why) => poison.push((p, e, why.to_string())),
            }
        }
        self.bury(&poison).await?;
        Ok(out)
    }

    /// Creates the consumer group of every partition (and its stream) where missing: at start,
    /// and again when Redis lost them (a restart without persistence).
    async fn ensure_groups(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        for p in 0..self.partitions {
            let [ready, ..] = self.keys(p);
            let made: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&ready)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut c)
                .await;
            match made {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Moves entries that cannot be read as jobs to the dead-letter stream, with the reason,
    /// and acknowledges them: one bad entry never blocks the others.
    async fn bury(&self, poison: &[(usize, &StreamId, String)]) -> Result<(), StoreError> {
        if poison.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (p, e, why) in poison {
            let [ready, _, dead] = self.keys(*p);
            let raw: String = e.get("job").unwrap_or_default();
            pipe.cmd("XADD").arg(dead).arg("MAXLEN").arg("~").arg(DEAD_KEEP).arg("*");
            pipe.arg("job").arg(raw).arg("reason").arg(why).ignore();
            pipe.cmd("XACK").arg(&ready).arg(GROUP).arg(&e.id).ignore();
            pipe.cmd("XDEL").arg(&ready).arg(&e.id).ignore();
        }
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    fn write_record(&self, pipe: &mut redis::Pipeline, rec: &PushRecord) {
        self.write_record_if(pipe, rec, false);
    }

    /// `only_new`: keep an existing record (a skip never overwrites the record of the push it
    /// duplicates).
    fn write_record_if(&self, pipe: &mut redis::Pipeline, rec: &PushRecord, only_new: bool) {
        let json = serde_json::to_string(rec).expect("records serialise");
        pipe.cmd("SET").arg(self.record_key(&rec.id)).arg(json).arg("EX").arg(RECORD_TTL_SECS);
        if only_new {
            pipe.arg("NX");
        }
        pipe.ignore();
        pipe.cmd("HINCRBY")
            .arg(self.stats_key())
            .arg(format!("{}|{}", rec.status.as_str(), rec.trigger))
            .arg(1)
            .ignore();
    }
}

/// The record an outcome leaves, and the job to schedule again (due time, job), if any.
fn settle(job: &Job, outcome: &Outcome) -> (PushRecord, Option<(u64, Job)>) {
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
