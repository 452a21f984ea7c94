//! Where subjects' data lives: profiles, event ids seen, preferences, the inbox and the push
//! reservations. One interface ([`Backend`]), one file per backend: an embedded database file in
//! a data directory ([`disk`], the durable default of `serve`), process memory ([`memory`],
//! volatile: tests, benchmarks, `serve --memory`) and Redis ([`redis`], shared by replicas).
//! [`Store`] only delegates; the same contract suite (`server/tests/store_contract.rs`) runs on
//! every backend.
//!
//! An event older than every event of a full profile window is acknowledged as `too_late` and
//! changes nothing (see `features::profile`); it is reported as such, never as a duplicate.
//! The rules of de-duplication, caps, the inbox cap and how long event ids are remembered
//! ([`SEEN_TTL_SECS`] from their first sighting, at most [`SEEN_CAP`] per subject: every backend
//! stays bounded) are written once ([`rules`]).
//!
//! The store also keeps the audit log of operators' look-ups of personal data ([`AuditEntry`]):
//! who looked at which subject, and when.

pub mod disk;
pub mod memory;
pub mod redis;
pub mod rules;

use std::future::Future;

use serde::{Deserialize, Serialize};
use tongban_features::domain::SubjectId;
use tongban_features::io::LogEvent;
use tongban_features::profile::{Profile, ProfileContext, ProfileError};

use crate::push::{Caps, InboxMessage, Preferences, Skip};

pub use self::disk::DiskStore;
pub use self::memory::MemoryStore;
pub use self::redis::{redact, RedisStore};
pub use self::rules::{
    Dedupe, Pending, AUDIT_KEEP, INBOX_CAP, MAX_IDS_PER_WRITE, OUTBOX_GRACE_MS, SEEN_CAP, SEEN_TTL_SECS, SENT_KEEP_SECS,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored profile unreadable: {0}")]
    Corrupt(#[from] ProfileError),
    #[error("too many concurrent updates of one subject")]
    Contention,
    /// The store forgot what it held (a Redis restarted without persistence, or flushed).
    #[error("the store lost its data: {0}")]
    Lost(String),
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<::redb::StorageError> for StoreError {
    fn from(e: ::redb::StorageError) -> Self {
        StoreError::Unavailable(format!("embedded database: {e}"))
    }
}

impl From<::redb::TableError> for StoreError {
    fn from(e: ::redb::TableError) -> Self {
        StoreError::Unavailable(format!("embedded database: {e}"))
    }
}

/// What an ingest did for one subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub accepted: usize,
    /// Positions in the batch of the events accepted (the console's analytics count these).
    pub accepted_at: Vec<u32>,
    pub duplicates: usize,
    /// Older than the whole retained window of a full profile: acknowledged, not applied.
    pub too_late: usize,
}

/// One subject's events to apply; `ids` are the senders' event ids (for idempotency).
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    pub subject: &'a SubjectId,
    pub events: &'a [LogEvent],
    pub ids: &'a [String],
}

/// A subject's id, profile and preferences.
pub type SubjectData = (SubjectId, Profile, Option<Preferences>);

/// A subject's profile and preferences, either possibly absent.
pub type ProfileAndPrefs = (Option<Profile>, Option<Preferences>);

/// One push to reserve: its id, lane and de-duplication, and the outbox entry written with it.
#[derive(Debug, Clone, Copy)]
pub struct Reservation<'a> {
    pub subject: &'a SubjectId,
    pub id: &'a str,
    pub critical: bool,
    pub dedupe: Dedupe<'a>,
    /// The push to keep in the subject's outbox until [`Backend::clear_outbox`]: what makes a
    /// reservation recoverable when the enqueue after it never happens. `None` reserves only
    /// (a caller that will not enqueue: the caps checks of tests and operators).
    pub outbox: Option<&'a Pending>,
}

impl<'a> Reservation<'a> {
    /// A reservation de-duplicated by its push id over [`SENT_KEEP_SECS`], with no outbox
    /// entry.
    pub fn by_id(subject: &'a SubjectId, id: &'a str, critical: bool) -> Reservation<'a> {
        Reservation { subject, id, critical, dedupe: Dedupe { key: id, horizon_secs: SENT_KEEP_SECS }, outbox: None }
    }
}

/// One message for a subject's inbox, and how long the inbox keeps it.
#[derive(Debug, Clone, Copy)]
pub struct InboxItem<'a> {
    pub subject: &'a SubjectId,
    pub message: &'a InboxMessage,
    pub ttl_secs: i64,
}

/// One operator action on personal data, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The operator.
    pub who: String,
    /// What they did, e.g. `lookup`.
    pub action: String,
    /// The subject whose data it touched.
    pub subject: String,
}

/// What a store backend must do. Every method that takes a slice answers one result per item,
/// in order, and costs one round trip on a networked backend.
pub trait Backend: Send + Sync {
    /// Checks that the backend answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The subject's profile, if any.
    fn profile(&self, subject: &SubjectId) -> impl Future<Output = Result<Option<Profile>, StoreError>> + Send;

    /// Applies the batches of several subjects, ignoring event ids seen within
    /// [`SEEN_TTL_SECS`] before `now` (wall-clock Unix seconds, the time new ids are recorded
    /// as first seen; at most [`rules::SEEN_CAP`] ids are kept per subject, the oldest go
    /// first); `segments[i]` is set on a new profile of `batches[i]`. Atomic per subject.
    fn apply_many(
        &self,
        batches: &[Batch<'_>],
        segments: &[u16],
        ctx: &ProfileContext,
        now: i64,
    ) -> impl Future<Output = Result<Vec<Applied>, StoreError>> + Send;

    /// Stores a profile built offline unless the subject already has one (a restarted replica
    /// never overwrites what live ingest wrote) or was erased (an import never brings an erased
    /// subject back). Returns whether it stored it.
    fn import_profile(
        &self,
        subject: &SubjectId,
        profile: &Profile,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// [`Backend::import_profile`] for several subjects, answering for each; a backend that
    /// writes durably makes the whole slice one commit (a start-up import of many profiles).
    fn import_profiles(
        &self,
        items: &[(&SubjectId, &Profile)],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(items.len());
            for (subject, profile) in items {
                out.push(self.import_profile(subject, profile).await?);
            }
            Ok(out)
        }
    }

    /// Erases everything kept about a subject; an update prepared before the erasure cannot
    /// land after it, and a later bulk import skips the subject (live events after the erasure
    /// start a new profile). Returns whether anything existed.
    fn erase(&self, subject: &SubjectId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Profiles and preferences of several subjects; one unreadable profile fails only its own
    /// subject. An entry holding only preferences, inbox or reservations has no profile.
    fn profiles_and_prefs_each(
        &self,
        subjects: &[&SubjectId],
    ) -> impl Future<Output = Result<Vec<Result<ProfileAndPrefs, StoreError>>, StoreError>> + Send;

    fn put_prefs(
        &self,
        subject: &SubjectId,
        prefs: &Preferences,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The subject's inbox, newest first, with read marks.
    fn inbox(&self, subject: &SubjectId) -> impl Future<Output = Result<Vec<InboxMessage>, StoreError>> + Send;

    /// Adds messages to inboxes (capped at [`INBOX_CAP`], the oldest dropped) unless a message
    /// with the same id is there. Answers whether each was added.
    fn push_inbox_many(&self, items: &[InboxItem<'_>]) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;

    /// Marks a message of the inbox read (the caller checked that it is there).
    fn mark_read(&self, subject: &SubjectId, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reserves pushes, in order, atomically per push: not a duplicate in either lane
    /// ([`Dedupe`]) and within the caps of its lane ([`rules`]); a reservation made also writes
    /// its outbox entry, in the same atomic step, under the subject's own data.
    fn reserve_many(
        &self,
        items: &[Reservation<'_>],
        now: i64,
        caps: &Caps,
    ) -> impl Future<Output = Result<Vec<Result<(), Skip>>, StoreError>> + Send;

    /// Forgets reservations and their outbox entries (an operator's or a test's undo).
    fn release(&self, items: &[Reservation<'_>]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes the outbox entries of pushes now in the queue, by (subject, push id). Missing
    /// entries are no error (a recovery pass may have cleared them).
    fn clear_outbox(&self, items: &[(&SubjectId, &str)]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The outbox entries of `subjects` waiting at least [`OUTBOX_GRACE_MS`] at `now_ms`
    /// (wall-clock milliseconds), each marked taken at `now_ms` atomically per subject
    /// ([`rules::take_stale`]): the recovery pass enqueues them, then clears them.
    fn take_outbox(
        &self,
        subjects: &[&SubjectId],
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Pending>, StoreError>> + Send;

    /// One page of subjects that have a profile. Start with cursor 0; the page returning
    /// cursor 0 is the last. A subject written during the scan may be missed or seen twice.
    fn page(&self, cursor: u64) -> impl Future<Output = Result<(u64, Vec<SubjectData>), StoreError>> + Send;

    /// Appends an entry to the audit log, as durably as the backend's other writes. The log
    /// keeps the newest [`AUDIT_KEEP`] entries; older ones are dropped. [`Backend::erase`]
    /// never deletes entries: the log is the record of who looked at a subject, and must
    /// outlive the data looked at.
    fn audit(&self, entry: &AuditEntry) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The newest `n` entries, newest first (in the order they were written).
    fn audit_log(&self, n: usize) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send;

    /// Takes or renews the lease `name` for `holder` for `ttl_ms`; true when `holder` holds it
    /// after the call. Among several processes sharing a backend, one at a time does the job the
    /// lease guards (the periodic scan); a holder that dies loses it when it expires.
    fn lease(&self, name: &str, holder: &str, ttl_ms: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// A store: one of the backends. Only delegates.
// One store per process, behind an `Arc`: the size of the Redis variant (its scripts) costs
// nothing, and boxing it would only add an indirection to every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Store {
    Disk(DiskStore),
    Memory(MemoryStore),
    Redis(RedisStore),
}

macro_rules! delegate {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Store::Disk($b) => $call,
            Store::Memory($b) => $call,
            Store::Redis($b) => $call,
        }
    };
}

impl Store {
    pub fn memory() -> Store {
        Store::Memory(MemoryStore::default())
    }

    /// The durable embedded store in `dir` (created if missing); see [`DiskStore::open`].
    pub fn disk(dir: &std::path::Path) -> Result<Store, StoreError> {
        Ok(Store::Disk(DiskStore::open(dir)?))
    }

    /// The database file of the disk store.
    pub fn disk_path(&self) -> Option<&std::path::Path> {
        match self {
            Store::Disk(d) => Some(d.path()),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Disk(_) => "disk",
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, b => b.ping().await)
    }

    pub async fn profile(&self, subject: &SubjectId) -> Result<Option<Profile>, StoreError> {
        delegate!(self, b => b.profile(subject).await)
    }

    /// Applies one subject's batch at wall time.
    pub async fn apply(&self, batch: &Batch<'_>, ctx: &ProfileContext, segment: u16) -> Result<Applied, StoreError> {
        let now = (crate::clock::wall_ms() / 1000) as i64;
        Ok(self.apply_many(std::slice::from_ref(batch), &[segment], ctx, now).await?.swap_remove(0))
    }

    /// See [`Backend::apply_many`]; `now` is wall time (ingest passes the wall clock, not the
    /// policy clock, as Redis expires on its own wall clock).
    pub async fn apply_many(
        &self,
        batches: &[Batch<'_>],
        segments: &[u16],
        ctx: &ProfileContext,
        now: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        delegate!(self, b => b.apply_many(batches, segments, ctx, now).await)
    }

    pub async fn import_profile(&self, subject: &SubjectId, profile: &Profile) -> Result<bool, StoreError> {
        delegate!(self, b => b.import_profile(subject, profile).await)
    }

    /// See [`Backend::import_profiles`].
    pub async fn import_profiles(&self, items: &[(&SubjectId, &Profile)]) -> Result<Vec<bool>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, b => b.import_profiles(items).await)
    }

    pub async fn erase(&self, subject: &SubjectId) -> Result<bool, StoreError> {
        delegate!(self, b => b.erase(subject).await)
    }

    /// The subject's profile and preferences, in one round trip.
    pub async fn profile_and_prefs(&self, subject: &SubjectId) -> Result<ProfileAndPrefs, StoreError> {
        Ok(self.profiles_and_prefs(&[subject]).await?.pop().expect("one subject, one answer"))
    }

    /// Profiles and preferences of several subjects, failing if any fails.
    pub async fn profiles_and_prefs(&self, subjects: &[&SubjectId]) -> Result<Vec<ProfileAndPrefs>, StoreError> {
        self.profiles_and_prefs_each(subjects).await?.into_iter().collect()
    }

    /// See [`Backend::profiles_and_prefs_each`].
    pub async fn profiles_and_prefs_each(
        &self,
        subjects: &[&SubjectId],
    ) -> Result<Vec<Result<ProfileAndPrefs, StoreError>>, StoreError> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, b => b.profiles_and_prefs_each(subjects).await)
    }

    pub async fn put_prefs(&self, subject: &SubjectId, prefs: &Preferences) -> Result<(), StoreError> {
        delegate!(self, b => b.put_prefs(subject, prefs).await)
    }

    pub async fn inbox(&self, subject: &SubjectId) -> Result<Vec<InboxMessage>, StoreError> {
        delegate!(self, b => b.inbox(subject).await)
    }

    /// Adds one message; see [`Backend::push_inbox_many`].
    pub async fn push_inbox(
        &self,
        subject: &SubjectId,
        message: &InboxMessage,
        ttl_secs: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.push_inbox_many(&[InboxItem { subject, message, ttl_secs }]).await?[0])
    }

    pub async fn push_inbox_many(&self, items: &[InboxItem<'_>]) -> Result<Vec<bool>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, b => b.push_inbox_many(items).await)
    }

    /// Marks a message read; false when the inbox has no such message.
    pub async fn mark_read(&self, subject: &SubjectId, id: &str) -> Result<bool, StoreError> {
        if !self.inbox(subject).await?.iter().any(|m| m.id == id) {
            return Ok(false);
        }
        delegate!(self, b => b.mark_read(subject, id).await)?;
        Ok(true)
    }

    /// Reserves one push; see [`Backend::reserve_many`].
    pub async fn reserve(
        &self,
        subject: &SubjectId,
        id: &str,
        now: i64,
        caps: &Caps,
        critical: bool,
    ) -> Result<Result<(), Skip>, StoreError> {
        Ok(self.reserve_many(&[Reservation::by_id(subject, id, critical)], now, caps).await?[0])
    }

    pub async fn reserve_many(
        &self,
        items: &[Reservation<'_>],
        now: i64,
        caps: &Caps,
    ) -> Result<Vec<Result<(), Skip>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, b => b.reserve_many(items, now, caps).await)
    }

    pub async fn release(&self, items: &[Reservation<'_>]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        delegate!(self, b => b.release(items).await)
    }

    /// See [`Backend::clear_outbox`].
    pub async fn clear_outbox(&self, items: &[(&SubjectId, &str)]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        delegate!(self, b => b.clear_outbox(items).await)
    }

    /// See [`Backend::take_outbox`].
    pub async fn take_outbox(&self, subjects: &[&SubjectId], now_ms: u64) -> Result<Vec<Pending>, StoreError> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, b => b.take_outbox(subjects, now_ms).await)
    }

    pub async fn page(&self, cursor: u64) -> Result<(u64, Vec<SubjectData>), StoreError> {
        delegate!(self, b => b.page(cursor).await)
    }

    /// See [`Backend::audit`].
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        delegate!(self, b => b.audit(entry).await)
    }

    /// See [`Backend::lease`].
    pub async fn lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        delegate!(self, b => b.lease(name, holder, ttl_ms).await)
    }

    /// See [`Backend::audit_log`].
    pub async fn audit_log(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        delegate!(self, b => b.audit_log(n).await)
    }
}

/// Whether a stored profile is one (an entry may hold only preferences, an inbox or
/// reservations, or an empty profile). Shared by the embedded backends.
pub(crate) fn has_profile(p: &Profile) -> bool {
    p.events() > 0 || !p.services().is_empty()
}

/// Applies a batch's events to a profile; `seen[i]` says whether event `i`'s id was seen
/// before. Returns the counts and the ids newly applied. Shared by every backend.
pub(crate) fn apply_events<'b>(
    profile: &mut Profile,
    batch: &Batch<'b>,
    seen: &[bool],
    ctx: &ProfileContext,
) -> (Applied, Vec<&'b str>) {
    let mut out = Applied::default();
    let mut new_ids: Vec<&str> = Vec::new();
    for (i, ((e, id), was)) in batch.events.iter().zip(batch.ids).zip(seen).enumerate() {
        if *was || new_ids.contains(&id.as_str()) {
            out.duplicates += 1;
            continue;
        }
        let late = profile.too_late();
        if profile.apply(e, ctx) {
            out.accepted += 1;
            out.accepted_at.push(i as u32);
            new_ids.push(id);
        } else if profile.too_late() > late {
            out.too_late += 1;
        } else {
            out.duplicates += 1;
        }
    }
    (out, new_ids)
}
