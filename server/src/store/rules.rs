//! The rules of the push bookkeeping, defined once: the embedded stores (memory and disk) run
//! them in Rust on the same plain data ([`reserve`], [`add_to_inbox`]), the Redis store passes
//! them to its Lua script (`lua/reserve.lua`) as arguments.

use crate::push::{Caps, InboxMessage, Skip};

const DAY: i64 = 86_400;

/// How long reserved push ids are remembered (de-duplication of yearly and once-per-event
/// pushes); caps only look at the last week.
pub const SENT_KEEP_SECS: i64 = 400 * DAY;

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

/// A push reserved for a subject: (push id, reserved at, critical lane).
pub type Sent = (String, i64, bool);

/// Reserves push `id` in a subject's reservations at `now`: not reserved before in either lane
/// (a duplicate), and within the caps of its lane. Forgets reservations older than
/// [`SENT_KEEP_SECS`] on the way. The embedded stores' whole reservation rule.
pub fn reserve(sent: &mut Vec<Sent>, id: &str, critical: bool, now: i64, caps: &Caps) -> Result<(), Skip> {
    if sent.iter().any(|(x, _, _)| x == id) {
        return Err(Skip::Duplicate);
    }
    sent.retain(|&(_, at, _)| at > now - SENT_KEEP_SECS);
    let lane: Vec<i64> = sent.iter().filter(|x| x.2 == critical).map(|x| x.1).collect();
    if let Some(skip) = first_reached(&cap_rules(caps, critical), &lane, now) {
        return Err(skip);
    }
    sent.push((id.to_owned(), now, critical));
    Ok(())
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
    use super::*;

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
