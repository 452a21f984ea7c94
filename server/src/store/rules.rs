//! The rules of the push bookkeeping, defined once: the embedded stores (memory and disk) run
//! them in Rust on the same plain data ([`reserve`], [`add_to_inbox`]), the Redis store passes
//! them to its Lua script (`lua/reserve.lua`) as arguments.

use serde::{Deserialize, Serialize};

use super::Reservation;
use crate::push::{Caps, InboxMessage, Job, Skip};

const DAY: i64 = 86_400;

/// How long reservations are remembered: the horizon of the pushes de-duplicated by their id
/// (a yearly window, a renewal, a deadline: the id carries its natural window), and the longest
/// any horizon may be; caps only look at the last week.
pub const SENT_KEEP_SECS: i64 = 400 * DAY;

/// How long a reserved push may wait in the outbox for its enqueue to be confirmed before the
/// recovery pass enqueues it (wall-clock milliseconds). Far above a request's time between its
/// reservation and its enqueue (one round trip), so a live request is never raced.
pub const OUTBOX_GRACE_MS: u64 = 60_000;

/// Inbox messages kept per subject (the oldest go first).
pub const INBOX_CAP: usize = 50;

/// How long every backend remembers an event id for idempotency, from the time it was first
/// seen (wall time): a sender retrying within this window gets `duplicate`. Beyond it the
/// profile still ignores duplicates of the events it retains.
pub const SEEN_TTL_SECS: i64 = 30 * DAY;

/// Event ids remembered per subject at most (the oldest first seen go first), so that a subject
/// that stays active does not grow its set without end. A profile retains 64 events by default
/// and a citizen posts a few a month; a company posting more than this within
/// [`SEEN_TTL_SECS`] has its oldest ids guarded by the profile alone.
pub const SEEN_CAP: usize = 4096;

/// Audit entries kept (the oldest go first).
pub const AUDIT_KEEP: usize = 100_000;

/// The most ids one compare-and-set may add (Lua's `unpack` limit is about 8,000).
pub const MAX_IDS_PER_WRITE: usize = 5000;

/// One cap: at most `limit` reservations of a lane within the last `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapRule {
    pub window_secs: i64,
    pub limit: usize,
    /// The answer when the cap is reached.
    pub skip: Skip,
}

/// The caps of a lane, checked in order. The critical lane (legal deadlines) has only its own
/// weekly cap; the normal lane a daily and a weekly one.
pub fn cap_rules(caps: &Caps, critical: bool) -> Vec<CapRule> {
    if critical {
        vec![CapRule { window_secs: 7 * DAY, limit: caps.critical_per_week, skip: Skip::CriticalCap }]
    } else {
        vec![
            CapRule { window_secs: DAY, limit: caps.per_day, skip: Skip::DailyCap },
            CapRule { window_secs: 7 * DAY, limit: caps.per_week, skip: Skip::WeeklyCap },
        ]
    }
}

/// The first rule that `reserved` (the lane's reservation times) has reached at `now`.
pub fn first_reached(rules: &[CapRule], reserved: &[i64], now: i64) -> Option<Skip> {
    rules.iter().find(|r| reserved.iter().filter(|&&at| at > now - r.window_secs).count() >= r.limit).map(|r| r.skip)
}

/// Whether an event id first seen at `first_seen` still counts as seen at `now`.
pub fn still_seen(first_seen: i64, now: i64) -> bool {
    first_seen > now - SEEN_TTL_SECS
}

/// Inbox order: newest first (by creation, then id).
pub fn newest_first(msgs: &mut [InboxMessage]) {
    msgs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
}

/// The ids of the messages beyond [`INBOX_CAP`], the oldest by creation.
pub fn over_cap(mut msgs: Vec<InboxMessage>) -> Vec<String> {
    newest_first(&mut msgs);
    msgs.into_iter().skip(INBOX_CAP).map(|m| m.id).collect()
}

/// A push reserved for a subject. Stored as JSON by the disk store; the first version wrote a
/// `[id, at, critical]` array, which still reads (serde accepts a sequence for a struct, and
/// `key` defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub id: String,
    /// Reserved at (policy clock, Unix seconds).
    pub at: i64,
    /// The critical lane.
    pub critical: bool,
    /// The de-duplication key when it is not the push id (next steps); `None` keeps an entry
    /// de-duplicated by its id as small as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Sent {
    /// What it is de-duplicated by.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.id)
    }
}

/// How a push is de-duplicated: it is a duplicate when its push id is reserved already, or
/// when a reservation with the same `key` was made within the last `horizon_secs`. Next steps
/// use a key without a window and a horizon of `dedup_days` (a sliding window: one push per
/// subject, bundle and trigger in any `dedup_days`, wherever calendar boundaries fall); the
/// pushes whose id carries a natural window use the id itself and [`SENT_KEEP_SECS`].
/// Redis gets `key` and `horizon_secs` as script arguments and applies the same test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dedupe<'a> {
    pub key: &'a str,
    pub horizon_secs: i64,
}

impl Dedupe<'_> {
    /// Whether a push `id` with this de-duplication is a duplicate among `sent` at `now`.
    pub fn is_duplicate(&self, sent: &[Sent], id: &str, now: i64) -> bool {
        sent.iter().any(|s| s.id == id || (s.key() == self.key && s.at > now - self.horizon_secs))
    }
}

/// Reserves a push in a subject's reservations at `now`: not a duplicate ([`Dedupe`]), and
/// within the caps of its lane. Forgets reservations older than [`SENT_KEEP_SECS`] on the way.
/// The embedded stores' whole reservation rule (their outbox entry is written beside it).
pub fn reserve(sent: &mut Vec<Sent>, it: &Reservation<'_>, now: i64, caps: &Caps) -> Result<(), Skip> {
    if it.dedupe.is_duplicate(sent, it.id, now) {
        return Err(Skip::Duplicate);
    }
    sent.retain(|x| x.at > now - SENT_KEEP_SECS);
    let lane: Vec<i64> = sent.iter().filter(|x| x.critical == it.critical).map(|x| x.at).collect();
    if let Some(skip) = first_reached(&cap_rules(caps, it.critical), &lane, now) {
        return Err(skip);
    }
    let key = (it.dedupe.key != it.id).then(|| it.dedupe.key.to_owned());
    sent.push(Sent { id: it.id.to_owned(), at: now, critical: it.critical, key });
    Ok(())
}

/// A reserved push whose enqueue is not confirmed yet: one entry of a subject's outbox, written
/// in the same atomic step as the reservation, deleted once the push is in the queue. What the
/// recovery pass needs to enqueue it again after a dropped request or a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub job: Job,
    /// When the push is due (wall-clock Unix milliseconds; quiet hours defer it).
    pub due_ms: u64,
    /// When the entry was written or last taken by a recovery pass (wall-clock milliseconds).
    pub since_ms: u64,
}

/// Takes the entries of an outbox waiting at least [`OUTBOX_GRACE_MS`] at `now_ms`, marking
/// them taken at `now_ms`, so that a second recovery pass within the grace leaves them to the
/// first (and takes them again if the first died before its enqueue). The embedded stores'
/// whole recovery rule; Redis runs it in `lua/outbox.lua`.
pub fn take_stale(outbox: &mut [Pending], now_ms: u64) -> Vec<Pending> {
    let mut out = Vec::new();
    for p in outbox.iter_mut().filter(|p| p.since_ms.saturating_add(OUTBOX_GRACE_MS) <= now_ms) {
        p.since_ms = now_ms;
        out.push(p.clone());
    }
    out
}

/// Adds a message to an inbox unless one with its id is there, then drops the oldest beyond
/// [`INBOX_CAP`]. Answers whether it was added. The embedded stores' whole inbox rule.
pub fn add_to_inbox(inbox: &mut Vec<InboxMessage>, message: &InboxMessage) -> bool {
    if inbox.iter().any(|x| x.id == message.id) {
        return false;
    }
    inbox.push(message.clone());
    if inbox.len() > INBOX_CAP {
        let drop = over_cap(inbox.clone());
        inbox.retain(|m| !drop.contains(&m.id));
    }
    true
}

#[cfg(test)]
mod tests {
    use tongban_features::domain::SubjectId;

    use super::*;

    fn next_step<'a>(subject: &'a SubjectId, id: &'a str, horizon_secs: i64) -> Reservation<'a> {
        Reservation { subject, id, critical: false, dedupe: Dedupe { key: "TD-bundle", horizon_secs }, outbox: None }
    }

    #[test]
    fn a_sliding_window_pushes_once_across_an_old_boundary_and_again_after_its_length() {
        let caps = Caps::default();
        let s = SubjectId::parse("p1").unwrap();
        let week = caps.dedup_days * DAY;
        // The boundary the fixed window had: a multiple of the window length.
        let boundary = 2_900 * week;
        let mut sent = Vec::new();
        assert_eq!(reserve(&mut sent, &next_step(&s, "TB-a", week), boundary - 60, &caps), Ok(()));
        assert_eq!(
            reserve(&mut sent, &next_step(&s, "TB-b", week), boundary + 60, &caps),
            Err(Skip::Duplicate),
            "a minute after the old boundary is within the last dedup_days"
        );
        assert_eq!(
            reserve(&mut sent, &next_step(&s, "TB-c", week), boundary - 60 + week - 1, &caps),
            Err(Skip::Duplicate)
        );
        assert_eq!(
            reserve(&mut sent, &next_step(&s, "TB-d", week), boundary - 60 + week, &caps),
            Ok(()),
            "a second push"
        );
        assert_eq!(sent.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), ["TB-a", "TB-d"]);
        assert_eq!(sent[0].key(), "TD-bundle");
    }

    #[test]
    fn a_push_id_is_a_duplicate_whatever_its_key_and_an_id_keyed_push_keeps_the_old_format() {
        let caps = Caps::default();
        let s = SubjectId::parse("p1").unwrap();
        let mut sent = Vec::new();
        let once = Reservation::by_id(&s, "TB-y", false);
        assert_eq!(reserve(&mut sent, &once, 1000, &caps), Ok(()));
        assert_eq!(reserve(&mut sent, &once, 1000 + 300 * DAY, &caps), Err(Skip::Duplicate));
        assert_eq!(reserve(&mut sent, &next_step(&s, "TB-y", 60), 2000, &caps), Err(Skip::Duplicate));
        assert_eq!(serde_json::to_string(&sent).unwrap(), r#"[{"id":"TB-y","at":1000,"critical":false}]"#);
        let first_version: Vec<Sent> = serde_json::from_str(r#"[["TB-old",5,true]]"#).unwrap();
        assert_eq!(first_version[0], Sent { id: "TB-old".into(), at: 5, critical: true, key: None });
    }

    #[test]
    fn the_outbox_gives_an_entry_to_one_recovery_pass_per_grace() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "subject": "p1", "critical": false, "done_after": 0, "reasons": [], "decisions": [],
            "message": { "id": "TB-1", "trigger": "next_step", "bundle": null, "services": [], "title": "t",
                "body": "b", "sms": "s", "created_at": 0, "deliver_at": 0, "expires_at": 9, "read": false,
                "model": "m" }
        }))
        .unwrap();
        let mut outbox = vec![Pending { job, due_ms: 5, since_ms: 1_000 }];
        assert!(take_stale(&mut outbox, 1_000 + OUTBOX_GRACE_MS - 1).is_empty(), "a live request's entry");
        assert_eq!(take_stale(&mut outbox, 1_000 + OUTBOX_GRACE_MS).len(), 1);
        assert!(take_stale(&mut outbox, 1_000 + OUTBOX_GRACE_MS + 1).is_empty(), "taken: the next pass waits");
        assert_eq!(take_stale(&mut outbox, 1_000 + 2 * OUTBOX_GRACE_MS).len(), 1, "its taker died: again");
    }

    #[test]
    fn caps_count_within_their_window_and_lanes_have_their_own_rules() {
        let caps = Caps { per_day: 2, per_week: 3, critical_per_week: 1, ..Caps::default() };
        let normal = cap_rules(&caps, false);
        let now = 100 * DAY;
        assert_eq!(first_reached(&normal, &[], now), None);
        assert_eq!(first_reached(&normal, &[now - 10, now - 20], now), Some(Skip::DailyCap));
        // A day ago exactly is outside the daily window, inside the weekly one.
        assert_eq!(first_reached(&normal, &[now - DAY, now - 2 * DAY], now), None);
        assert_eq!(first_reached(&normal, &[now - DAY, now - 2 * DAY, now - 3 * DAY], now), Some(Skip::WeeklyCap));
        let critical = cap_rules(&caps, true);
        assert_eq!(first_reached(&critical, &[now - 6 * DAY], now), Some(Skip::CriticalCap));
        assert_eq!(first_reached(&critical, &[now - 7 * DAY], now), None);
    }
}
