//! The Redis store, shared by replicas.
//!
//! Keys of one subject share a hash tag, so per-subject operations stay on one node of a
//! Redis Cluster: `tb:{u:<id>}:p` (profile bytes), `tb:{u:<id>}:v` (version counter, never
//! deleted, so a write prepared before an erasure cannot land after it), `tb:{u:<id>}:ids`
//! (event ids seen: a sorted set scored by the time each was first seen, trimmed as the embedded
//! stores trim theirs, `SEEN_TTL_SECS` and `SEEN_CAP`; the key expires `SEEN_TTL_SECS` after
//! the subject's last write). Migration: the first version kept a plain set `:e` that only
//! expired as a whole; it is still read (never written) so that ids seen before an upgrade stay
//! duplicates until it expires, at most `SEEN_TTL_SECS` later, and erasure deletes it. Pushes: `:prefs`
//! (preferences JSON), `:msgs` (the inbox: a hash of push id to message JSON, capped at
//! `INBOX_CAP`, expiring with its longest-lived message), `:read` (read marks), `:sent` and
//! `:crit` (push ids reserved per lane, scored by the time reserved, for de-duplication and
//! caps), `:dk` (de-duplication keys that are not a push id, the next steps', scored by their
//! last reservation: the sliding window), `:out` and `:outat` (the outbox: push id -> entry
//! JSON, and push id -> since, written by the reservation's script, deleted after the enqueue;
//! no expiry, a recovery pass clears what it enqueues), `:x` (the subject was
//! erased: a bulk import never brings it back; never expires, holds no data but the fact).
//! Migration of the reservations: `:sent` and `:crit` keep their first-version format and are
//! read as before (a push id is its own de-duplication key); `:dk`, `:out` and `:outat` are new
//! and start empty. First-version next-step ids carried a fixed window, which the new
//! de-duplication key does not match, so a next step pushed in the `dedup_days` before the
//! upgrade may go once more after it (one per subject and bundle, once).
//! The operators' audit log is one list, `tb:audit` (entry JSON, newest at the head, trimmed to
//! `AUDIT_KEEP`); an erasure leaves it alone.
//!
//! An update is optimistic: read the profile and its version, apply the events in Rust, then
//! `lua/cas.lua` writes the new profile and the seen ids only if the version did not move
//! (compare-and-set); on a conflict the update is retried. A write the store did not confirm is
//! an error, never a silent drop.

use std::collections::{HashMap, HashSet};

use redis::aio::ConnectionManager;
use redis::FromRedisValue;
use tongban_features::domain::SubjectId;
use tongban_features::profile::{Profile, ProfileContext};

use super::rules::{self, Pending, SEEN_CAP, SEEN_TTL_SECS, SENT_KEEP_SECS};
use super::{
    apply_events, Applied, AuditEntry, Backend, Batch, InboxItem, ProfileAndPrefs, Reservation, StoreError,
    SubjectData, AUDIT_KEEP,
};
use crate::push::{Caps, InboxMessage, Preferences, Skip};

const CAS: &str = include_str!("lua/cas.lua");
const IMPORT: &str = include_str!("lua/import.lua");
const RESERVE: &str = include_str!("lua/reserve.lua");
const LEASE: &str = include_str!("lua/lease.lua");
const OUTBOX: &str = include_str!("lua/outbox.lua");

/// How long start-up waits for a Redis that is loading its data (a large AOF takes a while).
const LOADING_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether a failed connection attempt met a Redis still loading its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Loading,
    No,
}

/// Rounds of compare-and-set conflicts before an update gives up with `Contention`.
const CAS_ROUNDS: usize = 16;

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    cas: redis::Script,
    import: redis::Script,
    reserve: redis::Script,
    lease: redis::Script,
    outbox: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// A Redis URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn unexpected(e: redis::ParsingError) -> StoreError {
    StoreError::Unavailable(format!("unexpected Redis reply: {e}"))
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// The keys of one subject.
struct Keys {
    profile: String,
    version: String,
    seen: String,
    /// The first version's set of ids seen (read until it expires, see the module docs).
    seen_v1: String,
    prefs: String,
    inbox: String,
    read: String,
    sent: String,
    crit: String,
    dedupe: String,
    outbox: String,
    outbox_at: String,
    erased: String,
}

/// A Redis server's persistence settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly yes`: every write is logged.
    pub append_only: bool,
    /// The snapshot schedule (`""`: none).
    pub save: String,
}

impl RedisStore {
    /// Connects (and checks the connection with PING). `prefix` namespaces keys (tests use one
    /// per test).
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        // A Redis that is loading its data after a restart answers LOADING: it will be ready,
        // so wait (a deployment restarting after a power cut starts tongban and Redis at once)
        // instead of failing the start-up.
        let started = std::time::Instant::now();
        let mut told = false;
        loop {
            match Self::connect_once(url, prefix).await {
                Err((Busy::Loading, e)) if started.elapsed() < LOADING_WAIT => {
                    if !told {
                        tracing::warn!(url = %redact(url), error = %e, "Redis is loading its data; waiting up to {} s", LOADING_WAIT.as_secs());
                        told = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err((_, e)) => return Err(e),
                Ok(s) => return Ok(s),
            }
        }
    }

    async fn connect_once(url: &str, prefix: &str) -> Result<RedisStore, (Busy, StoreError)> {
        let loading = |e: redis::RedisError| {
            let busy = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading);
            (if busy { Busy::Loading } else { Busy::No }, StoreError::from(e))
        };
        let client = redis::Client::open(url).map_err(|e| {
            (Busy::No, StoreError::Unavailable(format!("bad Redis URL {}: {}", redact(url), e.category())))
        })?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, cfg).await.map_err(loading)?;
        let s = RedisStore {
            conn,
            prefix: prefix.to_owned(),
            cas: redis::Script::new(CAS),
            import: redis::Script::new(IMPORT),
            reserve: redis::Script::new(RESERVE),
            lease: redis::Script::new(LEASE),
            outbox: redis::Script::new(OUTBOX),
        };
        let mut c = s.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await.map_err(loading)?;
        // The marker: set by the first tongban that used this Redis; if it is ever missing
        // later, Redis lost its data under us and `ping` (so `/readyz`) says so.
        let _: Option<String> = redis::cmd("SET")
            .arg(s.marker())
            .arg(crate::clock::wall_ms() / 1000)
            .arg("NX")
            .query_async(&mut c)
            .await
            .map_err(loading)?;
        s.load_scripts().await.map_err(|e| (Busy::No, e))?;
        Ok(s)
    }

    fn marker(&self) -> String {
        format!("{}tb:marker", self.prefix)
    }

    fn audit_key(&self) -> String {
        format!("{}tb:audit", self.prefix)
    }

    /// The connection and key prefix (the queue shares them).
    /// What this Redis keeps across its own restart (`CONFIG GET appendonly`, `save`).
    pub async fn persistence(&self) -> Result<Persistence, StoreError> {
        let mut c = self.conn.clone();
        let aof: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut c).await?;
        let save: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("save").query_async(&mut c).await?;
        Ok(Persistence {
            append_only: aof.get(1).is_some_and(|v| v == "yes"),
            save: save.get(1).cloned().unwrap_or_default(),
        })
    }

    pub fn connection(&self) -> (ConnectionManager, String) {
        (self.conn.clone(), self.prefix.clone())
    }

    async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        for script in [CAS, IMPORT, RESERVE, OUTBOX] {
            let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(script).query_async(&mut c).await?;
        }
        Ok(())
    }

    /// Runs a pipeline of `EVALSHA`s; if Redis restarted and forgot the scripts, loads them and
    /// runs it once more.
    async fn query_scripts<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut c = self.conn.clone();
        match pipe.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) if is_noscript(&e) => {
                self.load_scripts().await?;
                Ok(pipe.query_async(&mut c).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn keys(&self, subject: &SubjectId) -> Keys {
        let tag = format!("{}tb:{{u:{subject}}}", self.prefix);
        Keys {
            profile: format!("{tag}:p"),
            version: format!("{tag}:v"),
            seen: format!("{tag}:ids"),
            seen_v1: format!("{tag}:e"),
            prefs: format!("{tag}:prefs"),
            inbox: format!("{tag}:msgs"),
            read: format!("{tag}:read"),
            sent: format!("{tag}:sent"),
            crit: format!("{tag}:crit"),
            dedupe: format!("{tag}:dk"),
            outbox: format!("{tag}:out"),
            outbox_at: format!("{tag}:outat"),
            erased: format!("{tag}:x"),
        }
    }

    /// One round of optimistic updates of the `pending` batches: one pipeline of reads, one of
    /// compare-and-sets. Returns the batches whose compare-and-set lost a race.
    async fn apply_round(
        &self,
        batches: &[Batch<'_>],
        segments: &[u16],
        ctx: &ProfileContext,
        now: i64,
        pending: &[usize],
        results: &mut [Applied],
    ) -> Result<Vec<usize>, StoreError> {
        let mut c = self.conn.clone();
        let mut reads = redis::pipe();
        for &i in pending {
            let k = self.keys(batches[i].subject);
            reads.cmd("GET").arg(k.profile).cmd("GET").arg(k.version);
            reads.cmd("ZMSCORE").arg(k.seen).arg(batches[i].ids).cmd("SMISMEMBER").arg(k.seen_v1).arg(batches[i].ids);
        }
        let values: Vec<redis::Value> = reads.query_async(&mut c).await?;
        let mut writes = redis::pipe();
        let mut written = Vec::new();
        for (v, &i) in values.chunks(4).zip(pending) {
            let b = &batches[i];
            let bytes: Option<Vec<u8>> = FromRedisValue::from_redis_value(v[0].clone()).map_err(unexpected)?;
            let version: Option<String> = FromRedisValue::from_redis_value(v[1].clone()).map_err(unexpected)?;
            let first_seen: Vec<Option<f64>> = FromRedisValue::from_redis_value(v[2].clone()).map_err(unexpected)?;
            let seen_v1: Vec<bool> = FromRedisValue::from_redis_value(v[3].clone()).map_err(unexpected)?;
            let seen: Vec<bool> = first_seen
                .iter()
                .zip(&seen_v1)
                .map(|(at, &old)| old || at.is_some_and(|at| rules::still_seen(at as i64, now)))
                .collect();
            let mut profile = match bytes {
                Some(x) => Profile::decode(&x)?,
                None => Profile::new(segments[i]),
            };
            let (out, new_ids) = apply_events(&mut profile, b, &seen, ctx);
            let accepted = out.accepted;
            results[i] = out;
            if accepted > 0 {
                let k = self.keys(b.subject);
                writes
                    .cmd("EVALSHA")
                    .arg(self.cas.get_hash())
                    .arg(3)
                    .arg(k.profile)
                    .arg(k.version)
                    .arg(k.seen)
                    .arg(version.as_deref().unwrap_or("0"))
                    .arg(profile.encode())
                    .arg(SEEN_TTL_SECS)
                    .arg(now)
                    .arg(SEEN_CAP)
                    .arg(&new_ids);
                written.push(i);
            }
        }
        if written.is_empty() {
            return Ok(Vec::new());
        }
        let oks: Vec<i64> = match writes.query_async(&mut c).await {
            Ok(v) => v,
            // Redis restarted and forgot the script: load it and redo this round.
            Err(e) if is_noscript(&e) => {
                self.load_scripts().await?;
                return Ok(written);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(written.into_iter().zip(oks).filter(|&(_, ok)| ok != 1).map(|(i, _)| i).collect())
    }
}

impl Backend for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let present: bool = redis::cmd("EXISTS").arg(self.marker()).query_async(&mut c).await?;
        if present {
            Ok(())
        } else {
            Err(StoreError::Lost(format!(
                "the marker key {} that this tongban set at start-up is gone (Redis restarted without persistence, \
                 or was flushed)",
                self.marker()
            )))
        }
    }

    async fn profile(&self, subject: &SubjectId) -> Result<Option<Profile>, StoreError> {
        let mut c = self.conn.clone();
        let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(self.keys(subject).profile).query_async(&mut c).await?;
        Ok(bytes.map(|b| Profile::decode(&b)).transpose()?)
    }

    /// Two round trips for the whole request (reads, then compare-and-sets), plus one more per
    /// round of conflicts.
    async fn apply_many(
        &self,
        batches: &[Batch<'_>],
        segments: &[u16],
        ctx: &ProfileContext,
        now: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut results = vec![Applied::default(); batches.len()];
        let mut pending: Vec<usize> = (0..batches.len()).collect();
        for _ in 0..CAS_ROUNDS {
            if pending.is_empty() {
                return Ok(results);
            }
            pending = self.apply_round(batches, segments, ctx, now, &pending, &mut results).await?;
        }
        if pending.is_empty() {
            Ok(results)
        } else {
            Err(StoreError::Contention)
        }
    }

    async fn import_profile(&self, subject: &SubjectId, profile: &Profile) -> Result<bool, StoreError> {
        let k = self.keys(subject);
        let mut c = self.conn.clone();
        let stored: i64 = self
            .import
            .key(&k.profile)
            .key(&k.version)
            .key(&k.erased)
            .arg(profile.encode())
            .invoke_async(&mut c)
            .await?;
        Ok(stored == 1)
    }

    async fn erase(&self, subject: &SubjectId) -> Result<bool, StoreError> {
        let k = self.keys(subject);
        let mut c = self.conn.clone();
        let (n, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&k.profile)
            .arg(&k.seen)
            .arg(&k.seen_v1)
            .arg(&[&k.prefs, &k.inbox, &k.read, &k.sent, &k.crit, &k.dedupe, &k.outbox, &k.outbox_at])
            .cmd("INCR")
            .arg(&k.version)
            .cmd("SET")
            .arg(&k.erased)
            .arg(1)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(n > 0)
    }

    async fn profiles_and_prefs_each(
        &self,
        subjects: &[&SubjectId],
    ) -> Result<Vec<Result<ProfileAndPrefs, StoreError>>, StoreError> {
        let mut pipe = redis::pipe();
        for s in subjects {
            let k = self.keys(s);
            pipe.cmd("GET").arg(k.profile).cmd("GET").arg(k.prefs);
        }
        let mut c = self.conn.clone();
        let flat: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        let one = |pair: &[redis::Value]| -> Result<ProfileAndPrefs, StoreError> {
            let bytes: Option<Vec<u8>> = FromRedisValue::from_redis_value(pair[0].clone()).map_err(unexpected)?;
            let prefs: Option<String> = FromRedisValue::from_redis_value(pair[1].clone()).map_err(unexpected)?;
            let profile = bytes.map(|b| Profile::decode(&b)).transpose()?;
            // Preferences are validated before they are stored; unreadable ones fall back to the
            // defaults rather than failing suggestions.
            Ok((profile, prefs.and_then(|p| serde_json::from_str(&p).ok())))
        };
        Ok(flat.chunks(2).map(one).collect())
    }

    async fn put_prefs(&self, subject: &SubjectId, prefs: &Preferences) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let json = serde_json::to_string(prefs).expect("preferences serialise");
        let _: () = redis::cmd("SET").arg(self.keys(subject).prefs).arg(json).query_async(&mut c).await?;
        Ok(())
    }

    async fn inbox(&self, subject: &SubjectId) -> Result<Vec<InboxMessage>, StoreError> {
        let k = self.keys(subject);
        let mut c = self.conn.clone();
        let (items, read): (HashMap<String, String>, HashSet<String>) =
            redis::pipe().cmd("HGETALL").arg(&k.inbox).cmd("SMEMBERS").arg(&k.read).query_async(&mut c).await?;
        let mut out: Vec<InboxMessage> = Vec::with_capacity(items.len());
        for item in items.values() {
            let mut m: InboxMessage = serde_json::from_str(item)
                .map_err(|e| StoreError::Unavailable(format!("unreadable inbox message: {e}")))?;
            m.read |= read.contains(&m.id);
            out.push(m);
        }
        rules::newest_first(&mut out);
        Ok(out)
    }

    async fn push_inbox_many(&self, items: &[InboxItem<'_>]) -> Result<Vec<bool>, StoreError> {
        // HSETNX keeps one message per push id; the inbox expires with its longest-lived
        // message (NX sets a first expiry, GT only ever extends it).
        let mut pipe = redis::pipe();
        for it in items {
            let inbox = self.keys(it.subject).inbox;
            let json = serde_json::to_string(it.message).expect("messages serialise");
            let ttl = it.ttl_secs.max(1);
            pipe.cmd("HSETNX").arg(&inbox).arg(&it.message.id).arg(json).cmd("HLEN").arg(&inbox);
            pipe.cmd("EXPIRE").arg(&inbox).arg(ttl).arg("NX").ignore();
            pipe.cmd("EXPIRE").arg(&inbox).arg(ttl).arg("GT").ignore();
        }
        let mut c = self.conn.clone();
        let answers: Vec<(i64, usize)> = pipe.query_async(&mut c).await?;
        // Over the cap (rare: caps allow about ten pushes a week): drop the oldest.
        for (it, &(_, len)) in items.iter().zip(&answers) {
            if len > rules::INBOX_CAP {
                let old = rules::over_cap(self.inbox(it.subject).await?);
                if !old.is_empty() {
                    let _: () =
                        redis::cmd("HDEL").arg(self.keys(it.subject).inbox).arg(&old).query_async(&mut c).await?;
                }
            }
        }
        Ok(answers.into_iter().map(|(added, _)| added == 1).collect())
    }

    async fn mark_read(&self, subject: &SubjectId, id: &str) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: () = redis::cmd("SADD").arg(self.keys(subject).read).arg(id).query_async(&mut c).await?;
        Ok(())
    }

    async fn reserve_many(
        &self,
        items: &[Reservation<'_>],
        now: i64,
        caps: &Caps,
    ) -> Result<Vec<Result<(), Skip>>, StoreError> {
        let mut pipe = redis::pipe();
        for it in items {
            let k = self.keys(it.subject);
            pipe.cmd("EVALSHA").arg(self.reserve.get_hash()).arg(5);
            pipe.arg(k.sent).arg(k.crit).arg(k.dedupe).arg(k.outbox).arg(k.outbox_at);
            pipe.arg(it.id).arg(now).arg(SENT_KEEP_SECS).arg(u8::from(it.critical));
            pipe.arg(it.dedupe.key).arg(it.dedupe.horizon_secs);
            match it.outbox {
                Some(p) => pipe.arg(serde_json::to_string(p).expect("outbox entries serialise")).arg(p.since_ms),
                None => pipe.arg("").arg(0),
            };
            for r in rules::cap_rules(caps, it.critical) {
                pipe.arg(r.window_secs).arg(r.limit).arg(r.skip.as_str());
            }
        }
        let answers: Vec<String> = self.query_scripts(&pipe).await?;
        answers
            .iter()
            .map(|a| match a.as_str() {
                "ok" => Ok(Ok(())),
                other => Skip::parse(other)
                    .map(Err)
                    .ok_or_else(|| StoreError::Unavailable(format!("unexpected reservation answer {other:?}"))),
            })
            .collect()
    }

    async fn release(&self, items: &[Reservation<'_>]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for it in items {
            let k = self.keys(it.subject);
            pipe.cmd("ZREM").arg(k.sent).arg(it.id).ignore().cmd("ZREM").arg(k.crit).arg(it.id).ignore();
            if it.dedupe.key != it.id {
                pipe.cmd("ZREM").arg(k.dedupe).arg(it.dedupe.key).ignore();
            }
            pipe.cmd("HDEL").arg(k.outbox).arg(it.id).ignore().cmd("ZREM").arg(k.outbox_at).arg(it.id).ignore();
        }
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// Two commands per entry, in the subject's slot; if only the first lands, the recovery
    /// script drops the orphaned time.
    async fn clear_outbox(&self, items: &[(&SubjectId, &str)]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for (subject, id) in items {
            let k = self.keys(subject);
            pipe.cmd("HDEL").arg(k.outbox).arg(*id).ignore().cmd("ZREM").arg(k.outbox_at).arg(*id).ignore();
        }
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// One script per subject (each in its own slot), in one pipeline.
    async fn take_outbox(&self, subjects: &[&SubjectId], now_ms: u64) -> Result<Vec<Pending>, StoreError> {
        let mut pipe = redis::pipe();
        let cutoff = now_ms.saturating_sub(rules::OUTBOX_GRACE_MS);
        for s in subjects {
            let k = self.keys(s);
            pipe.cmd("EVALSHA").arg(self.outbox.get_hash()).arg(2).arg(k.outbox).arg(k.outbox_at);
            pipe.arg(cutoff).arg(now_ms);
        }
        let answers: Vec<Vec<String>> = self.query_scripts(&pipe).await?;
        answers
            .iter()
            .flatten()
            .map(|json| {
                serde_json::from_str(json).map_err(|e| StoreError::Unavailable(format!("unreadable outbox entry: {e}")))
            })
            .collect()
    }

    /// `SCAN` over the profile keys.
    async fn page(&self, cursor: u64) -> Result<(u64, Vec<SubjectData>), StoreError> {
        let mut c = self.conn.clone();
        let pattern = format!("{}tb:{{u:*}}:p", self.prefix);
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await?;
        let head = format!("{}tb:{{u:", self.prefix);
        // A key that does not hold a valid subject id was not written by tongban: skipped.
        let subjects: Vec<SubjectId> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&head).and_then(|x| x.strip_suffix("}:p")))
            .filter_map(|s| SubjectId::parse(s).ok())
            .collect();
        if subjects.is_empty() {
            return Ok((next, Vec::new()));
        }
        let refs: Vec<&SubjectId> = subjects.iter().collect();
        let data = self.profiles_and_prefs_each(&refs).await?;
        let mut out = Vec::with_capacity(subjects.len());
        for (s, d) in subjects.into_iter().zip(data) {
            if let (Some(p), prefs) = d? {
                out.push((s, p, prefs));
            }
        }
        Ok((next, out))
    }

    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry).expect("audit entries serialise");
        let mut c = self.conn.clone();
        // In one MULTI: a push is never left without its trim.
        let _: () = redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(self.audit_key())
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(self.audit_key())
            .arg(0)
            .arg(AUDIT_KEEP - 1)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    async fn audit_log(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        // LRANGE 0 -1 would be the whole list; an end beyond i64 an error.
        let n = n.min(AUDIT_KEEP);
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let raw: Vec<String> = redis::cmd("LRANGE").arg(self.audit_key()).arg(0).arg(n - 1).query_async(&mut c).await?;
        raw.iter()
            .map(|x| {
                serde_json::from_str(x).map_err(|e| StoreError::Unavailable(format!("unreadable audit entry: {e}")))
            })
            .collect()
    }

    async fn lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let held: i64 = self
            .lease
            .key(format!("{}tb:lease:{name}", self.prefix))
            .arg(holder)
            .arg(ttl_ms.max(1))
            .invoke_async(&mut c)
            .await?;
        Ok(held == 1)
    }
}
