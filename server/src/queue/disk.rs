//! The durable embedded queue: redb tables in `queue.redb` in the data directory, beside the
//! store's file. The memory queue's rules ([`super::ledger`]) on tables: `ready` (sequence ->
//! job), `pending` (sequence -> consumer, claimed at, job), `delayed` ((due, sequence) -> job),
//! `dead`, `records` with `record_order` (the oldest go first), `counts` and `meta` (the
//! sequence counters).
//!
//! Every call is one write transaction committed durably (fsync) before it returns, so a job
//! enqueued, an outcome and its acknowledgement are on disk once acknowledged. A claim is
//! written too: after a crash, the jobs pending at the dead process are reclaimed once their
//! claim is older than the visibility timeout (wall time survives a restart), and delivered at
//! least once, as on Redis.

use std::path::Path;
use std::sync::Arc;
use tongban_features::domain::SubjectId;

use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::ledger::{self, Ledger, RECORDS_KEEP};
use super::{wall_ms, Backend, Claimed, Count, Depth, Enqueue, Outcome, PushRecord, Status, DEAD_KEEP};
use crate::push::{Job, Skip, Trigger};
use crate::store::disk::{blocking, get_json, to_json, DbFile};
use crate::store::StoreError;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const READY: TableDefinition<u64, &str> = TableDefinition::new("ready");
const PENDING: TableDefinition<u64, &str> = TableDefinition::new("pending");
const DELAYED: TableDefinition<(u64, u64), &str> = TableDefinition::new("delayed");
const DEAD: TableDefinition<u64, &str> = TableDefinition::new("dead");
const RECORDS: TableDefinition<&str, &str> = TableDefinition::new("records");
const RECORD_ORDER: TableDefinition<u64, &str> = TableDefinition::new("record_order");
const COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("counts");

/// The file of the queue in the data directory.
pub const QUEUE_FILE: &str = "queue.redb";

#[derive(Serialize, Deserialize)]
struct PendingEntry {
    consumer: String,
    at_ms: u64,
    job: Job,
}

#[derive(Serialize, Deserialize)]
struct DeadLetter {
    /// None when the entry was not a readable job.
    job: Option<Job>,
    reason: String,
}

fn unreadable(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Unavailable(format!("embedded queue: unreadable {what}: {e}"))
}

/// The queue's tables, open in one write transaction.
struct Books<'t> {
    meta: Table<'t, &'static str, u64>,
    ready: Table<'t, u64, &'static str>,
    pending: Table<'t, u64, &'static str>,
    delayed: Table<'t, (u64, u64), &'static str>,
    dead: Table<'t, u64, &'static str>,
    records: Table<'t, &'static str, &'static str>,
    record_order: Table<'t, u64, &'static str>,
    counts: Table<'t, (&'static str, &'static str), u64>,
}

impl<'t> Books<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Books<'t>, StoreError> {
        Ok(Books {
            meta: txn.open_table(META)?,
            ready: txn.open_table(READY)?,
            pending: txn.open_table(PENDING)?,
            delayed: txn.open_table(DELAYED)?,
            dead: txn.open_table(DEAD)?,
            records: txn.open_table(RECORDS)?,
            record_order: txn.open_table(RECORD_ORDER)?,
            counts: txn.open_table(COUNTS)?,
        })
    }

    fn bump(&mut self, counter: &str) -> Result<u64, StoreError> {
        let n = self.meta.get(counter)?.map_or(0, |v| v.value()) + 1;
        self.meta.insert(counter, n)?;
        Ok(n)
    }

    /// Removes the dead letters whose job satisfies `hit`, oldest first, and returns their
    /// jobs. `needle` (a value as it appears in the JSON) passes most letters over unparsed; a
    /// letter that does not parse is left alone (it cannot be redelivered, and holds no job).
    fn remove_dead(&mut self, needle: &str, hit: impl Fn(&Job) -> bool) -> Result<Vec<Job>, StoreError> {
        let mut found = Vec::new();
        for kv in self.dead.iter()? {
            let (k, v) = kv?;
            if !v.value().contains(needle) {
                continue;
            }
            if let Ok(DeadLetter { job: Some(job), .. }) = serde_json::from_str(v.value()) {
                if hit(&job) {
                    found.push((k.value(), job));
                }
            }
        }
        for (k, _) in &found {
            self.dead.remove(*k)?;
        }
        Ok(found.into_iter().map(|(_, job)| job).collect())
    }

    fn add_dead(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        let seq = self.bump("dead_seq")?;
        self.dead.insert(seq, to_json(letter).as_str())?;
        while self.dead.len()? > DEAD_KEEP as u64 {
            self.dead.pop_first()?;
        }
        Ok(())
    }
}

impl Ledger for Books<'_> {
    fn next_seq(&mut self) -> Result<u64, StoreError> {
        self.bump("seq")
    }

    fn push_ready(&mut self, seq: u64, job: &Job) -> Result<(), StoreError> {
        self.ready.insert(seq, to_json(job).as_str())?;
        Ok(())
    }

    fn pop_ready(&mut self) -> Result<Option<(u64, Job)>, StoreError> {
        loop {
            let Some((k, text)) = self.ready.pop_first()?.map(|(k, v)| (k.value(), v.value().to_owned())) else {
                return Ok(None);
            };
            match serde_json::from_str(&text) {
                Ok(job) => return Ok(Some((k, job))),
                // Never wedge the queue on one entry: it goes to the dead letters at once.
                Err(e) => self.add_dead(&DeadLetter { job: None, reason: format!("unreadable queued job: {e}") })?,
            }
        }
    }

    fn put_delayed(&mut self, due_ms: u64, seq: u64, job: &Job) -> Result<(), StoreError> {
        self.delayed.insert((due_ms, seq), to_json(job).as_str())?;
        Ok(())
    }

    fn take_due(&mut self, now_ms: u64) -> Result<Vec<Job>, StoreError> {
        let mut due = Vec::new();
        for kv in self.delayed.extract_from_if(..=(now_ms, u64::MAX), |_, _| true)? {
            let (_, v) = kv?;
            due.push(serde_json::from_str(v.value()).map_err(|e| unreadable("delayed job", e))?);
        }
        Ok(due)
    }

    fn stale_pending(&mut self, before_ms: u64, count: usize) -> Result<Vec<(u64, Job)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.pending.iter()? {
            if out.len() >= count {
                break;
            }
            let (k, v) = kv?;
            let e: PendingEntry = serde_json::from_str(v.value()).map_err(|e| unreadable("pending job", e))?;
            if e.at_ms <= before_ms {
                out.push((k.value(), e.job));
            }
        }
        Ok(out)
    }

    fn put_pending(&mut self, seq: u64, consumer: &str, at_ms: u64, job: &Job) -> Result<(), StoreError> {
        let e = PendingEntry { consumer: consumer.to_owned(), at_ms, job: job.clone() };
        self.pending.insert(seq, to_json(&e).as_str())?;
        Ok(())
    }

    fn remove_pending(&mut self, seq: u64) -> Result<(), StoreError> {
        self.pending.remove(seq)?;
        Ok(())
    }

    fn push_dead(&mut self, job: &Job, reason: &str) -> Result<(), StoreError> {
        self.add_dead(&DeadLetter { job: Some(job.clone()), reason: reason.to_owned() })
    }

    fn take_dead(&mut self, id: &str) -> Result<Option<Job>, StoreError> {
        let mut hits = self.remove_dead(&to_json(&id), |job| job.message.id == id)?;
        // Keys grow with time: the last hit is the newest letter.
        Ok(hits.pop())
    }

    fn drop_dead_of(&mut self, subject: &SubjectId) -> Result<usize, StoreError> {
        Ok(self.remove_dead(&to_json(&subject.as_str()), |job| &job.subject == subject)?.len())
    }

    fn has_record(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self.records.get(id)?.is_some())
    }

    fn put_record(&mut self, r: &PushRecord) -> Result<(), StoreError> {
        let new = self.records.insert(r.id.as_str(), to_json(r).as_str())?.is_none();
        if new {
            let seq = self.bump("record_seq")?;
            self.record_order.insert(seq, r.id.as_str())?;
            if self.record_order.len()? > RECORDS_KEEP as u64 {
                let old = self.record_order.pop_first()?.map(|(_, id)| id.value().to_owned());
                if let Some(old) = old {
                    self.records.remove(old.as_str())?;
                }
            }
        }
        Ok(())
    }

    fn add_count(&mut self, status: Status, trigger: Trigger) -> Result<(), StoreError> {
        let key = (status.as_str(), trigger.as_str());
        let n = self.counts.get(key)?.map_or(0, |v| v.value()) + 1;
        self.counts.insert(key, n)?;
        Ok(())
    }
}

/// The durable embedded queue.
#[derive(Debug, Clone)]
pub struct DiskQueue {
    db: Arc<DbFile>,
}

impl DiskQueue {
    /// Opens the queue in `dir` (created if missing), or fails naming the directory, also when
    /// another process has it open.
    pub fn open(dir: &Path) -> Result<DiskQueue, StoreError> {
        let db = DbFile::open(dir, QUEUE_FILE, |txn| {
            txn.open_table(META)?;
            txn.open_table(READY)?;
            txn.open_table(PENDING)?;
            txn.open_table(DELAYED)?;
            txn.open_table(DEAD)?;
            txn.open_table(RECORDS)?;
            txn.open_table(RECORD_ORDER)?;
            txn.open_table(COUNTS)?;
            Ok(())
        })?;
        Ok(DiskQueue { db: Arc::new(db) })
    }

    /// Runs `f` on the books in one durable write transaction, on the blocking pool.
    async fn books<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Books<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        blocking(&self.db, move |db| {
            db.write(|txn| {
                let mut books = Books::open(txn)?;
                f(&mut books)
            })
        })
        .await
    }
}

impl Backend for DiskQueue {
    async fn enqueue(&self, items: &[Enqueue]) -> Result<(), StoreError> {
        let items = items.to_vec();
        self.books(move |b| ledger::enqueue(b, &items, wall_ms())).await
    }

    async fn skipped(&self, skipped: &[(Job, Skip)]) -> Result<(), StoreError> {
        let skipped = skipped.to_vec();
        self.books(move |b| ledger::skipped(b, &skipped)).await
    }

    async fn promote(&self, now_ms: u64) -> Result<usize, StoreError> {
        // Most calls find nothing due: look first, so that an idle worker's polling costs no commit.
        let due = blocking(&self.db, move |db| {
            db.read(|txn| Ok(txn.open_table(DELAYED)?.range(..=(now_ms, u64::MAX))?.next().is_some()))
        })
        .await?;
        if !due {
            return Ok(0);
        }
        self.books(move |b| ledger::promote(b, now_ms)).await
    }

    async fn claim(&self, consumer: &str, count: usize, reclaim_idle_ms: u64) -> Result<Vec<Claimed>, StoreError> {
        // A poll that finds nothing to claim costs no commit (an idle worker polls often).
        let now = wall_ms();
        let something = blocking(&self.db, move |db| {
            db.read(|txn| {
                if !txn.open_table(READY)?.is_empty()? {
                    return Ok(true);
                }
                for kv in txn.open_table(PENDING)?.iter()? {
                    let (_, v) = kv?;
                    let e: PendingEntry = serde_json::from_str(v.value()).map_err(|e| unreadable("pending job", e))?;
                    if e.at_ms <= now.saturating_sub(reclaim_idle_ms) {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
        })
        .await?;
        if !something {
            return Ok(Vec::new());
        }
        let consumer = consumer.to_owned();
        self.books(move |b| ledger::claim(b, &consumer, count, reclaim_idle_ms, wall_ms())).await
    }

    async fn finish(&self, done: Vec<(Claimed, Outcome)>) -> Result<(), StoreError> {
        self.books(move |b| ledger::finish(b, &done)).await
    }

    async fn record(&self, id: &str) -> Result<Option<PushRecord>, StoreError> {
        let id = id.to_owned();
        blocking(&self.db, move |db| db.read(|txn| get_json(&txn.open_table(RECORDS)?, "push record", &id))).await
    }

    async fn counts(&self) -> Result<Vec<Count>, StoreError> {
        blocking(&self.db, |db| {
            db.read(|txn| {
                let mut out = Vec::new();
                for kv in txn.open_table(COUNTS)?.iter()? {
                    let (k, v) = kv?;
                    let (status, trigger) = k.value();
                    // Names this version does not know (written by a newer one) are left out.
                    if let (Some(s), Some(t)) = (Status::parse(status), Trigger::parse(trigger)) {
                        out.push((s, t, v.value()));
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    async fn depth(&self) -> Result<Depth, StoreError> {
        blocking(&self.db, |db| {
            db.read(|txn| {
                Ok(Depth {
                    ready: txn.open_table(READY)?.len()?,
                    pending: txn.open_table(PENDING)?.len()?,
                    delayed: txn.open_table(DELAYED)?.len()?,
                    dead: txn.open_table(DEAD)?.len()?,
                })
            })
        })
        .await
    }

    async fn dead_letters(&self, n: usize) -> Result<Vec<(Option<Job>, String)>, StoreError> {
        blocking(&self.db, move |db| {
            db.read(|txn| {
                let mut out = Vec::new();
                for kv in txn.open_table(DEAD)?.iter()?.rev().take(n) {
                    let (_, v) = kv?;
                    let d: DeadLetter = serde_json::from_str(v.value()).map_err(|e| unreadable("dead letter", e))?;
                    out.push((d.job, d.reason));
                }
                Ok(out)
            })
        })
        .await
    }

    async fn forget_subject(&self, subject: &SubjectId) -> Result<usize, StoreError> {
        let subject = subject.clone();
        self.books(move |b| b.drop_dead_of(&subject)).await
    }

    async fn redeliver(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.books(move |b| ledger::redeliver(b, &id, now_ms)).await
    }
}
