//! The embedded queues' rules, written once: the memory queue ([`super::memory`]) keeps its
//! books in collections under a mutex, the disk queue ([`super::disk`]) in redb tables inside one
//! write transaction; both implement [`Ledger`] and run the same `enqueue`, `skipped`,
//! `promote`, `claim`, `finish` and `redeliver` below (the Redis queue keeps the same semantics
//! with streams).

use super::{redelivered, settle, Claimed, Enqueue, Outcome, PushRecord, Status};
use crate::push::{Job, Skip, Trigger};
use crate::store::StoreError;
use tongban_features::domain::SubjectId;

/// The books of an embedded queue. Sequence numbers order the ready jobs and name the entries.
pub(crate) trait Ledger {
    fn next_seq(&mut self) -> Result<u64, StoreError>;
    fn push_ready(&mut self, seq: u64, job: &Job) -> Result<(), StoreError>;
    /// The oldest ready job, removed.
    fn pop_ready(&mut self) -> Result<Option<(u64, Job)>, StoreError>;
    fn put_delayed(&mut self, due_ms: u64, seq: u64, job: &Job) -> Result<(), StoreError>;
    /// Removes and returns the delayed jobs due at or before `now_ms`, in due order.
    fn take_due(&mut self, now_ms: u64) -> Result<Vec<Job>, StoreError>;
    /// At most `count` pending entries claimed at or before `before_ms`, lowest entries first.
    fn stale_pending(&mut self, before_ms: u64, count: usize) -> Result<Vec<(u64, Job)>, StoreError>;
    /// Marks an entry pending at `consumer` since `at_ms` (a new claim or a reclaim).
    fn put_pending(&mut self, seq: u64, consumer: &str, at_ms: u64, job: &Job) -> Result<(), StoreError>;
    fn remove_pending(&mut self, seq: u64) -> Result<(), StoreError>;
    /// Adds a dead letter, dropping the oldest beyond [`super::DEAD_KEEP`].
    fn push_dead(&mut self, job: &Job, reason: &str) -> Result<(), StoreError>;
    /// Removes every readable dead letter of push `id` and returns the newest one's job. There
    /// may be more than one: a reclaimed job can die at two workers (delivery is at least once).
    fn take_dead(&mut self, id: &str) -> Result<Option<Job>, StoreError>;
    /// Removes every dead letter of `subject` (erasure); returns how many.
    fn drop_dead_of(&mut self, subject: &SubjectId) -> Result<usize, StoreError>;
    fn has_record(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Writes a push's record over any earlier one, dropping the oldest beyond [`RECORDS_KEEP`].
    fn put_record(&mut self, record: &PushRecord) -> Result<(), StoreError>;
    fn add_count(&mut self, status: Status, trigger: Trigger) -> Result<(), StoreError>;
}

/// Audit records an embedded queue keeps (the oldest go first).
pub(crate) const RECORDS_KEEP: usize = 200_000;

fn record(l: &mut impl Ledger, r: &PushRecord) -> Result<(), StoreError> {
    l.add_count(r.status, r.trigger)?;
    l.put_record(r)
}

pub(crate) fn enqueue(l: &mut impl Ledger, items: &[Enqueue], now_ms: u64) -> Result<(), StoreError> {
    for it in items {
        let seq = l.next_seq()?;
        if it.due_ms > now_ms {
            l.put_delayed(it.due_ms, seq, &it.job)?;
        } else {
            l.push_ready(seq, &it.job)?;
        }
        record(l, &PushRecord::of(&it.job, it.status, None))?;
    }
    Ok(())
}

pub(crate) fn skipped(l: &mut impl Ledger, skipped: &[(Job, Skip)]) -> Result<(), StoreError> {
    for (job, why) in skipped {
        let rec = PushRecord::of(job, Status::Skipped, Some(why.as_str().to_owned()));
        if *why == Skip::Duplicate || l.has_record(&rec.id)? {
            l.add_count(Status::Skipped, rec.trigger)?;
        } else {
            record(l, &rec)?;
        }
    }
    Ok(())
}

pub(crate) fn promote(l: &mut impl Ledger, now_ms: u64) -> Result<usize, StoreError> {
    let due = l.take_due(now_ms)?;
    for job in &due {
        let seq = l.next_seq()?;
        l.push_ready(seq, job)?;
    }
    Ok(due.len())
}

pub(crate) fn claim(
    l: &mut impl Ledger,
    consumer: &str,
    count: usize,
    reclaim_idle_ms: u64,
    now_ms: u64,
) -> Result<Vec<Claimed>, StoreError> {
    let mut out = Vec::new();
    for (k, mut job) in l.stale_pending(now_ms.saturating_sub(reclaim_idle_ms), count)? {
        // A reclaim is an attempt: the worker that had it stopped, perhaps because of it.
        job.attempts += 1;
        l.put_pending(k, consumer, now_ms, &job)?;
        out.push(Claimed { partition: 0, entry: k.to_string(), job, reclaimed: true });
    }
    while out.len() < count {
        let Some((k, job)) = l.pop_ready()? else { break };
        l.put_pending(k, consumer, now_ms, &job)?;
        out.push(Claimed { partition: 0, entry: k.to_string(), job, reclaimed: false });
    }
    Ok(out)
}

pub(crate) fn finish(l: &mut impl Ledger, done: &[(Claimed, Outcome)]) -> Result<(), StoreError> {
    for (c, outcome) in done {
        let Ok(k) = c.entry.parse::<u64>() else { continue };
        l.remove_pending(k)?;
        let (rec, later) = settle(&c.job, outcome);
        if let Some((due, job)) = later {
            let seq = l.next_seq()?;
            l.put_delayed(due, seq, &job)?;
        }
        if let Outcome::Dead { reason } = outcome {
            l.push_dead(&c.job, reason)?;
        }
        record(l, &rec)?;
    }
    Ok(())
}

pub(crate) fn redeliver(l: &mut impl Ledger, id: &str, now_ms: u64) -> Result<bool, StoreError> {
    let Some(dead) = l.take_dead(id)? else { return Ok(false) };
    let (job, rec) = redelivered(&dead, now_ms);
    let seq = l.next_seq()?;
    l.push_ready(seq, &job)?;
    record(l, &rec)?;
    Ok(true)
}
