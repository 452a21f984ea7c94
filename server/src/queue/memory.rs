//! The in-process queue: the Redis queue's semantics in one mutex, lost with the process (tests,
//! benchmarks, `serve --memory`). Its rules are the disk queue's ([`super::ledger`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use tongban_features::domain::SubjectId;

use super::ledger::{self, Ledger, RECORDS_KEEP};
use super::{wall_ms, Backend, Claimed, Count, Depth, Enqueue, Outcome, PushRecord, Status, DEAD_KEEP};
use crate::push::{Job, Skip, Trigger};
use crate::store::StoreError;

#[derive(Debug, Default)]
struct Mem {
    seq: u64,
    ready: VecDeque<(u64, Job)>,
    /// Entry -> (consumer, claimed at in wall milliseconds, job).
    pending: BTreeMap<u64, (String, u64, Job)>,
    delayed: BTreeMap<(u64, u64), Job>,
    dead: VecDeque<(Job, String)>,
    records: HashMap<String, PushRecord>,
    record_order: VecDeque<String>,
    counts: BTreeMap<(Status, Trigger), u64>,
}

impl Ledger for Mem {
    fn next_seq(&mut self) -> Result<u64, StoreError> {
        self.seq += 1;
        Ok(self.seq)
    }

    fn push_ready(&mut self, seq: u64, job: &Job) -> Result<(), StoreError> {
        self.ready.push_back((seq, job.clone()));
        Ok(())
    }

    fn pop_ready(&mut self) -> Result<Option<(u64, Job)>, StoreError> {
        Ok(self.ready.pop_front())
    }

    fn put_delayed(&mut self, due_ms: u64, seq: u64, job: &Job) -> Result<(), StoreError> {
        self.delayed.insert((due_ms, seq), job.clone());
        Ok(())
    }

    fn take_due(&mut self, now_ms: u64) -> Result<Vec<Job>, StoreError> {
        let later = self.delayed.split_off(&(now_ms + 1, 0));
        Ok(std::mem::replace(&mut self.delayed, later).into_values().collect())
    }

    fn stale_pending(&mut self, before_ms: u64, count: usize) -> Result<Vec<(u64, Job)>, StoreError> {
        Ok(self
            .pending
            .iter()
            .filter(|(_, (_, at, _))| *at <= before_ms)
            .take(count)
            .map(|(&k, (_, _, job))| (k, job.clone()))
            .collect())
    }

    fn put_pending(&mut self, seq: u64, consumer: &str, at_ms: u64, job: &Job) -> Result<(), StoreError> {
        self.pending.insert(seq, (consumer.to_owned(), at_ms, job.clone()));
        Ok(())
    }

    fn remove_pending(&mut self, seq: u64) -> Result<(), StoreError> {
        self.pending.remove(&seq);
        Ok(())
    }

    fn push_dead(&mut self, job: &Job, reason: &str) -> Result<(), StoreError> {
        self.dead.push_back((job.clone(), reason.to_owned()));
        if self.dead.len() > DEAD_KEEP {
            self.dead.pop_front();
        }
        Ok(())
    }

    fn take_dead(&mut self, id: &str) -> Result<Option<Job>, StoreError> {
        let mut newest = None;
        // Oldest first, so the last one kept is the newest.
        self.dead.retain(|(job, _)| {
            let hit = job.message.id == id;
            if hit {
                newest = Some(job.clone());
            }
            !hit
        });
        Ok(newest)
    }

    fn drop_dead_of(&mut self, subject: &SubjectId) -> Result<usize, StoreError> {
        let before = self.dead.len();
        self.dead.retain(|(job, _)| &job.subject != subject);
        Ok(before - self.dead.len())
    }

    fn has_record(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self.records.contains_key(id))
    }

    fn put_record(&mut self, r: &PushRecord) -> Result<(), StoreError> {
        if self.records.insert(r.id.clone(), r.clone()).is_none() {
            self.record_order.push_back(r.id.clone());
            if self.record_order.len() > RECORDS_KEEP {
                if let Some(old) = self.record_order.pop_front() {
                    self.records.remove(&old);
                }
            }
        }
        Ok(())
    }

    fn add_count(&mut self, status: Status, trigger: Trigger) -> Result<(), StoreError> {
        *self.counts.entry((status, trigger)).or_default() += 1;
        Ok(())
    }
}

/// The in-process queue.
#[derive(Debug, Default)]
pub struct MemQueue(Mutex<Mem>);

impl MemQueue {
    fn lock(&self) -> MutexGuard<'_, Mem> {
        self.0.lock().expect("no panics while holding the lock")
    }
}

impl Backend for MemQueue {
    async fn enqueue(&self, items: &[Enqueue]) -> Result<(), StoreError> {
        ledger::enqueue(&mut *self.lock(), items, wall_ms())
    }

    async fn skipped(&self, skipped: &[(Job, Skip)]) -> Result<(), StoreError> {
        ledger::skipped(&mut *self.lock(), skipped)
    }

    async fn promote(&self, now_ms: u64) -> Result<usize, StoreError> {
        ledger::promote(&mut *self.lock(), now_ms)
    }

    async fn claim(&self, consumer: &str, count: usize, reclaim_idle_ms: u64) -> Result<Vec<Claimed>, StoreError> {
        ledger::claim(&mut *self.lock(), consumer, count, reclaim_idle_ms, wall_ms())
    }

    async fn finish(&self, done: Vec<(Claimed, Outcome)>) -> Result<(), StoreError> {
        ledger::finish(&mut *self.lock(), &done)
    }

    async fn record(&self, id: &str) -> Result<Option<PushRecord>, StoreError> {
        Ok(self.lock().records.get(id).cloned())
    }

    async fn counts(&self) -> Result<Vec<Count>, StoreError> {
        Ok(self.lock().counts.iter().map(|(&(s, t), &n)| (s, t, n)).collect())
    }

    async fn depth(&self) -> Result<Depth, StoreError> {
        let q = self.lock();
        Ok(Depth {
            ready: q.ready.len() as u64,
            pending: q.pending.len() as u64,
            delayed: q.delayed.len() as u64,
            dead: q.dead.len() as u64,
        })
    }

    async fn dead_letters(&self, n: usize) -> Result<Vec<(Option<Job>, String)>, StoreError> {
        Ok(self.lock().dead.iter().rev().take(n).map(|(j, r)| (Some(j.clone()), r.clone())).collect())
    }

    async fn forget_subject(&self, subject: &SubjectId) -> Result<usize, StoreError> {
        self.lock().drop_dead_of(subject)
    }

    async fn redeliver(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        ledger::redeliver(&mut *self.lock(), id, now_ms)
    }
}
