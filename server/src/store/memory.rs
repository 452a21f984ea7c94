//! The volatile store: sharded mutexes over hash maps, in process memory, lost on exit (tests,
//! benchmarks, `serve --memory`). Every operation on one subject runs under its shard's lock, so
//! each is atomic per subject as on Redis. Event ids seen are forgotten by the same rules as on
//! the other backends (time to live and cap, [`rules`]), so a long-running process stays bounded.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tongban_features::domain::SubjectId;
use tongban_features::io::fnv1a;
use tongban_features::profile::{Profile, ProfileContext};

use super::rules::{self, Pending, Sent};
use super::{
    apply_events, has_profile, Applied, AuditEntry, Backend, Batch, InboxItem, ProfileAndPrefs, Reservation,
    StoreError, SubjectData, AUDIT_KEEP,
};
use crate::push::{Caps, InboxMessage, Preferences, Skip};

/// Event ids seen with the time each was first seen, in two orders: by id for look-ups, by
/// time for forgetting the oldest ([`rules::SEEN_TTL_SECS`], [`rules::SEEN_CAP`]).
#[derive(Debug, Default)]
struct Seen {
    at: HashMap<String, i64>,
    by_time: BTreeSet<(i64, String)>,
}

impl Seen {
    fn contains(&self, id: &str, now: i64) -> bool {
        self.at.get(id).is_some_and(|&t| rules::still_seen(t, now))
    }

    /// Records `id` as first seen at `now` (an expired id seen again starts over).
    fn add(&mut self, id: &str, now: i64) {
        if let Some(old) = self.at.insert(id.to_owned(), now) {
            self.by_time.remove(&(old, id.to_owned()));
        }
        self.by_time.insert((now, id.to_owned()));
    }

    /// Forgets the ids expired at `now`, then the oldest beyond the cap.
    fn forget(&mut self, now: i64) {
        while let Some((t, id)) = self.by_time.first() {
            if rules::still_seen(*t, now) && self.at.len() <= rules::SEEN_CAP {
                break;
            }
            self.at.remove(id);
            self.by_time.pop_first();
        }
    }

    fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[derive(Debug, Default)]
struct Entry {
    profile: Profile,
    seen: Seen,
    prefs: Option<Preferences>,
    inbox: Vec<InboxMessage>,
    /// Pushes reserved.
    sent: Vec<Sent>,
    /// Reserved pushes whose enqueue is not confirmed yet.
    outbox: Vec<Pending>,
    /// The subject was erased: a bulk import never brings it back.
    erased: bool,
}

impl Entry {
    /// Whether the subject has a profile (an entry may hold only preferences, an inbox or
    /// reservations).
    fn has_profile(&self) -> bool {
        has_profile(&self.profile)
    }
}

type Shard = HashMap<SubjectId, Entry>;

/// The embedded store.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    /// The audit log, oldest first, bounded at [`AUDIT_KEEP`]; apart from the subjects' shards,
    /// so that an erasure never touches it.
    audit: Mutex<VecDeque<AuditEntry>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            shards: (0..32).map(|_| Mutex::new(HashMap::new())).collect(),
            audit: Mutex::new(VecDeque::new()),
        }
    }
}

impl MemoryStore {
    fn shard(&self, subject: &SubjectId) -> MutexGuard<'_, Shard> {
        let h = fnv1a(subject.as_str().as_bytes());
        self.shards[(h % self.shards.len() as u64) as usize].lock().expect("no panics while holding the lock")
    }

    fn apply(&self, batch: &Batch<'_>, ctx: &ProfileContext, segment: u16, now: i64) -> Applied {
        let mut shard = self.shard(batch.subject);
        let entry = shard
            .entry(batch.subject.clone())
            .or_insert_with(|| Entry { profile: Profile::new(segment), ..Entry::default() });
        let seen: Vec<bool> = batch.ids.iter().map(|id| entry.seen.contains(id, now)).collect();
        let (out, new_ids) = apply_events(&mut entry.profile, batch, &seen, ctx);
        for id in new_ids {
            entry.seen.add(id, now);
        }
        entry.seen.forget(now);
        out
    }

    fn reserve(&self, it: &Reservation<'_>, now: i64, caps: &Caps) -> Result<(), Skip> {
        let mut shard = self.shard(it.subject);
        let entry = shard.entry(it.subject.clone()).or_default();
        rules::reserve(&mut entry.sent, it, now, caps)?;
        entry.outbox.extend(it.outbox.cloned());
        Ok(())
    }

    fn push_inbox(&self, item: &InboxItem<'_>) -> bool {
        let mut shard = self.shard(item.subject);
        rules::add_to_inbox(&mut shard.entry(item.subject.clone()).or_default().inbox, item.message)
    }
}

impl Backend for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn profile(&self, subject: &SubjectId) -> Result<Option<Profile>, StoreError> {
        Ok(self.shard(subject).get(subject).filter(|e| e.has_profile()).map(|e| e.profile.clone()))
    }

    async fn apply_many(
        &self,
        batches: &[Batch<'_>],
        segments: &[u16],
        ctx: &ProfileContext,
        now: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        Ok(batches.iter().zip(segments).map(|(b, &seg)| self.apply(b, ctx, seg, now)).collect())
    }

    async fn import_profile(&self, subject: &SubjectId, profile: &Profile) -> Result<bool, StoreError> {
        let mut shard = self.shard(subject);
        if shard.get(subject).is_some_and(|e| e.has_profile() || e.erased) {
            return Ok(false);
        }
        shard.entry(subject.clone()).or_default().profile = profile.clone();
        Ok(true)
    }

    async fn erase(&self, subject: &SubjectId) -> Result<bool, StoreError> {
        let mut shard = self.shard(subject);
        let existed = shard.get(subject).is_some_and(|e| {
            e.has_profile()
                || e.prefs.is_some()
                || !e.inbox.is_empty()
                || !e.sent.is_empty()
                || !e.seen.is_empty()
                || !e.outbox.is_empty()
        });
        shard.insert(subject.clone(), Entry { erased: true, ..Entry::default() });
        Ok(existed)
    }

    async fn profiles_and_prefs_each(
        &self,
        subjects: &[&SubjectId],
    ) -> Result<Vec<Result<ProfileAndPrefs, StoreError>>, StoreError> {
        Ok(subjects
            .iter()
            .map(|subject| {
                Ok(self
                    .shard(subject)
                    .get(*subject)
                    .map_or((None, None), |e| (e.has_profile().then(|| e.profile.clone()), e.prefs.clone())))
            })
            .collect())
    }

    async fn put_prefs(&self, subject: &SubjectId, prefs: &Preferences) -> Result<(), StoreError> {
        self.shard(subject).entry(subject.clone()).or_default().prefs = Some(prefs.clone());
        Ok(())
    }

    async fn inbox(&self, subject: &SubjectId) -> Result<Vec<InboxMessage>, StoreError> {
        let mut out = self.shard(subject).get(subject).map(|e| e.inbox.clone()).unwrap_or_default();
        rules::newest_first(&mut out);
        Ok(out)
    }

    async fn push_inbox_many(&self, items: &[InboxItem<'_>]) -> Result<Vec<bool>, StoreError> {
        Ok(items.iter().map(|it| self.push_inbox(it)).collect())
    }

    async fn mark_read(&self, subject: &SubjectId, id: &str) -> Result<(), StoreError> {
        if let Some(msg) = self.shard(subject).get_mut(subject).and_then(|e| e.inbox.iter_mut().find(|x| x.id == id)) {
            msg.read = true;
        }
        Ok(())
    }

    async fn reserve_many(
        &self,
        items: &[Reservation<'_>],
        now: i64,
        caps: &Caps,
    ) -> Result<Vec<Result<(), Skip>>, StoreError> {
        Ok(items.iter().map(|it| self.reserve(it, now, caps)).collect())
    }

    async fn release(&self, items: &[Reservation<'_>]) -> Result<(), StoreError> {
        for it in items {
            if let Some(e) = self.shard(it.subject).get_mut(it.subject) {
                e.sent.retain(|x| x.id != it.id);
                e.outbox.retain(|x| x.job.message.id != it.id);
            }
        }
        Ok(())
    }

    async fn clear_outbox(&self, items: &[(&SubjectId, &str)]) -> Result<(), StoreError> {
        for (subject, id) in items {
            if let Some(e) = self.shard(subject).get_mut(*subject) {
                e.outbox.retain(|x| x.job.message.id != *id);
            }
        }
        Ok(())
    }

    async fn take_outbox(&self, subjects: &[&SubjectId], now_ms: u64) -> Result<Vec<Pending>, StoreError> {
        let mut out = Vec::new();
        for subject in subjects {
            if let Some(e) = self.shard(subject).get_mut(*subject) {
                out.extend(rules::take_stale(&mut e.outbox, now_ms));
            }
        }
        Ok(out)
    }

    async fn page(&self, cursor: u64) -> Result<(u64, Vec<SubjectData>), StoreError> {
        let i = cursor as usize;
        let Some(shard) = self.shards.get(i) else { return Ok((0, Vec::new())) };
        let out = shard
            .lock()
            .expect("no panics while holding the lock")
            .iter()
            .filter(|(_, e)| e.has_profile())
            .map(|(k, e)| (k.clone(), e.profile.clone(), e.prefs.clone()))
            .collect();
        let next = if i + 1 < self.shards.len() { i as u64 + 1 } else { 0 };
        Ok((next, out))
    }

    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut log = self.audit.lock().expect("no panics while holding the lock");
        log.push_back(entry.clone());
        if log.len() > AUDIT_KEEP {
            log.pop_front();
        }
        Ok(())
    }

    async fn audit_log(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self.audit.lock().expect("no panics while holding the lock").iter().rev().take(n).cloned().collect())
    }

    /// One process owns this store (an embedded store is one process's), so it holds every lease.
    async fn lease(&self, _name: &str, _holder: &str, _ttl_ms: u64) -> Result<bool, StoreError> {
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_audit_log_keeps_only_the_newest_entries() {
        let store = MemoryStore::default();
        let entry = |i: u64| AuditEntry { at_ms: i, who: "op".into(), action: "lookup".into(), subject: "u-a".into() };
        for i in 0..AUDIT_KEEP as u64 + 3 {
            store.audit(&entry(i)).await.unwrap();
        }
        let log = store.audit_log(usize::MAX).await.unwrap();
        assert_eq!(log.len(), AUDIT_KEEP);
        assert_eq!((log[0].at_ms, log[AUDIT_KEEP - 1].at_ms), (AUDIT_KEEP as u64 + 2, 3), "the oldest three dropped");
    }
}
