//! The Redis queue: `P` partitions (a fixed number, chosen by a hash of the subject) so that
//! the queue spreads over the nodes of a Redis Cluster; the keys of one partition share a hash
//! tag:
//! - `tb:{q:N}:ready`: a stream read by the consumer group `tongban`; every worker has a
//!   unique consumer name. An entry is acknowledged (and deleted) only after its outcome is
//!   written. A worker that dies leaves its entries pending; another worker reclaims those idle
//!   longer than the visibility timeout with `XAUTOCLAIM`.
//! - `tb:{q:N}:delayed`: a sorted set of jobs by due time in milliseconds (quiet hours,
//!   retries); `lua/promote.lua` moves due jobs to the stream atomically.
//! - `tb:{q:N}:dead`: the dead-letter stream (jobs with the reason), capped at `DEAD_KEEP`;
//!   `lua/redeliver.lua` moves one back to the ready stream of its partition atomically.
//!
//! Audit records are `tb:{p:<id>}:rec` (JSON, kept `RECORD_TTL_SECS`); counters by status and
//! trigger are the hash `tb:stats:push` (fields `status|trigger`).

use std::collections::BTreeMap;
use tongban_features::domain::SubjectId;

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::{
    settle, Backend, Claimed, Count, Depth, Enqueue, Outcome, PushRecord, Status, DEAD_KEEP, GROUP, RECORD_TTL_SECS,
};
use crate::push::{Job, Skip, Trigger};
use crate::store::StoreError;

const PROMOTE: &str = include_str!("lua/promote.lua");
const REDELIVER: &str = include_str!("lua/redeliver.lua");

/// Dead letters read per round trip while looking for one to redeliver.
const SCAN_PAGE: usize = 1000;

/// The Redis queue.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    prefix: String,
    partitions: usize,
    promote: redis::Script,
    redeliver: redis::Script,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue").field("prefix", &self.prefix).field("partitions", &self.partitions).finish()
    }
}

fn parse_job(raw: &str) -> Result<Job, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Unavailable(format!("unreadable queued job: {e}")))
}

fn entry_job(e: &StreamId) -> Result<Job, StoreError> {
    let raw: String =
        e.get("job").ok_or_else(|| StoreError::Unavailable(format!("queue entry {} has no job field", e.id)))?;
    parse_job(&raw)
}

/// Stream ids are `<ms>-<seq>`: their order as numbers.
fn stream_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn partition_of(subject: &str, partitions: usize) -> usize {
    (tongban_features::io::fnv1a(subject.as_bytes()) % partitions.max(1) as u64) as usize
}

impl RedisQueue {
    /// A queue on a connection, with `partitions` streams; creates the consumer groups if
    /// missing.
    pub async fn new(conn: ConnectionManager, prefix: &str, partitions: usize) -> Result<RedisQueue, StoreError> {
        let q = RedisQueue {
            conn,
            prefix: prefix.to_owned(),
            partitions: partitions.max(1),
            promote: redis::Script::new(PROMOTE),
            redeliver: redis::Script::new(REDELIVER),
        };
        let mut c = q.conn.clone();
        let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(PROMOTE).query_async(&mut c).await?;
        q.ensure_groups().await?;
        Ok(q)
    }

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

impl Backend for RedisQueue {
    async fn enqueue(&self, items: &[Enqueue]) -> Result<(), StoreError> {
        let now = super::wall_ms();
        let mut pipe = redis::pipe();
        for it in items {
            let [ready, delayed, _] = self.keys(partition_of(it.job.subject.as_str(), self.partitions));
            let json = serde_json::to_string(&it.job).expect("jobs serialise");
            if it.due_ms > now {
                pipe.cmd("ZADD").arg(delayed).arg(it.due_ms).arg(json).ignore();
            } else {
                pipe.cmd("XADD").arg(ready).arg("*").arg("job").arg(json).ignore();
            }
            self.write_record(&mut pipe, &PushRecord::of(&it.job, it.status, None));
        }
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    async fn skipped(&self, skipped: &[(Job, Skip)]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for (job, why) in skipped {
            let rec = PushRecord::of(job, Status::Skipped, Some(why.as_str().to_owned()));
            if *why == Skip::Duplicate {
                pipe.cmd("HINCRBY")
                    .arg(self.stats_key())
                    .arg(format!("skipped|{}", rec.trigger.as_str()))
                    .arg(1)
                    .ignore();
            } else {
                self.write_record_if(&mut pipe, &rec, true);
            }
        }
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    async fn promote(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut pipe = redis::pipe();
        for p in 0..self.partitions {
            let [ready, delayed, _] = self.keys(p);
            pipe.cmd("EVALSHA").arg(self.promote.get_hash()).arg(2).arg(delayed).arg(ready).arg(now_ms).arg(1000);
        }
        let mut c = self.conn.clone();
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

    /// Up to `count / partitions`, rounded up, from each partition, of each kind. A consumer
    /// group lost with a Redis restart without persistence is created again.
    async fn claim(&self, consumer: &str, count: usize, reclaim_idle_ms: u64) -> Result<Vec<Claimed>, StoreError> {
        match self.claim_all(consumer, count, reclaim_idle_ms).await {
            Err(StoreError::Unavailable(e)) if e.contains("NOGROUP") => {
                self.ensure_groups().await?;
                Ok(Vec::new())
            }
            other => other,
        }
    }

    async fn finish(&self, done: Vec<(Claimed, Outcome)>) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        let mut acks: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (c, outcome) in &done {
            let [_, delayed, dead] = self.keys(c.partition);
            let (rec, later) = settle(&c.job, outcome);
            if let Some((due, job)) = later {
                let json = serde_json::to_string(&job).expect("jobs serialise");
                pipe.cmd("ZADD").arg(delayed).arg(due).arg(json).ignore();
            }
            if let Outcome::Dead { reason } = outcome {
                let json = serde_json::to_string(&c.job).expect("jobs serialise");
                pipe.cmd("XADD").arg(dead).arg("MAXLEN").arg("~").arg(DEAD_KEEP).arg("*");
                pipe.arg("job").arg(json).arg("reason").arg(reason).ignore();
            }
            self.write_record(&mut pipe, &rec);
            acks.entry(c.partition).or_default().push(c.entry.clone());
        }
        for (p, ids) in acks {
            let [ready, ..] = self.keys(p);
            pipe.cmd("XACK").arg(&ready).arg(GROUP).arg(&ids).ignore();
            pipe.cmd("XDEL").arg(&ready).arg(&ids).ignore();
        }
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    async fn record(&self, id: &str) -> Result<Option<PushRecord>, StoreError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = redis::cmd("GET").arg(self.record_key(id)).query_async(&mut c).await?;
        raw.map(|x| {
            serde_json::from_str(&x).map_err(|e| StoreError::Unavailable(format!("unreadable push record: {e}")))
        })
        .transpose()
    }

    async fn counts(&self) -> Result<Vec<Count>, StoreError> {
        let mut c = self.conn.clone();
        let all: BTreeMap<String, u64> = redis::cmd("HGETALL").arg(self.stats_key()).query_async(&mut c).await?;
        // A field this version does not know (written by a newer one) is left out.
        Ok(all
            .into_iter()
            .filter_map(|(k, n)| {
                let (s, t) = k.split_once('|')?;
                Some((Status::parse(s)?, Trigger::parse(t)?, n))
            })
            .collect())
    }

    async fn depth(&self) -> Result<Depth, StoreError> {
        let mut pipe = redis::pipe();
        for p in 0..self.partitions {
            let [ready, delayed, dead] = self.keys(p);
            pipe.cmd("XLEN").arg(&ready).cmd("XPENDING").arg(&ready).arg(GROUP);
            pipe.cmd("ZCARD").arg(delayed).cmd("XLEN").arg(dead);
        }
        let mut c = self.conn.clone();
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

    async fn dead_letters(&self, n: usize) -> Result<Vec<(Option<Job>, String)>, StoreError> {
        let mut c = self.conn.clone();
        let mut out = Vec::new();
        for p in 0..self.partitions {
            let [_, _, dead] = self.keys(p);
            let reply: redis::streams::StreamRangeReply =
                redis::cmd("XREVRANGE").arg(&dead).arg("+").arg("-").arg("COUNT").arg(n).query_async(&mut c).await?;
            for e in &reply.ids {
                let reason: String = e.get("reason").unwrap_or_default();
                out.push((e.id.clone(), entry_job(e).ok(), reason));
            }
        }
        out.sort_by_key(|x| std::cmp::Reverse(stream_order(&x.0)));
        Ok(out.into_iter().take(n).map(|(_, j, r)| (j, r)).collect())
    }

    /// The dead letter's partition is not known from its push id (the subject picks it, and
    /// the record holds none), so the dead-letter streams are read first, page by page (an
    /// operator's action, not a hot path); then `lua/redeliver.lua` deletes the entries found
    /// and adds the job to the same partition's ready stream in one atomic step, its keys under
    /// that partition's hash tag. Only the entries' deletion decides: if another call took them
    /// in between, nothing is added and the answer is false. Copies in other partitions (the
    /// partition count changed since the job died) are only deleted. The record, under the
    /// push's own hash tag, is written after the move: a crash in between leaves it `dead`
    /// while the job is queued, and the job's next outcome writes it again.
    /// The subject's dead letters are in its own partition's stream (a changed partition
    /// count is why the others are read too), read in pages; entries are tested for the
    /// subject's id as text before they are parsed. An operator's erasure, not a hot path.
    async fn forget_subject(&self, subject: &SubjectId) -> Result<usize, StoreError> {
        let needle = serde_json::to_string(subject.as_str()).expect("strings serialise");
        let mut c = self.conn.clone();
        let mut removed = 0;
        let own = partition_of(subject.as_str(), self.partitions);
        let order = std::iter::once(own).chain((0..self.partitions).filter(|&p| p != own));
        for p in order {
            let [_, _, dead] = self.keys(p);
            let mut start = "-".to_owned();
            loop {
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&dead)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut c)
                    .await?;
                let Some(last) = reply.ids.last() else { break };
                start = format!("({}", last.id);
                let hits: Vec<&str> = reply
                    .ids
                    .iter()
                    .filter(|e| {
                        let raw: Option<String> = e.get("job");
                        raw.is_some_and(|r| r.contains(&needle)) && entry_job(e).is_ok_and(|j| &j.subject == subject)
                    })
                    .map(|e| e.id.as_str())
                    .collect();
                if !hits.is_empty() {
                    let n: usize = redis::cmd("XDEL").arg(&dead).arg(&hits).query_async(&mut c).await?;
                    removed += n;
                }
                if reply.ids.len() < 500 {
                    break;
                }
            }
        }
        Ok(removed)
    }

    async fn redeliver(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let needle = serde_json::to_string(id).expect("strings serialise");
        let mut c = self.conn.clone();
        // Per partition, the entries of this push; and the newest one's (partition, entry, job).
        let mut found: Vec<(usize, Vec<String>)> = Vec::new();
        let mut newest: Option<(usize, String, Job)> = None;
        for p in 0..self.partitions {
            let [_, _, dead] = self.keys(p);
            let mut ids = Vec::new();
            let mut from = "-".to_owned();
            loop {
                let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&dead)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(SCAN_PAGE)
                    .query_async(&mut c)
                    .await?;
                for e in &page.ids {
                    let raw: String = e.get("job").unwrap_or_default();
                    // An unreadable job cannot be redelivered: passed over.
                    let Some(job) = raw.contains(&needle).then(|| parse_job(&raw).ok()).flatten() else { continue };
                    if job.message.id != id {
                        continue;
                    }
                    ids.push(e.id.clone());
                    if newest.as_ref().is_none_or(|(_, at, _)| stream_order(at) < stream_order(&e.id)) {
                        newest = Some((p, e.id.clone(), job));
                    }
                }
                match page.ids.last() {
                    Some(last) if page.ids.len() == SCAN_PAGE => from = format!("({}", last.id),
                    _ => break,
                }
            }
            if !ids.is_empty() {
                found.push((p, ids));
            }
        }
        let Some((home, _, dead)) = newest else { return Ok(false) };
        let (job, rec) = super::redelivered(&dead, now_ms);
        let json = serde_json::to_string(&job).expect("jobs serialise");
        // The newest letter's partition first: its answer is the redelivery's.
        found.sort_by_key(|(p, _)| *p != home);
        for (p, ids) in &found {
            let [ready, _, dead] = self.keys(*p);
            let queue = if *p == home { json.as_str() } else { "" };
            let n: i64 = self.redeliver.key(dead).key(ready).arg(queue).arg(ids).invoke_async(&mut c).await?;
            if *p == home && n == 0 {
                return Ok(false);
            }
        }
        let mut pipe = redis::pipe();
        self.write_record(&mut pipe, &rec);
        let _: () = pipe.query_async(&mut c).await?;
        Ok(true)
    }
}

impl RedisQueue {
    async fn claim_all(&self, consumer: &str, count: usize, reclaim_idle_ms: u64) -> Result<Vec<Claimed>, StoreError> {
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
        // A reclaim is an attempt: the stream counts how often each entry was handed out, and
        // every hand-out after the first went to a worker that stopped.
        let again: Vec<usize> = (0..out.len()).filter(|&i| out[i].reclaimed).collect();
        if !again.is_empty() {
            let mut pipe = redis::pipe();
            for &i in &again {
                let [ready, ..] = self.keys(out[i].partition);
                pipe.cmd("XPENDING").arg(ready).arg(GROUP).arg(&out[i].entry).arg(&out[i].entry).arg(1);
            }
            let pending: Vec<redis::streams::StreamPendingCountReply> = pipe.query_async(&mut c).await?;
            for (&i, p) in again.iter().zip(&pending) {
                let times = p.ids.first().map_or(1, |x| x.times_delivered);
                out[i].job.attempts += u32::try_from(times.saturating_sub(1)).unwrap_or(u32::MAX);
            }
        }
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
            .arg(format!("{}|{}", rec.status.as_str(), rec.trigger.as_str()))
            .arg(1)
            .ignore();
    }
}
