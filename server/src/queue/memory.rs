//! The in-process queue: the Redis queue's semantics in one mutex (lost with the process: for
//! the embedded default and `demo`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::{settle, wall_ms, Backend, Claimed, Count, Depth, Enqueue, Outcome, PushRecord, Status, DEAD_KEEP};
use crate::push::{Job, Skip, Trigger};
use crate::store::StoreError;

/// Records kept by the memory queue (the oldest go first).
const MEM_RECORDS: usize = 200_000;

#[derive(Debug, Default)]
struct Mem {
    seq: u64,
    ready: VecDeque<(u64, Job)>,
    /// Entry -> (consumer, claimed at, job).
    pending: BTreeMap<u64, (String, Instant, Job)>,
    delayed: BTreeMap<(u64, u64), Job>,
    dead: VecDeque<(Job, String)>,
    records: HashMap<String, PushRecord>,
    record_order: VecDeque<String>,
    counts: BTreeMap<(Status, Trigger), u64>,
}

impl Mem {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn record(&mut self, r: PushRecord) {
        *self.counts.entry((r.status, r.trigger)).or_default() += 1;
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
        let now = wall_ms();
        let mut q = self.lock();
        for it in items {
            let seq = q.next_seq();
            if it.due_ms > now {
                q.delayed.insert((it.due_ms, seq), it.job.clone());
            } else {
                q.ready.push_back((seq, it.job.clone()));
            }
            q.record(PushRecord::of(&it.job, it.status, None));
        }
        Ok(())
    }

    async fn skipped(&self, skipped: &[(Job, Skip)]) -> Result<(), StoreError> {
        let mut q = self.lock();
        for (job, why) in skipped {
            let rec = PushRecord::of(job, Status::Skipped, Some(why.as_str().to_owned()));
            if *why == Skip::Duplicate || q.records.contains_key(&rec.id) {
                *q.counts.entry((Status::Skipped, rec.trigger)).or_default() += 1;
            } else {
                q.record(rec);
            }
        }
        Ok(())
    }

    async fn promote(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut q = self.lock();
        let later = q.delayed.split_off(&(now_ms + 1, 0));
        let due = std::mem::replace(&mut q.delayed, later);
        let n = due.len();
        for (_, job) in due {
            let seq = q.next_seq();
            q.ready.push_back((seq, job));
        }
        Ok(n)
    }

    async fn claim(&self, consumer: &str, count: usize, reclaim_idle_ms: u64) -> Result<Vec<Claimed>, StoreError> {
        let mut q = self.lock();
        let now = Instant::now();
        let stale: Vec<u64> = q
            .pending
            .iter()
            .filter(|(_, (_, since, _))| now.duration_since(*since).as_millis() as u64 >= reclaim_idle_ms)
            .map(|(&k, _)| k)
            .take(count)
            .collect();
        let mut out = Vec::new();
        for k in stale {
            let e = q.pending.get_mut(&k).expect("listed above");
            e.0 = consumer.to_owned();
            e.1 = now;
            out.push(Claimed { partition: 0, entry: k.to_string(), job: e.2.clone(), reclaimed: true });
        }
        while out.len() < count {
            let Some((k, job)) = q.ready.pop_front() else { break };
            q.pending.insert(k, (consumer.to_owned(), now, job.clone()));
            out.push(Claimed { partition: 0, entry: k.to_string(), job, reclaimed: false });
        }
        Ok(out)
    }

    async fn finish(&self, done: Vec<(Claimed, Outcome)>) -> Result<(), StoreError> {
        let mut q = self.lock();
        for (c, outcome) in done {
            let Ok(k) = c.entry.parse::<u64>() else { continue };
            q.pending.remove(&k);
            let (rec, later) = settle(&c.job, &outcome);
            if let Some((due, job)) = later {
                let seq = q.next_seq();
                q.delayed.insert((due, seq), job);
            }
            if let Outcome::Dead { reason } = &outcome {
                q.dead.push_back((c.job.clone(), reason.clone()));
                if q.dead.len() > DEAD_KEEP {
                    q.dead.pop_front();
                }
            }
            q.record(rec);
        }
        Ok(())
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
}
