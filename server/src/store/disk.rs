//! The durable embedded store: one [redb](https://docs.rs/redb) database file, `store.redb`, in
//! the data directory. The default of `serve` without `--redis`: what a subject told us (an
//! opt-out above all) survives a restart and a crash.
//!
//! Tables mirror the Redis keys: `profiles` (profile bytes, keyed by (page, subject) so that
//! [`Backend::page`] reads one range), `seen_at` (event ids seen, keyed by (subject, id), the
//! time first seen as value) with `seen_order` (the same by (subject, time, id), so that the
//! oldest are one range to forget) and `seen_count` (ids per subject, for the cap), `prefs`
//! (preferences JSON), `inbox` (the messages JSON, read marks in them), `sent` (reservations
//! JSON), `outbox` (reserved pushes whose enqueue is not confirmed: JSON, written in the
//! reservation's transaction) and `erased` (the subject was erased: a bulk import never brings it back; holds no data
//! but the fact), and `audit` (the operators' audit log: sequence -> entry JSON, the newest
//! [`super::AUDIT_KEEP`]; an erasure leaves it alone). The rules are the memory store's, run on the same data ([`super::rules`],
//! [`super::apply_events`]).
//!
//! Durability: every call that writes is one write transaction committed with
//! [`Durability::Immediate`] (an fsync) before it returns, so an acknowledged write is on disk; a
//! slice (`apply_many`, `push_inbox_many`, `reserve_many`, `import_profiles`) is one transaction
//! and so one fsync, and is atomic as a whole. redb runs one write transaction at a time, which
//! makes every operation atomic per subject with no compare-and-set. The blocking work runs on
//! tokio's blocking pool, never on the async workers.
//!
//! Event ids are forgotten [`super::SEEN_TTL_SECS`] after they were first seen and beyond
//! [`super::SEEN_CAP`] per subject (the oldest first), as in every backend; the forgetting runs
//! when a subject's batch adds ids. A file written before `seen_at` existed has its `seen` table
//! moved over at open, each id as first seen then (so it is remembered 30 more days).
//!
//! Reservations written by the first version (`[id, at, critical]` arrays) still read
//! ([`rules::Sent`]); as on Redis, a next step pushed in the `dedup_days` before an upgrade may go
//! once more after it, its old id having carried a fixed window.
//!
//! Known limit of this version, as in the memory store: inbox messages leave by the cap, not by
//! their time to live.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tongban_features::domain::SubjectId;
use tongban_features::io::{fnv1a, LogEvent};
use tongban_features::profile::{Profile, ProfileContext};

use super::rules::{self, Pending, Sent};
use super::{
    apply_events, has_profile, Applied, AuditEntry, Backend, Batch, InboxItem, ProfileAndPrefs, Reservation,
    StoreError, SubjectData, AUDIT_KEEP,
};
use crate::push::{Caps, InboxMessage, Preferences, Skip};

const PROFILES: TableDefinition<(u16, &str), &[u8]> = TableDefinition::new("profiles");
/// (subject, event id) -> first seen (wall-clock Unix seconds).
const SEEN: TableDefinition<(&str, &str), i64> = TableDefinition::new("seen_at");
/// (subject, first seen, event id): the order in which ids are forgotten.
const SEEN_ORDER: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("seen_order");
/// subject -> how many ids `seen_at` holds for it.
const SEEN_COUNT: TableDefinition<&str, u64> = TableDefinition::new("seen_count");
/// The first version's table of ids seen, with no times: migrated at open.
const SEEN_V1: TableDefinition<(&str, &str), ()> = TableDefinition::new("seen");
const PREFS: TableDefinition<&str, &str> = TableDefinition::new("prefs");
const INBOX: TableDefinition<&str, &str> = TableDefinition::new("inbox");
const SENT: TableDefinition<&str, &str> = TableDefinition::new("sent");
const OUTBOX: TableDefinition<&str, &str> = TableDefinition::new("outbox");
const ERASED: TableDefinition<&str, ()> = TableDefinition::new("erased");
const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");

/// Pages of [`Backend::page`]: subjects are spread over them by a hash of their id.
const PAGES: u16 = 256;

/// The file of the store in the data directory.
pub const STORE_FILE: &str = "store.redb";

fn page_of(subject: &str) -> u16 {
    (fnv1a(subject.as_bytes()) % u64::from(PAGES)) as u16
}

/// An open redb file and its path, for messages.
#[derive(Debug)]
pub(crate) struct DbFile {
    db: Database,
    path: PathBuf,
}

impl DbFile {
    /// Opens (or creates) `dir/file`, creating `dir` and the `tables` if missing. A file another
    /// process holds is refused with a message naming the directory.
    pub(crate) fn open(
        dir: &Path,
        file: &str,
        tables: impl FnOnce(&WriteTransaction) -> Result<(), redb::TableError>,
    ) -> Result<DbFile, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create the data directory {}: {e}", dir.display())))?;
        let path = dir.join(file);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "data directory {} is in use by another tongban process ({} is locked); stop it, or give \
                 this one its own --data directory",
                dir.display(),
                path.display()
            )),
            e => StoreError::Unavailable(format!("cannot open {} (a redb database file): {e}", path.display())),
        })?;
        let f = DbFile { db, path };
        f.write(|txn| tables(txn).map_err(StoreError::from))?;
        Ok(f)
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("{}: {e}", self.path.display()))
    }

    /// Runs `f` in one write transaction and commits it durably: the data is on disk (fsync)
    /// when this returns. An error aborts the transaction (nothing of it is written).
    pub(crate) fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        // Immediate is redb's default; said here because the acknowledgement depends on it.
        txn.set_durability(Durability::Immediate).map_err(|e| self.err(e))?;
        let out = f(&txn)?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// [`DbFile::write`] for a call that may change nothing (a replayed batch, a duplicate):
    /// `f` answers whether it wrote, and a transaction that wrote nothing is aborted rather
    /// than committed, so an idempotent replay costs no fsync.
    pub(crate) fn write_changed<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| self.err(e))?;
        let (out, changed) = f(&txn)?;
        if changed {
            txn.commit().map_err(|e| self.err(e))?;
        } else {
            txn.abort().map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

    /// Runs `f` on a consistent snapshot.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        f(&txn)
    }
}

/// Runs blocking database work on tokio's blocking pool (a commit waits for the disk).
pub(crate) async fn blocking<T: Send + 'static>(
    db: &Arc<DbFile>,
    f: impl FnOnce(&DbFile) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StoreError::Unavailable(format!("embedded database task failed: {e}")))?
}

/// A JSON value of a table, if any; unreadable JSON is an error naming the table.
pub(crate) fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static str>,
    name: &str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(v) => serde_json::from_str(v.value())
            .map(Some)
            .map_err(|e| StoreError::Unavailable(format!("embedded database: unreadable {name} of {key}: {e}"))),
        None => Ok(None),
    }
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("stored values always serialise")
}

/// The durable embedded store.
#[derive(Debug, Clone)]
pub struct DiskStore {
    db: Arc<DbFile>,
}

/// One reservation, owned (it crosses to the blocking pool).
struct OwnedReservation {
    subject: SubjectId,
    id: String,
    critical: bool,
    key: String,
    horizon_secs: i64,
    pending: Option<Pending>,
}

impl OwnedReservation {
    fn of(it: &Reservation<'_>) -> OwnedReservation {
        OwnedReservation {
            subject: it.subject.clone(),
            id: it.id.to_owned(),
            critical: it.critical,
            key: it.dedupe.key.to_owned(),
            horizon_secs: it.dedupe.horizon_secs,
            pending: it.outbox.cloned(),
        }
    }
}

/// Deletes outbox entries by (subject, push id); answers whether any was there.
fn remove_from_outbox(txn: &WriteTransaction, items: &[(SubjectId, String)]) -> Result<bool, StoreError> {
    let mut outbox = txn.open_table(OUTBOX)?;
    let mut changed = false;
    for (s, id) in items {
        let Some(mut pending) = get_json::<Vec<Pending>>(&outbox, "outbox", s.as_str())? else { continue };
        let before = pending.len();
        pending.retain(|p| &p.job.message.id != id);
        if pending.len() == before {
            continue;
        }
        changed = true;
        if pending.is_empty() {
            outbox.remove(s.as_str())?;
        } else {
            outbox.insert(s.as_str(), to_json(&pending).as_str())?;
        }
    }
    Ok(changed)
}

/// One subject's batch, owned (it crosses to the blocking pool).
struct OwnedBatch {
    subject: SubjectId,
    events: Vec<LogEvent>,
    ids: Vec<String>,
    segment: u16,
}

impl DiskStore {
    /// Opens the store in `dir` (created if missing), or fails naming the directory, also when
    /// another process has it open.
    pub fn open(dir: &Path) -> Result<DiskStore, StoreError> {
        let db = DbFile::open(dir, STORE_FILE, |txn| {
            txn.open_table(PROFILES)?;
            txn.open_table(SEEN)?;
            txn.open_table(SEEN_ORDER)?;
            txn.open_table(SEEN_COUNT)?;
            txn.open_table(PREFS)?;
            txn.open_table(INBOX)?;
            txn.open_table(SENT)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(ERASED)?;
            txn.open_table(AUDIT)?;
            Ok(())
        })?;
        db.write(|txn| migrate_seen_v1(txn, (crate::clock::wall_ms() / 1000) as i64))?;
        Ok(DiskStore { db: Arc::new(db) })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.db.path
    }
}

/// Moves the ids of a first-version `seen` table (no times) to `seen_at`, as first seen at
/// `now`, and drops it; nothing to do on a file without one.
fn migrate_seen_v1(txn: &WriteTransaction, now: i64) -> Result<(), StoreError> {
    if !txn.list_tables()?.any(|t| t.name() == SEEN_V1.name()) {
        return Ok(());
    }
    let old: Vec<(String, String)> = txn
        .open_table(SEEN_V1)?
        .iter()?
        .map(|kv| {
            let (k, _) = kv?;
            let (s, id) = k.value();
            Ok((s.to_owned(), id.to_owned()))
        })
        .collect::<Result<_, StoreError>>()?;
    let mut seen = txn.open_table(SEEN)?;
    let mut order = txn.open_table(SEEN_ORDER)?;
    let mut counts = txn.open_table(SEEN_COUNT)?;
    for (s, id) in &old {
        if seen.insert((s.as_str(), id.as_str()), now)?.is_none() {
            order.insert((s.as_str(), now, id.as_str()), ())?;
            let n = counts.get(s.as_str())?.map_or(0, |v| v.value());
            counts.insert(s.as_str(), n + 1)?;
        }
    }
    drop((seen, order, counts));
    txn.delete_table(SEEN_V1)?;
    Ok(())
}

/// Records `ids` of subject `s` as first seen at `now`, then forgets its ids expired at `now`
/// and the oldest beyond [`rules::SEEN_CAP`] (one range read from the oldest, stopping at the
/// first id kept).
fn remember_seen(
    seen: &mut redb::Table<(&'static str, &'static str), i64>,
    order: &mut redb::Table<(&'static str, i64, &'static str), ()>,
    counts: &mut redb::Table<&'static str, u64>,
    s: &str,
    ids: &[&str],
    now: i64,
) -> Result<(), StoreError> {
    let mut n = counts.get(s)?.map_or(0, |v| v.value());
    for &id in ids {
        let before = seen.insert((s, id), now)?.map(|v| v.value());
        match before {
            Some(at) => {
                order.remove((s, at, id))?;
            }
            None => n += 1,
        }
        order.insert((s, now, id), ())?;
    }
    let mut forget: Vec<(i64, String)> = Vec::new();
    for kv in order.range((s, i64::MIN, "")..)? {
        let (k, _) = kv?;
        let (owner, at, id) = k.value();
        let left = n - forget.len() as u64;
        if owner != s || (rules::still_seen(at, now) && left <= rules::SEEN_CAP as u64) {
            break;
        }
        forget.push((at, id.to_owned()));
    }
    for (at, id) in &forget {
        order.remove((s, *at, id.as_str()))?;
        seen.remove((s, id.as_str()))?;
    }
    counts.insert(s, n - forget.len() as u64)?;
    Ok(())
}

/// Deletes every id seen of subject `s`; answers whether there was any.
fn erase_seen(txn: &WriteTransaction, s: &str) -> Result<bool, StoreError> {
    let mut order = txn.open_table(SEEN_ORDER)?;
    let mut ids: Vec<(i64, String)> = Vec::new();
    for kv in order.range((s, i64::MIN, "")..)? {
        let (k, _) = kv?;
        let (owner, at, id) = k.value();
        if owner != s {
            break;
        }
        ids.push((at, id.to_owned()));
    }
    let mut seen = txn.open_table(SEEN)?;
    for (at, id) in &ids {
        order.remove((s, *at, id.as_str()))?;
        seen.remove((s, id.as_str()))?;
    }
    txn.open_table(SEEN_COUNT)?.remove(s)?;
    Ok(!ids.is_empty())
}

/// The stored profile of `subject` (an empty one counts as none).
fn stored_profile(
    profiles: &impl ReadableTable<(u16, &'static str), &'static [u8]>,
    subject: &str,
) -> Result<Option<Profile>, StoreError> {
    match profiles.get((page_of(subject), subject))? {
        Some(v) => Ok(Some(Profile::decode(v.value())?).filter(has_profile)),
        None => Ok(None),
    }
}

/// Preferences are validated before they are stored; unreadable ones fall back to the defaults
/// rather than failing suggestions (as on Redis).
fn stored_prefs(
    prefs: &impl ReadableTable<&'static str, &'static str>,
    subject: &str,
) -> Result<Option<Preferences>, StoreError> {
    Ok(prefs.get(subject)?.and_then(|v| serde_json::from_str(v.value()).ok()))
}

impl Backend for DiskStore {
    async fn ping(&self) -> Result<(), StoreError> {
        blocking(&self.db, |db| db.read(|txn| txn.open_table(ERASED).map(drop).map_err(StoreError::from))).await
    }

    async fn profile(&self, subject: &SubjectId) -> Result<Option<Profile>, StoreError> {
        let s = subject.clone();
        blocking(&self.db, move |db| db.read(|txn| stored_profile(&txn.open_table(PROFILES)?, s.as_str()))).await
    }

    async fn apply_many(
        &self,
        batches: &[Batch<'_>],
        segments: &[u16],
        ctx: &ProfileContext,
        now: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        let owned: Vec<OwnedBatch> = batches
            .iter()
            .zip(segments)
            .map(|(b, &segment)| OwnedBatch {
                subject: b.subject.clone(),
                events: b.events.to_vec(),
                ids: b.ids.to_vec(),
                segment,
            })
            .collect();
        let ctx = ctx.clone();
        blocking(&self.db, move |db| {
            db.write_changed(|txn| {
                let mut profiles = txn.open_table(PROFILES)?;
                let mut seen = txn.open_table(SEEN)?;
                let mut order = txn.open_table(SEEN_ORDER)?;
                let mut counts = txn.open_table(SEEN_COUNT)?;
                let mut out = Vec::with_capacity(owned.len());
                let mut changed = false;
                for b in &owned {
                    let s = b.subject.as_str();
                    let key = (page_of(s), s);
                    let mut profile = match profiles.get(key)? {
                        Some(v) => Profile::decode(v.value())?,
                        None => Profile::new(b.segment),
                    };
                    let was = b
                        .ids
                        .iter()
                        .map(|id| Ok(seen.get((s, id.as_str()))?.is_some_and(|at| rules::still_seen(at.value(), now))))
                        .collect::<Result<Vec<bool>, StoreError>>()?;
                    let batch = Batch { subject: &b.subject, events: &b.events, ids: &b.ids };
                    let (applied, new_ids) = apply_events(&mut profile, &batch, &was, &ctx);
                    // As on Redis: only an accepted event changes what is stored.
                    if applied.accepted > 0 {
                        changed = true;
                        profiles.insert(key, profile.encode().as_slice())?;
                        remember_seen(&mut seen, &mut order, &mut counts, s, &new_ids, now)?;
                    }
                    out.push(applied);
                }
                Ok((out, changed))
            })
        })
        .await
    }

    async fn import_profile(&self, subject: &SubjectId, profile: &Profile) -> Result<bool, StoreError> {
        Ok(self.import_profiles(&[(subject, profile)]).await?[0])
    }

    /// One transaction for the whole slice; a slice that stores nothing (a restart importing the
    /// same log) commits nothing.
    async fn import_profiles(&self, items: &[(&SubjectId, &Profile)]) -> Result<Vec<bool>, StoreError> {
        let owned: Vec<(SubjectId, Vec<u8>)> = items.iter().map(|(s, p)| ((*s).clone(), p.encode())).collect();
        blocking(&self.db, move |db| {
            let keep = db.read(|txn| {
                let profiles = txn.open_table(PROFILES)?;
                let erased = txn.open_table(ERASED)?;
                owned
                    .iter()
                    .map(|(s, _)| {
                        let s = s.as_str();
                        Ok(erased.get(s)?.is_none() && stored_profile(&profiles, s)?.is_none())
                    })
                    .collect::<Result<Vec<bool>, StoreError>>()
            })?;
            if !keep.contains(&true) {
                return Ok(keep);
            }
            // Checked again inside the write: a live write may have come in between.
            db.write(|txn| {
                let mut profiles = txn.open_table(PROFILES)?;
                let erased = txn.open_table(ERASED)?;
                let mut out = Vec::with_capacity(owned.len());
                for ((s, bytes), candidate) in owned.iter().zip(keep) {
                    let s = s.as_str();
                    let store = candidate && erased.get(s)?.is_none() && stored_profile(&profiles, s)?.is_none();
                    if store {
                        profiles.insert((page_of(s), s), bytes.as_slice())?;
                    }
                    out.push(store);
                }
                Ok(out)
            })
        })
        .await
    }

    async fn erase(&self, subject: &SubjectId) -> Result<bool, StoreError> {
        let s = subject.clone();
        blocking(&self.db, move |db| {
            db.write(|txn| {
                let s = s.as_str();
                let mut existed = false;
                let mut profiles = txn.open_table(PROFILES)?;
                existed |= profiles
                    .remove((page_of(s), s))?
                    .is_some_and(|v| Profile::decode(v.value()).map_or(true, |p| has_profile(&p)));
                for def in [PREFS, INBOX, SENT, OUTBOX] {
                    existed |= txn.open_table(def)?.remove(s)?.is_some();
                }
                existed |= erase_seen(txn, s)?;
                txn.open_table(ERASED)?.insert(s, ())?;
                Ok(existed)
            })
        })
        .await
    }

    async fn profiles_and_prefs_each(
        &self,
        subjects: &[&SubjectId],
    ) -> Result<Vec<Result<ProfileAndPrefs, StoreError>>, StoreError> {
        let owned: Vec<SubjectId> = subjects.iter().map(|s| (*s).clone()).collect();
        blocking(&self.db, move |db| {
            db.read(|txn| {
                let profiles = txn.open_table(PROFILES)?;
                let prefs = txn.open_table(PREFS)?;
                Ok(owned
                    .iter()
                    .map(|s| Ok((stored_profile(&profiles, s.as_str())?, stored_prefs(&prefs, s.as_str())?)))
                    .collect())
            })
        })
        .await
    }

    async fn put_prefs(&self, subject: &SubjectId, prefs: &Preferences) -> Result<(), StoreError> {
        let (s, json) = (subject.clone(), to_json(prefs));
        blocking(&self.db, move |db| {
            db.write(|txn| {
                txn.open_table(PREFS)?.insert(s.as_str(), json.as_str())?;
                Ok(())
            })
        })
        .await
    }

    async fn inbox(&self, subject: &SubjectId) -> Result<Vec<InboxMessage>, StoreError> {
        let s = subject.clone();
        let mut out: Vec<InboxMessage> = blocking(&self.db, move |db| {
            db.read(|txn| Ok(get_json(&txn.open_table(INBOX)?, "inbox", s.as_str())?.unwrap_or_default()))
        })
        .await?;
        rules::newest_first(&mut out);
        Ok(out)
    }

    async fn push_inbox_many(&self, items: &[InboxItem<'_>]) -> Result<Vec<bool>, StoreError> {
        let owned: Vec<(SubjectId, InboxMessage)> =
            items.iter().map(|it| (it.subject.clone(), it.message.clone())).collect();
        blocking(&self.db, move |db| {
            db.write_changed(|txn| {
                let mut table = txn.open_table(INBOX)?;
                let mut out = Vec::with_capacity(owned.len());
                for (s, message) in &owned {
                    let mut inbox: Vec<InboxMessage> = get_json(&table, "inbox", s.as_str())?.unwrap_or_default();
                    let added = rules::add_to_inbox(&mut inbox, message);
                    if added {
                        table.insert(s.as_str(), to_json(&inbox).as_str())?;
                    }
                    out.push(added);
                }
                let changed = out.contains(&true);
                Ok((out, changed))
            })
        })
        .await
    }

    async fn mark_read(&self, subject: &SubjectId, id: &str) -> Result<(), StoreError> {
        let (s, id) = (subject.clone(), id.to_owned());
        blocking(&self.db, move |db| {
            db.write_changed(|txn| {
                let mut table = txn.open_table(INBOX)?;
                let mut inbox: Vec<InboxMessage> = get_json(&table, "inbox", s.as_str())?.unwrap_or_default();
                match inbox.iter_mut().find(|m| m.id == id && !m.read) {
                    Some(m) => {
                        m.read = true;
                        table.insert(s.as_str(), to_json(&inbox).as_str())?;
                        Ok(((), true))
                    }
                    None => Ok(((), false)),
                }
            })
        })
        .await
    }

    async fn reserve_many(
        &self,
        items: &[Reservation<'_>],
        now: i64,
        caps: &Caps,
    ) -> Result<Vec<Result<(), Skip>>, StoreError> {
        let owned: Vec<OwnedReservation> = items.iter().map(OwnedReservation::of).collect();
        let caps = *caps;
        blocking(&self.db, move |db| {
            db.write_changed(|txn| {
                let mut table = txn.open_table(SENT)?;
                let mut outbox = txn.open_table(OUTBOX)?;
                let mut out = Vec::with_capacity(owned.len());
                for o in &owned {
                    let s = o.subject.as_str();
                    let mut sent: Vec<Sent> = get_json(&table, "reservations", s)?.unwrap_or_default();
                    let it = Reservation {
                        subject: &o.subject,
                        id: &o.id,
                        critical: o.critical,
                        dedupe: rules::Dedupe { key: &o.key, horizon_secs: o.horizon_secs },
                        outbox: o.pending.as_ref(),
                    };
                    let r = rules::reserve(&mut sent, &it, now, &caps);
                    if r.is_ok() {
                        table.insert(s, to_json(&sent).as_str())?;
                        if let Some(p) = &o.pending {
                            let mut pending: Vec<Pending> = get_json(&outbox, "outbox", s)?.unwrap_or_default();
                            pending.push(p.clone());
                            outbox.insert(s, to_json(&pending).as_str())?;
                        }
                    }
                    out.push(r);
                }
                let changed = out.iter().any(Result::is_ok);
                Ok((out, changed))
            })
        })
        .await
    }

    async fn release(&self, items: &[Reservation<'_>]) -> Result<(), StoreError> {
        let owned: Vec<(SubjectId, String)> = items.iter().map(|it| (it.subject.clone(), it.id.to_owned())).collect();
        blocking(&self.db, move |db| {
            db.write(|txn| {
                let mut table = txn.open_table(SENT)?;
                for (s, id) in &owned {
                    let Some(mut sent) = get_json::<Vec<Sent>>(&table, "reservations", s.as_str())? else { continue };
                    sent.retain(|x| &x.id != id);
                    table.insert(s.as_str(), to_json(&sent).as_str())?;
                }
                drop(table);
                remove_from_outbox(txn, &owned)?;
                Ok(())
            })
        })
        .await
    }

    async fn clear_outbox(&self, items: &[(&SubjectId, &str)]) -> Result<(), StoreError> {
        let owned: Vec<(SubjectId, String)> = items.iter().map(|(s, id)| ((*s).clone(), (*id).to_owned())).collect();
        blocking(&self.db, move |db| db.write_changed(|txn| Ok(((), remove_from_outbox(txn, &owned)?)))).await
    }

    async fn take_outbox(&self, subjects: &[&SubjectId], now_ms: u64) -> Result<Vec<Pending>, StoreError> {
        let owned: Vec<SubjectId> = subjects.iter().map(|s| (*s).clone()).collect();
        blocking(&self.db, move |db| {
            db.write_changed(|txn| {
                let mut outbox = txn.open_table(OUTBOX)?;
                let mut out = Vec::new();
                for s in &owned {
                    let Some(mut pending) = get_json::<Vec<Pending>>(&outbox, "outbox", s.as_str())? else { continue };
                    let taken = rules::take_stale(&mut pending, now_ms);
                    if !taken.is_empty() {
                        outbox.insert(s.as_str(), to_json(&pending).as_str())?;
                        out.extend(taken);
                    }
                }
                let changed = !out.is_empty();
                Ok((out, changed))
            })
        })
        .await
    }

    async fn page(&self, cursor: u64) -> Result<(u64, Vec<SubjectData>), StoreError> {
        let Ok(page) = u16::try_from(cursor) else { return Ok((0, Vec::new())) };
        if page >= PAGES {
            return Ok((0, Vec::new()));
        }
        let out = blocking(&self.db, move |db| {
            db.read(|txn| {
                let profiles = txn.open_table(PROFILES)?;
                let prefs = txn.open_table(PREFS)?;
                let mut out = Vec::new();
                for kv in profiles.range((page, "")..(page + 1, ""))? {
                    let (k, v) = kv?;
                    let (_, id) = k.value();
                    let profile = Profile::decode(v.value())?;
                    if !has_profile(&profile) {
                        continue;
                    }
                    let subject = SubjectId::parse(id).map_err(|e| {
                        StoreError::Unavailable(format!("embedded database: stored subject id {id:?}: {e}"))
                    })?;
                    let p = stored_prefs(&prefs, id)?;
                    out.push((subject, profile, p));
                }
                Ok(out)
            })
        })
        .await?;
        let next = if page + 1 < PAGES { u64::from(page) + 1 } else { 0 };
        Ok((next, out))
    }

    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let json = to_json(entry);
        blocking(&self.db, move |db| {
            db.write(|txn| {
                let mut table = txn.open_table(AUDIT)?;
                // One after the last: dropping the oldest never makes a sequence number reused.
                let seq = table.last()?.map_or(0, |(k, _)| k.value()) + 1;
                table.insert(seq, json.as_str())?;
                while table.len()? > AUDIT_KEEP as u64 {
                    table.pop_first()?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn audit_log(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        blocking(&self.db, move |db| {
            db.read(|txn| {
                let mut out = Vec::new();
                for kv in txn.open_table(AUDIT)?.iter()?.rev().take(n) {
                    let (k, v) = kv?;
                    out.push(serde_json::from_str(v.value()).map_err(|e| {
                        StoreError::Unavailable(format!("embedded database: unreadable audit entry {}: {e}", k.value()))
                    })?);
                }
                Ok(out)
            })
        })
        .await
    }

    /// One process owns this store (an embedded store is one process's), so it holds every lease.
    async fn lease(&self, _name: &str, _holder: &str, _ttl_ms: u64) -> Result<bool, StoreError> {
        Ok(true)
    }
}
