//! Where profiles live: in process memory (the embedded default) or in Redis (shared by
//! replicas). One interface, two backends, one test suite.
//!
//! Redis keys of one subject share a hash tag, so per-subject operations stay on one node of a
//! Redis Cluster: `tb:{u:<id>}:p` (profile bytes), `tb:{u:<id>}:v` (version counter, never
//! deleted, so a write prepared before an erasure cannot land after it), `tb:{u:<id>}:e` (event
//! ids seen; the set expires `SEEN_TTL_SECS` after the subject's last write: while a subject
//! stays active the set keeps growing, a known limit of this first version; the memory store's
//! set never expires). Pushes: `:prefs` (preferences JSON), `:msgs` (the inbox: a hash of push
//! id to message JSON, capped at `INBOX_CAP`, expiring with its longest-lived message), `:read`
//! (read marks), `:sent` and `:crit` (pushes reserved per lane, for de-duplication and caps).
//!
//! An event older than every event of a full profile window is acknowledged as `too_late` and
//! changes nothing (see `features::profile`); it is reported as such, never as a duplicate.
//!
//! An update is optimistic: read the profile and its version, apply the events in Rust, then
//! a Lua script writes the new profile and the seen ids only if the version did not move
//! (compare-and-set); on a conflict the update is retried. A write the store did not confirm is
//! an error, never a silent drop.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use redis::aio::ConnectionManager;
use tongban_features::io::LogEvent;
use tongban_features::profile::{Profile, ProfileContext, ProfileError};

use crate::push::{Caps, InboxMessage, Preferences, Skip};

/// How long Redis remembers event ids for idempotency (the profile also ignores duplicates of
/// its retained events).
pub const SEEN_TTL_SECS: i64 = 30 * 86_400;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored profile unreadable: {0}")]
    Corrupt(#[from] ProfileError),
    #[error("too many concurrent updates of one subject")]
    Contention,
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// What an ingest did for one subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub accepted: usize,
    pub duplicates: usize,
    /// Older than the whole retained window of a full profile: acknowledged, not applied.
    pub too_late: usize,
}

/// One subject's events to apply; `ids` are the senders' event ids (for idempotency).
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    pub subject: &'a str,
    pub events: &'a [LogEvent],
    pub ids: &'a [String],
}

#[derive(Debug, Default)]
struct Entry {
    profile: Profile,
    seen: HashSet<String>,
    prefs: Option<Preferences>,
    inbox: Vec<InboxMessage>,
    /// Pushes reserved: (id, at, critical).
    sent: Vec<(String, i64, bool)>,
}

impl Entry {
    /// Whether the subject has a profile (an entry may hold only preferences, an inbox or
    /// reservations).
    fn has_profile(&self) -> bool {
        self.profile.events() > 0 || !self.profile.services().is_empty()
    }
}

/// How long reserved push ids are remembered (de-duplication of yearly and once-per-event
/// pushes); caps only look at the last week.
pub const SENT_KEEP_SECS: i64 = 400 * 86_400;

/// Inbox messages kept per subject (the oldest go first).
pub const INBOX_CAP: usize = 50;

/// The embedded store: sharded mutexes over hash maps.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore { shards: (0..32).map(|_| Mutex::new(HashMap::new())).collect() }
    }
}

impl MemoryStore {
    fn shard(&self, subject: &str) -> &Mutex<HashMap<String, Entry>> {
        let h = tongban_features::io::fnv1a(subject.as_bytes());
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    /// Applies one subject's batch under its shard's lock.
    fn apply(&self, batch: &Batch<'_>, ctx: &ProfileContext, segment: u16) -> Applied {
        let mut shard = self.shard(batch.subject).lock().expect("no panics while holding the lock");
        let entry = shard
            .entry(batch.subject.to_owned())
            .or_insert_with(|| Entry { profile: Profile::new(segment), ..Entry::default() });
        let seen: Vec<bool> = batch.ids.iter().map(|id| entry.seen.contains(id)).collect();
        let (out, new_ids) = apply_events(&mut entry.profile, batch, &seen, ctx);
        entry.seen.extend(new_ids.into_iter().map(str::to_owned));
        out
    }
}

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    cas: redis::Script,
    import: redis::Script,
    reserve: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// KEYS: profile, version, seen. ARGV: expected version, new profile, ttl, ids...
const CAS: &str = r"
local v = redis.call('GET', KEYS[2]) or '0'
if v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
if #ARGV > 3 then
  redis.call('SADD', KEYS[3], unpack(ARGV, 4))
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return 1
";

/// KEYS: profile, version. ARGV: profile. Stores only where the subject has no profile yet.
const IMPORT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
return 1
";

/// KEYS: sent, critical. ARGV: id, now, per day, per week, critical (0|1), critical per week,
/// keep seconds. Answers `ok` or the reason to skip.
const RESERVE: &str = r"
local now = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 'duplicate' end
local keep = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - keep)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - keep)
local key = KEYS[1]
if ARGV[5] == '1' then
  if redis.call('ZCOUNT', KEYS[2], now - 604799, '+inf') >= tonumber(ARGV[6]) then return 'critical_cap' end
  key = KEYS[2]
else
  if redis.call('ZCOUNT', KEYS[1], now - 86399, '+inf') >= tonumber(ARGV[3]) then return 'daily_cap' end
  if redis.call('ZCOUNT', KEYS[1], now - 604799, '+inf') >= tonumber(ARGV[4]) then return 'weekly_cap' end
end
redis.call('ZADD', key, now, ARGV[1])
redis.call('EXPIRE', key, keep)
return 'ok'
";

/// The most ids one compare-and-set may add (Lua's `unpack` limit is about 8,000).
pub const MAX_IDS_PER_WRITE: usize = 5000;

/// A Redis URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl RedisStore {
    /// Connects (and checks the connection with PING). `prefix` namespaces keys (tests use one
    /// per test).
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("bad Redis URL {}: {}", redact(url), e.category())))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, cfg).await?;
        let s = RedisStore {
            conn,
            prefix: prefix.to_owned(),
            cas: redis::Script::new(CAS),
            import: redis::Script::new(IMPORT),
            reserve: redis::Script::new(RESERVE),
        };
        s.ping().await?;
        s.load_scripts().await?;
        Ok(s)
    }

    async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        for script in [CAS, RESERVE] {
            let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(script).query_async(&mut c).await?;
        }
        Ok(())
    }

    /// Runs a pipeline of `EVALSHA`s; if Redis restarted and forgot the scripts, loads them and
    /// runs it once more.
    async fn query_scripts<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut c = self.conn.clone();
        match pipe.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                Ok(pipe.query_async(&mut c).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn keys(&self, subject: &str) -> [String; 3] {
        let tag = format!("{}tb:{{u:{subject}}}", self.prefix);
        [format!("{tag}:p"), format!("{tag}:v"), format!("{tag}:e")]
    }

    /// Preferences, inbox (a hash of push id -> JSON message), read marks, and the pushes
    /// reserved (normal and critical lane) of a subject.
    fn push_keys(&self, subject: &str) -> [String; 5] {
        let tag = format!("{}tb:{{u:{subject}}}", self.prefix);
        [
            format!("{tag}:prefs"),
            format!("{tag}:msgs"),
            format!("{tag}:read"),
            format!("{tag}:sent"),
            format!("{tag}:crit"),
        ]
    }

    /// The connection and key prefix (the queue shares them).
    pub fn connection(&self) -> (ConnectionManager, String) {
        (self.conn.clone(), self.prefix.clone())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }
}

/// A store: memory or Redis.
#[derive(Debug)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// Applies a batch's events to a profile; `seen[i]` says whether event `i`'s id was seen
/// before. Returns the counts and the ids newly applied.
fn apply_events<'b>(
    profile: &mut Profile,
    batch: &Batch<'b>,
    seen: &[bool],
    ctx: &ProfileContext,
) -> (Applied, Vec<&'b str>) {
    let mut out = Applied::default();
    let mut new_ids: Vec<&str> = Vec::new();
    for ((e, id), was) in batch.events.iter().zip(batch.ids).zip(seen) {
        if *was || new_ids.contains(&id.as_str()) {
            out.duplicates += 1;
            continue;
        }
        let late = profile.too_late();
        if profile.apply(e, ctx) {
            out.accepted += 1;
            new_ids.push(id);
        } else if profile.too_late() > late {
            out.too_late += 1;
        } else {
            out.duplicates += 1;
        }
    }
    (out, new_ids)
}

impl Store {
    pub fn memory() -> Store {
        Store::Memory(MemoryStore::default())
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.ping().await,
        }
    }

    /// The subject's profile, if any.
    pub async fn profile(&self, subject: &str) -> Result<Option<Profile>, StoreError> {
        match self {
            Store::Memory(m) => {
                let shard = m.shard(subject).lock().expect("no panics while holding the lock");
                Ok(shard.get(subject).map(|e| e.profile.clone()))
            }
            Store::Redis(r) => {
                let [p, _, _] = r.keys(subject);
                let mut c = r.conn.clone();
                let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&p).query_async(&mut c).await?;
                Ok(bytes.map(|b| Profile::decode(&b)).transpose()?)
            }
        }
    }

    /// Applies events to a subject's profile, ignoring event ids seen before. `segment` is set
    /// on a new profile.
    pub async fn apply(&self, batch: &Batch<'_>, ctx: &ProfileContext, segment: u16) -> Result<Applied, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.apply(batch, ctx, segment)),
            Store::Redis(_) => Ok(self.apply_many(std::slice::from_ref(batch), &[segment], ctx).await?[0]),
        }
    }

    /// Applies the batches of several subjects. On Redis this costs two round trips for the
    /// whole request (one pipeline of reads, one of compare-and-set scripts) plus one more per
    /// round of conflicts, instead of three round trips per subject.
    pub async fn apply_many(
        &self,
        batches: &[Batch<'_>],
        segments: &[u16],
        ctx: &ProfileContext,
    ) -> Result<Vec<Applied>, StoreError> {
        let r = match self {
            Store::Memory(m) => {
                return Ok(batches.iter().zip(segments).map(|(b, &seg)| m.apply(b, ctx, seg)).collect())
            }
            Store::Redis(r) => r,
        };
        let mut results = vec![Applied::default(); batches.len()];
        let mut pending: Vec<usize> = (0..batches.len()).collect();
        let mut c = r.conn.clone();
        let parse = |e: redis::ParsingError| StoreError::Unavailable(format!("unexpected Redis reply: {e}"));
        for _ in 0..16 {
            if pending.is_empty() {
                return Ok(results);
            }
            let mut reads = redis::pipe();
            for &i in &pending {
                let [pk, vk, ek] = r.keys(batches[i].subject);
                reads.cmd("GET").arg(pk).cmd("GET").arg(vk).cmd("SMISMEMBER").arg(ek).arg(batches[i].ids);
            }
            let values: Vec<redis::Value> = reads.query_async(&mut c).await?;
            let mut writes = redis::pipe();
            let mut written = Vec::new();
            for (k, &i) in pending.iter().enumerate() {
                let b = &batches[i];
                let bytes: Option<Vec<u8>> =
                    redis::FromRedisValue::from_redis_value(values[3 * k].clone()).map_err(parse)?;
                let version: Option<String> =
                    redis::FromRedisValue::from_redis_value(values[3 * k + 1].clone()).map_err(parse)?;
                let seen: Vec<bool> =
                    redis::FromRedisValue::from_redis_value(values[3 * k + 2].clone()).map_err(parse)?;
                let mut profile = match bytes {
                    Some(x) => Profile::decode(&x)?,
                    None => Profile::new(segments[i]),
                };
                let (out, new_ids) = apply_events(&mut profile, b, &seen, ctx);
                results[i] = out;
                if out.accepted > 0 {
                    let [pk, vk, ek] = r.keys(b.subject);
                    writes
                        .cmd("EVALSHA")
                        .arg(r.cas.get_hash())
                        .arg(3)
                        .arg(pk)
                        .arg(vk)
                        .arg(ek)
                        .arg(version.as_deref().unwrap_or("0"))
                        .arg(profile.encode())
                        .arg(SEEN_TTL_SECS)
                        .arg(&new_ids);
                    written.push(i);
                }
            }
            if written.is_empty() {
                return Ok(results);
            }
            let oks: Vec<i64> = match writes.query_async(&mut c).await {
                Ok(v) => v,
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // Redis restarted and forgot the script: load it and redo this round.
                    let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(CAS).query_async(&mut c).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            pending = written.into_iter().zip(oks).filter(|&(_, ok)| ok != 1).map(|(i, _)| i).collect();
        }
        Err(StoreError::Contention)
    }

    /// Stores a profile built offline (bulk import at start-up) unless the subject already has
    /// one: a restarted replica never overwrites what live ingest wrote. Returns whether it
    /// stored it.
    pub async fn import_profile(&self, subject: &str, profile: &Profile) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => {
                let mut shard = m.shard(subject).lock().expect("no panics while holding the lock");
                if shard.contains_key(subject) {
                    return Ok(false);
                }
                shard.insert(subject.to_owned(), Entry { profile: profile.clone(), ..Entry::default() });
                Ok(true)
            }
            Store::Redis(r) => {
                let [pk, vk, _] = r.keys(subject);
                let mut c = r.conn.clone();
                let stored: i64 = r.import.key(&pk).key(&vk).arg(profile.encode()).invoke_async(&mut c).await?;
                Ok(stored == 1)
            }
        }
    }

    /// Erases everything kept about a subject. Returns whether anything existed. The version
    /// counter moves on, so an update prepared before the erasure fails its compare-and-set.
    pub async fn erase(&self, subject: &str) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => {
                Ok(m.shard(subject).lock().expect("no panics while holding the lock").remove(subject).is_some())
            }
            Store::Redis(r) => {
                let [pk, vk, ek] = r.keys(subject);
                let mut c = r.conn.clone();
                let push = r.push_keys(subject);
                let (n, _): (i64, i64) = redis::pipe()
                    .atomic()
                    .cmd("DEL")
                    .arg(&pk)
                    .arg(&ek)
                    .arg(&push[..])
                    .cmd("INCR")
                    .arg(&vk)
                    .query_async(&mut c)
                    .await?;
                Ok(n > 0)
            }
        }
    }
    /// The subject's profile and preferences, in one round trip.
    pub async fn profile_and_prefs(&self, subject: &str) -> Result<(Option<Profile>, Option<Preferences>), StoreError> {
        Ok(self.profiles_and_prefs(&[subject]).await?.pop().expect("one subject, one answer"))
    }

    /// Profiles and preferences of several subjects, in one round trip.
    pub async fn profiles_and_prefs(&self, subjects: &[&str]) -> Result<Vec<ProfileAndPrefs>, StoreError> {
        self.profiles_and_prefs_each(subjects).await?.into_iter().collect()
    }

    /// [`Store::profiles_and_prefs`] with a result per subject: one unreadable profile fails
    /// only its own subject.
    pub async fn profiles_and_prefs_each(
        &self,
        subjects: &[&str],
    ) -> Result<Vec<Result<ProfileAndPrefs, StoreError>>, StoreError> {
        match self {
            Store::Memory(m) => Ok(subjects
                .iter()
                .map(|subject| {
                    let shard = m.shard(subject).lock().expect("no panics while holding the lock");
                    // An entry made only by preferences, inbox or reservations has no profile,
                    // as on Redis.
                    Ok(shard
                        .get(*subject)
                        .map_or((None, None), |e| (e.has_profile().then(|| e.profile.clone()), e.prefs.clone())))
                })
                .collect()),
            Store::Redis(r) => {
                if subjects.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for s in subjects {
                    let [pk, ..] = r.keys(s);
                    let [fk, ..] = r.push_keys(s);
                    pipe.cmd("GET").arg(pk).cmd("GET").arg(fk);
                }
                let mut c = r.conn.clone();
                let flat: Vec<redis::Value> = pipe.query_async(&mut c).await?;
                let parse = |e: redis::ParsingError| StoreError::Unavailable(format!("unexpected Redis reply: {e}"));
                let one = |pair: &[redis::Value]| -> Result<ProfileAndPrefs, StoreError> {
                    let bytes: Option<Vec<u8>> =
                        redis::FromRedisValue::from_redis_value(pair[0].clone()).map_err(parse)?;
                    let prefs: Option<String> =
                        redis::FromRedisValue::from_redis_value(pair[1].clone()).map_err(parse)?;
                    let profile = bytes.map(|b| Profile::decode(&b)).transpose()?;
                    // Preferences are validated before they are stored; unreadable ones fall back
                    // to the defaults rather than failing suggestions.
                    Ok((profile, prefs.and_then(|p| serde_json::from_str(&p).ok())))
                };
                Ok(flat.chunks(2).map(one).collect())
            }
        }
    }

    /// Forgets reservations (an enqueue that failed after them), so that the pushes can be
    /// proposed again.
    pub async fn release(&self, items: &[Reservation<'_>]) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                for it in items {
                    let mut shard = m.shard(it.subject).lock().expect("no panics while holding the lock");
                    if let Some(e) = shard.get_mut(it.subject) {
                        e.sent.retain(|(id, _, _)| id != it.id);
                    }
                }
                Ok(())
            }
            Store::Redis(r) => {
                if items.is_empty() {
                    return Ok(());
                }
                let mut pipe = redis::pipe();
                for it in items {
                    let [_, _, _, sk, ck] = r.push_keys(it.subject);
                    pipe.cmd("ZREM").arg(sk).arg(it.id).ignore().cmd("ZREM").arg(ck).arg(it.id).ignore();
                }
                let mut c = r.conn.clone();
                let _: () = pipe.query_async(&mut c).await?;
                Ok(())
            }
        }
    }

    pub async fn put_prefs(&self, subject: &str, prefs: &Preferences) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                let mut shard = m.shard(subject).lock().expect("no panics while holding the lock");
                shard.entry(subject.to_owned()).or_default().prefs = Some(prefs.clone());
                Ok(())
            }
            Store::Redis(r) => {
                let [fk, ..] = r.push_keys(subject);
                let mut c = r.conn.clone();
                let json = serde_json::to_string(prefs).expect("preferences serialise");
                let _: () = redis::cmd("SET").arg(&fk).arg(json).query_async(&mut c).await?;
                Ok(())
            }
        }
    }

    /// The subject's inbox, newest first, with read marks.
    pub async fn inbox(&self, subject: &str) -> Result<Vec<InboxMessage>, StoreError> {
        match self {
            Store::Memory(m) => {
                let shard = m.shard(subject).lock().expect("no panics while holding the lock");
                Ok(shard.get(subject).map(|e| e.inbox.iter().rev().cloned().collect()).unwrap_or_default())
            }
            Store::Redis(r) => {
                let [_, ik, rk, ..] = r.push_keys(subject);
                let mut c = r.conn.clone();
                let (items, read): (HashMap<String, String>, HashSet<String>) =
                    redis::pipe().cmd("HGETALL").arg(&ik).cmd("SMEMBERS").arg(&rk).query_async(&mut c).await?;
                let mut out: Vec<InboxMessage> = Vec::with_capacity(items.len());
                for item in items.values() {
                    let mut m: InboxMessage = serde_json::from_str(item)
                        .map_err(|e| StoreError::Unavailable(format!("unreadable inbox message: {e}")))?;
                    m.read |= read.contains(&m.id);
                    out.push(m);
                }
                out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
                Ok(out)
            }
        }
    }

    /// Adds a message to the inbox (capped at `INBOX_CAP`, oldest dropped; expiring `ttl_secs`
    /// after the last message) unless a message with its id is there. Returns whether it added.
    pub async fn push_inbox(&self, subject: &str, msg: &InboxMessage, ttl_secs: i64) -> Result<bool, StoreError> {
        Ok(self.push_inbox_many(&[(subject, msg, ttl_secs)]).await?[0])
    }

    /// [`Store::push_inbox`] for several messages, in one round trip.
    pub async fn push_inbox_many(&self, items: &[(&str, &InboxMessage, i64)]) -> Result<Vec<bool>, StoreError> {
        match self {
            Store::Memory(m) => Ok(items
                .iter()
                .map(|(subject, msg, _)| {
                    let mut shard = m.shard(subject).lock().expect("no panics while holding the lock");
                    let inbox = &mut shard.entry((*subject).to_owned()).or_default().inbox;
                    if inbox.iter().any(|x| x.id == msg.id) {
                        return false;
                    }
                    inbox.push((*msg).clone());
                    if inbox.len() > INBOX_CAP {
                        // The oldest by creation, as on Redis.
                        if let Some(i) = (0..inbox.len()).min_by_key(|&i| (inbox[i].created_at, inbox[i].id.clone())) {
                            inbox.remove(i);
                        }
                    }
                    true
                })
                .collect()),
            Store::Redis(r) => {
                if items.is_empty() {
                    return Ok(Vec::new());
                }
                // HSETNX keeps one message per push id; the inbox expires with its longest-lived
                // message (NX sets a first expiry, GT only ever extends it).
                let mut pipe = redis::pipe();
                for (subject, msg, ttl) in items {
                    let [_, ik, ..] = r.push_keys(subject);
                    let json = serde_json::to_string(msg).expect("messages serialise");
                    let ttl = (*ttl).max(1);
                    pipe.cmd("HSETNX").arg(&ik).arg(&msg.id).arg(json).cmd("HLEN").arg(&ik);
                    pipe.cmd("EXPIRE").arg(&ik).arg(ttl).arg("NX").ignore();
                    pipe.cmd("EXPIRE").arg(&ik).arg(ttl).arg("GT").ignore();
                }
                let mut c = r.conn.clone();
                let answers: Vec<(i64, usize)> = pipe.query_async(&mut c).await?;
                // Over the cap (rare: caps allow about ten pushes a week): drop the oldest.
                for ((subject, _, _), &(_, len)) in items.iter().zip(&answers) {
                    if len > INBOX_CAP {
                        let all = self.inbox(subject).await?;
                        let [_, ik, ..] = r.push_keys(subject);
                        let old: Vec<&str> = all[INBOX_CAP.min(all.len())..].iter().map(|m| m.id.as_str()).collect();
                        if !old.is_empty() {
                            let _: () = redis::cmd("HDEL").arg(&ik).arg(&old).query_async(&mut c).await?;
                        }
                    }
                }
                Ok(answers.into_iter().map(|(added, _)| added == 1).collect())
            }
        }
    }

    /// Reserves push `id` for a subject at `now`, atomically: not reserved before (within
    /// `SENT_KEEP_SECS`), and within the caps (the critical lane has its own weekly cap).
    pub async fn reserve(
        &self,
        subject: &str,
        id: &str,
        now: i64,
        caps: &Caps,
        critical: bool,
    ) -> Result<Result<(), Skip>, StoreError> {
        Ok(self.reserve_many(&[Reservation { subject, id, critical }], now, caps).await?[0])
    }

    /// [`Store::reserve`] for several pushes, in order, in one round trip.
    pub async fn reserve_many(
        &self,
        items: &[Reservation<'_>],
        now: i64,
        caps: &Caps,
    ) -> Result<Vec<Result<(), Skip>>, StoreError> {
        match self {
            Store::Memory(m) => Ok(items
                .iter()
                .map(|it| {
                    let mut shard = m.shard(it.subject).lock().expect("no panics while holding the lock");
                    let sent = &mut shard.entry(it.subject.to_owned()).or_default().sent;
                    if sent.iter().any(|(x, _, _)| x == it.id) {
                        return Err(Skip::Duplicate);
                    }
                    sent.retain(|&(_, at, _)| at > now - SENT_KEEP_SECS);
                    let within =
                        |secs: i64, crit: bool| sent.iter().filter(|&&(_, at, c)| c == crit && at > now - secs).count();
                    if it.critical && within(7 * 86_400, true) >= caps.critical_per_week {
                        return Err(Skip::CriticalCap);
                    }
                    if !it.critical && within(86_400, false) >= caps.per_day {
                        return Err(Skip::DailyCap);
                    }
                    if !it.critical && within(7 * 86_400, false) >= caps.per_week {
                        return Err(Skip::WeeklyCap);
                    }
                    sent.push((it.id.to_owned(), now, it.critical));
                    Ok(())
                })
                .collect()),
            Store::Redis(r) => {
                if items.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for it in items {
                    let [_, _, _, sk, ck] = r.push_keys(it.subject);
                    pipe.cmd("EVALSHA")
                        .arg(r.reserve.get_hash())
                        .arg(2)
                        .arg(sk)
                        .arg(ck)
                        .arg(it.id)
                        .arg(now)
                        .arg(caps.per_day)
                        .arg(caps.per_week)
                        .arg(if it.critical { 1 } else { 0 })
                        .arg(caps.critical_per_week)
                        .arg(SENT_KEEP_SECS);
                }
                let answers: Vec<String> = r.query_scripts(&pipe).await?;
                answers
                    .iter()
                    .map(|a| match a.as_str() {
                        "ok" => Ok(Ok(())),
                        "duplicate" => Ok(Err(Skip::Duplicate)),
                        "daily_cap" => Ok(Err(Skip::DailyCap)),
                        "weekly_cap" => Ok(Err(Skip::WeeklyCap)),
                        "critical_cap" => Ok(Err(Skip::CriticalCap)),
                        other => Err(StoreError::Unavailable(format!("unexpected reservation answer {other:?}"))),
                    })
                    .collect()
            }
        }
    }

    /// Marks a message read; false when the inbox has no such message.
    pub async fn mark_read(&self, subject: &str, id: &str) -> Result<bool, StoreError> {
        if !self.inbox(subject).await?.iter().any(|m| m.id == id) {
            return Ok(false);
        }
        match self {
            Store::Memory(m) => {
                let mut shard = m.shard(subject).lock().expect("no panics while holding the lock");
                if let Some(msg) = shard.get_mut(subject).and_then(|e| e.inbox.iter_mut().find(|x| x.id == id)) {
                    msg.read = true;
                }
                Ok(true)
            }
            Store::Redis(r) => {
                let [_, _, rk, ..] = r.push_keys(subject);
                let mut c = r.conn.clone();
                let _: () = redis::cmd("SADD").arg(&rk).arg(id).query_async(&mut c).await?;
                Ok(true)
            }
        }
    }

    /// One page of subjects with their profiles and preferences, for scans and campaigns.
    /// Start with cursor 0; the page returning cursor 0 is the last. On Redis this is `SCAN`:
    /// a subject written during the scan may be missed or seen twice.
    pub async fn page(&self, cursor: u64) -> Result<(u64, Vec<SubjectData>), StoreError> {
        match self {
            Store::Memory(m) => {
                let i = cursor as usize;
                let Some(shard) = m.shards.get(i) else { return Ok((0, Vec::new())) };
                let out = shard
                    .lock()
                    .expect("no panics while holding the lock")
                    .iter()
                    .filter(|(_, e)| e.has_profile())
                    .map(|(k, e)| (k.clone(), e.profile.clone(), e.prefs.clone()))
                    .collect();
                let next = if i + 1 < m.shards.len() { i as u64 + 1 } else { 0 };
                Ok((next, out))
            }
            Store::Redis(r) => {
                let mut c = r.conn.clone();
                let pattern = format!("{}tb:{{u:*}}:p", r.prefix);
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await?;
                let head = format!("{}tb:{{u:", r.prefix);
                let subjects: Vec<String> = keys
                    .iter()
                    .filter_map(|k| k.strip_prefix(&head).and_then(|x| x.strip_suffix("}:p")).map(str::to_owned))
                    .collect();
                if subjects.is_empty() {
                    return Ok((next, Vec::new()));
                }
                let names: Vec<&str> = subjects.iter().map(String::as_str).collect();
                let data = self.profiles_and_prefs(&names).await?;
                let out = subjects
                    .into_iter()
                    .zip(data)
                    .filter_map(|(s, (profile, prefs))| profile.map(|p| (s, p, prefs)))
                    .collect();
                Ok((next, out))
            }
        }
    }
}

/// A subject's id, profile and preferences.
pub type SubjectData = (String, Profile, Option<Preferences>);

/// A subject's profile and preferences, either possibly absent.
pub type ProfileAndPrefs = (Option<Profile>, Option<Preferences>);

/// One push to reserve.
#[derive(Debug, Clone, Copy)]
pub struct Reservation<'a> {
    pub subject: &'a str,
    pub id: &'a str,
    pub critical: bool,
}
