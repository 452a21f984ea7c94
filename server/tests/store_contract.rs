//! The store contract: every case runs on every backend (the durable embedded store in a
//! temporary directory, memory, and a real `redis-server` started here), by one macro.
//! Disk-only cases (a restart keeps everything) and Redis-only failure cases follow.

#[macro_use]
mod support;

use std::sync::Arc;

use tongban_features::domain::{Channel, EventKind, SubjectId};
use tongban_features::io::LogEvent;
use tongban_features::profile::{BundleIndex, Profile, ProfileContext, ProfileParams};
use tongban_features::time::Timestamp;
use tongban_server::push::{Caps, InboxMessage, Job, Outbound, Preferences, Skip, Trigger};
use tongban_server::store::{
    AuditEntry, Batch, Dedupe, InboxItem, Pending, RedisStore, Reservation, Store, StoreError, INBOX_CAP,
    OUTBOX_GRACE_MS, SEEN_CAP, SEEN_TTL_SECS,
};

use support::RedisServer;

const DAY: i64 = 86_400;
const T0: i64 = 1_780_000_000;

/// A store under test, with its Redis server or data directory if any.
struct Harness {
    store: Arc<Store>,
    redis: Option<RedisServer>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    fn disk() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::disk(dir.path()).expect("open the store in a fresh directory");
        Harness { store: Arc::new(store), redis: None, _dir: Some(dir) }
    }

    fn memory() -> Harness {
        Harness { store: Arc::new(Store::memory()), redis: None, _dir: None }
    }

    async fn redis() -> Harness {
        let r = RedisServer::start();
        let store = RedisStore::connect(&r.url(), "contract:").await.expect("connect to the test's redis-server");
        Harness { store: Arc::new(Store::Redis(store)), redis: Some(r), _dir: None }
    }
}

fn sid(s: &str) -> SubjectId {
    SubjectId::parse(s).unwrap()
}

fn ctx(max_events: usize) -> ProfileContext {
    ProfileContext { params: ProfileParams { max_events, ..ProfileParams::default() }, bundles: BundleIndex::default() }
}

fn event(service: u32, at: i64, kind: EventKind) -> LogEvent {
    LogEvent { id: at as u64, subject: 0, service, kind, rating: 0, channel: Channel::Web, at: Timestamp(at) }
}

fn message(id: &str, created_at: i64) -> InboxMessage {
    InboxMessage {
        id: id.into(),
        trigger: Trigger::NextStep,
        bundle: None,
        services: vec!["s.one".into()],
        title: "t".into(),
        body: "b".into(),
        sms: "s".into(),
        created_at,
        deliver_at: created_at,
        expires_at: created_at + 30 * DAY,
        read: false,
        model: "m".into(),
    }
}

async fn apply(
    store: &Store,
    subject: &SubjectId,
    events: &[LogEvent],
    ids: &[&str],
) -> tongban_server::store::Applied {
    let ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    store.apply(&Batch { subject, events, ids: &ids }, &ctx(64), 3).await.unwrap()
}

contract!(
    events_are_idempotent_by_id_within_and_across_requests,
    event_ids_are_duplicates_within_their_ttl_then_forgotten_and_bounded_per_subject,
    an_event_older_than_a_full_window_is_too_late_not_a_duplicate,
    a_new_profile_takes_its_segment_and_a_missing_one_is_none,
    import_never_overwrites_a_profile_and_keeps_preferences,
    erase_forgets_everything_and_answers_whether_anything_existed,
    preferences_round_trip_and_alone_make_no_profile,
    the_inbox_keeps_one_message_per_id_newest_first_within_its_cap,
    read_marks_only_mark_messages_that_exist,
    reservations_deduplicate_in_both_lanes_and_cap_each_lane,
    caps_count_only_their_window,
    released_reservations_can_be_made_again,
    a_next_step_key_is_deduplicated_over_a_sliding_window,
    a_reservation_keeps_its_push_in_the_outbox_until_cleared_and_recovery_takes_it_once_per_grace,
    an_erased_subject_leaves_no_outbox_entry,
    pages_visit_every_subject_with_a_profile_once,
    concurrent_updates_of_one_subject_lose_nothing,
    batches_of_several_subjects_answer_in_order,
    the_audit_log_is_newest_first_bounded_by_n_and_outlives_an_erasure,
    a_lease_is_held_and_renewed_by_its_holder,
);

async fn events_are_idempotent_by_id_within_and_across_requests(h: Harness) {
    let s = sid("u-idem");
    let evs =
        [event(1, T0, EventKind::Applied), event(2, T0 + 1, EventKind::Applied), event(1, T0, EventKind::Applied)];
    let a = apply(&h.store, &s, &evs, &["e1", "e2", "e1"]).await;
    assert_eq!((a.accepted, a.duplicates, a.too_late), (2, 1, 0), "a repeated id in one request counts once");
    let again = apply(&h.store, &s, &evs[..2], &["e1", "e2"]).await;
    assert_eq!((again.accepted, again.duplicates), (0, 2));
    let p = h.store.profile(&s).await.unwrap().expect("a profile");
    assert_eq!(p.events(), 2);
}

/// Applies events with ids at wall time `now` (the clock the stores record ids with).
async fn apply_at(store: &Store, subject: &SubjectId, events: &[LogEvent], ids: &[String], now: i64) -> (usize, usize) {
    let out = store.apply_many(&[Batch { subject, events, ids }], &[0], &ctx(64), now).await.unwrap().remove(0);
    (out.accepted, out.duplicates)
}

async fn event_ids_are_duplicates_within_their_ttl_then_forgotten_and_bounded_per_subject(h: Harness) {
    let s = sid("u-seen-ttl");
    let id = |x: &str| vec![x.to_owned()];
    // A replayed id is a duplicate, whatever event it carries, until its time to live ends
    // (another event each time, so that the profile's own duplicate check does not answer).
    assert_eq!(apply_at(&h.store, &s, &[event(1, T0, EventKind::Applied)], &id("r1"), T0).await, (1, 0));
    let later = [event(2, T0 + 10, EventKind::Applied)];
    assert_eq!(apply_at(&h.store, &s, &later, &id("r1"), T0 + SEEN_TTL_SECS - 1).await, (0, 1), "within the ttl");
    assert_eq!(apply_at(&h.store, &s, &later, &id("r1"), T0 + SEEN_TTL_SECS).await, (1, 0), "forgotten after it");
    // The ttl runs from the first sighting: a replay does not extend it.
    assert_eq!(
        apply_at(&h.store, &s, &[event(3, T0 + 20, EventKind::Applied)], &id("r1"), T0 + SEEN_TTL_SECS + 5).await,
        (0, 1),
        "seen again at the ttl: a duplicate of that sighting"
    );

    // Bounded: the oldest ids beyond the cap are forgotten first.
    let b = sid("u-seen-cap");
    let ten: Vec<String> = (0..10).map(|i| format!("old-{i}")).collect();
    let evs: Vec<LogEvent> = (0..10).map(|i| event(1, T0 + i, EventKind::Applied)).collect();
    assert_eq!(apply_at(&h.store, &b, &evs, &ten, T0).await, (10, 0));
    let many: Vec<String> = (0..SEEN_CAP).map(|i| format!("new-{i:05}")).collect();
    let evs: Vec<LogEvent> = (0..SEEN_CAP as i64).map(|i| event(2, T0 + 100 + i, EventKind::Applied)).collect();
    assert_eq!(apply_at(&h.store, &b, &evs, &many, T0 + 1).await, (SEEN_CAP, 0));
    let replay = |ids: &[String], base: i64| -> Vec<LogEvent> {
        (0..ids.len() as i64).map(|i| event(3, base + i, EventKind::Applied)).collect()
    };
    let base = T0 + 100 + SEEN_CAP as i64;
    assert_eq!(
        apply_at(&h.store, &b, &replay(&many[..5], base), &many[..5], T0 + 2).await,
        (0, 5),
        "the newest are kept"
    );
    assert_eq!(
        apply_at(&h.store, &b, &replay(&ten, base + 10), &ten, T0 + 2).await,
        (10, 0),
        "the ten oldest were forgotten to keep the cap"
    );
}

async fn an_event_older_than_a_full_window_is_too_late_not_a_duplicate(h: Harness) {
    let s = sid("u-late");
    let ids: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
    let evs: Vec<LogEvent> = (0..4).map(|i| event(i, T0 + i64::from(i) * DAY, EventKind::Applied)).collect();
    let small = ctx(4);
    let full = h.store.apply(&Batch { subject: &s, events: &evs, ids: &ids }, &small, 0).await.unwrap();
    assert_eq!(full.accepted, 4);
    let old = [event(9, T0 - DAY, EventKind::Applied)];
    let late = h.store.apply(&Batch { subject: &s, events: &old, ids: &["old".into()] }, &small, 0).await.unwrap();
    assert_eq!((late.accepted, late.duplicates, late.too_late), (0, 0, 1));
}

async fn a_new_profile_takes_its_segment_and_a_missing_one_is_none(h: Harness) {
    assert!(h.store.profile(&sid("u-nobody")).await.unwrap().is_none());
    apply(&h.store, &sid("u-seg"), &[event(1, T0, EventKind::Applied)], &["x"]).await;
    assert_eq!(h.store.profile(&sid("u-seg")).await.unwrap().unwrap().segment(), 3);
}

async fn import_never_overwrites_a_profile_and_keeps_preferences(h: Harness) {
    let s = sid("u-imp");
    let prefs = Preferences { push: false, ..Preferences::default() };
    h.store.put_prefs(&s, &prefs).await.unwrap();
    let mut offline = Profile::new(5);
    offline.apply(&event(7, T0, EventKind::Completed), &ctx(64));
    assert!(h.store.import_profile(&s, &offline).await.unwrap(), "preferences alone are no profile");
    assert!(!h.store.import_profile(&s, &Profile::new(6)).await.unwrap(), "an existing profile is kept");
    let (p, got) = h.store.profile_and_prefs(&s).await.unwrap();
    assert_eq!(p.unwrap().segment(), 5);
    assert_eq!(got, Some(prefs));
}

async fn erase_forgets_everything_and_answers_whether_anything_existed(h: Harness) {
    let s = sid("u-erase");
    assert!(!h.store.erase(&s).await.unwrap(), "nothing to erase");
    apply(&h.store, &s, &[event(1, T0, EventKind::Applied)], &["a"]).await;
    h.store.put_prefs(&s, &Preferences::default()).await.unwrap();
    h.store.push_inbox(&s, &message("TB-1", T0), DAY).await.unwrap();
    assert_eq!(h.store.reserve(&s, "TB-1", T0, &Caps::default(), false).await.unwrap(), Ok(()));
    assert!(h.store.erase(&s).await.unwrap());
    assert_eq!(h.store.profile_and_prefs(&s).await.unwrap(), (None, None));
    assert!(h.store.inbox(&s).await.unwrap().is_empty());
    assert_eq!(h.store.reserve(&s, "TB-1", T0, &Caps::default(), false).await.unwrap(), Ok(()), "reservations go too");
    assert!(!h.store.import_profile(&s, &Profile::new(1)).await.unwrap(), "an import never brings it back");
    assert!(h.store.profile(&s).await.unwrap().is_none());
    let again = apply(&h.store, &s, &[event(1, T0, EventKind::Applied)], &["a"]).await;
    assert_eq!(again.accepted, 1, "event ids seen go too; live events start a new profile");
}

async fn preferences_round_trip_and_alone_make_no_profile(h: Harness) {
    let s = sid("u-prefs");
    let prefs = Preferences { channels: vec![Outbound::Sms], quiet_hours: None, ..Preferences::default() };
    h.store.put_prefs(&s, &prefs).await.unwrap();
    assert_eq!(h.store.profile_and_prefs(&s).await.unwrap(), (None, Some(prefs.clone())));
    let page = h.store.page(0).await.unwrap();
    assert!(page.1.iter().all(|(x, _, _)| x != &s));
}

async fn the_inbox_keeps_one_message_per_id_newest_first_within_its_cap(h: Harness) {
    let s = sid("u-inbox");
    assert!(h.store.push_inbox(&s, &message("TB-A", T0), DAY).await.unwrap());
    assert!(!h.store.push_inbox(&s, &message("TB-A", T0 + 5), DAY).await.unwrap(), "one message per push id");
    let many: Vec<InboxMessage> =
        (0..INBOX_CAP as i64 + 5).map(|i| message(&format!("TB-{i:03}"), T0 + 10 + i)).collect();
    let items: Vec<InboxItem> = many.iter().map(|m| InboxItem { subject: &s, message: m, ttl_secs: DAY }).collect();
    assert!(h.store.push_inbox_many(&items).await.unwrap().iter().all(|&added| added));
    let inbox = h.store.inbox(&s).await.unwrap();
    assert_eq!(inbox.len(), INBOX_CAP);
    assert_eq!(inbox[0].id, format!("TB-{:03}", INBOX_CAP + 4), "newest first");
    assert!(inbox.windows(2).all(|w| w[0].created_at >= w[1].created_at));
    assert!(inbox.iter().all(|m| m.id != "TB-A"), "the oldest went first");
}

async fn read_marks_only_mark_messages_that_exist(h: Harness) {
    let s = sid("u-read");
    h.store.push_inbox(&s, &message("TB-R", T0), DAY).await.unwrap();
    assert!(!h.store.mark_read(&s, "TB-NOPE").await.unwrap());
    assert!(h.store.mark_read(&s, "TB-R").await.unwrap());
    assert!(h.store.inbox(&s).await.unwrap()[0].read);
}

async fn reservations_deduplicate_in_both_lanes_and_cap_each_lane(h: Harness) {
    let s = sid("u-caps");
    let caps = Caps { per_day: 2, per_week: 3, critical_per_week: 1, ..Caps::default() };
    let r = |id: &'static str, at: i64, critical: bool| {
        let (store, s, caps) = (h.store.clone(), s.clone(), caps);
        async move { store.reserve(&s, id, at, &caps, critical).await.unwrap() }
    };
    assert_eq!(r("n1", T0, false).await, Ok(()));
    assert_eq!(r("n1", T0, true).await, Err(Skip::Duplicate), "an id reserved in either lane is a duplicate");
    assert_eq!(r("n2", T0, false).await, Ok(()));
    assert_eq!(r("n3", T0, false).await, Err(Skip::DailyCap));
    assert_eq!(r("n3", T0 + DAY, false).await, Ok(()));
    assert_eq!(r("n4", T0 + 2 * DAY, false).await, Err(Skip::WeeklyCap));
    assert_eq!(r("c1", T0, true).await, Ok(()), "the critical lane has its own cap");
    assert_eq!(r("c2", T0 + DAY, true).await, Err(Skip::CriticalCap));
    assert_eq!(r("c2", T0 + 7 * DAY, true).await, Ok(()));
}

async fn caps_count_only_their_window(h: Harness) {
    let s = sid("u-window");
    let caps = Caps { per_day: 1, per_week: 2, ..Caps::default() };
    let mut ok = 0;
    for day in 0..14 {
        let id = format!("w{day}");
        if h.store.reserve(&s, &id, T0 + day * DAY, &caps, false).await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 4, "two a week over two weeks");
}

async fn released_reservations_can_be_made_again(h: Harness) {
    let s = sid("u-release");
    let caps = Caps::default();
    assert_eq!(h.store.reserve(&s, "TB-X", T0, &caps, true).await.unwrap(), Ok(()));
    let res = [Reservation::by_id(&s, "TB-X", true)];
    h.store.release(&res).await.unwrap();
    assert_eq!(h.store.reserve(&s, "TB-X", T0, &caps, true).await.unwrap(), Ok(()));
    // A release takes the outbox entry with it.
    let p = pending(&s, "TB-Y", 1_000);
    let with_outbox = [Reservation { outbox: Some(&p), ..Reservation::by_id(&s, "TB-Y", false) }];
    assert_eq!(h.store.reserve_many(&with_outbox, T0, &caps).await.unwrap(), [Ok(())]);
    h.store.release(&with_outbox).await.unwrap();
    assert!(h.store.take_outbox(&[&s], 1_000 + OUTBOX_GRACE_MS).await.unwrap().is_empty());
}

/// An outbox entry of push `id` for `subject`, written at wall time `since_ms`.
fn pending(subject: &SubjectId, id: &str, since_ms: u64) -> Pending {
    let job = Job {
        subject: subject.clone(),
        message: message(id, T0),
        critical: false,
        done_after: 0,
        reasons: vec!["next_in_bundle".into()],
        decisions: vec!["consent:ok".into()],
        attempts: 0,
        last_error: None,
        request_id: None,
    };
    Pending { job, due_ms: since_ms, since_ms }
}

async fn a_next_step_key_is_deduplicated_over_a_sliding_window(h: Harness) {
    let s = sid("u-sliding");
    let caps = Caps { per_day: 10, per_week: 10, ..Caps::default() };
    let week = 7 * DAY;
    let r = |id: &'static str, at: i64| {
        let (store, s) = (h.store.clone(), s.clone());
        async move {
            let it = Reservation {
                dedupe: Dedupe { key: "TD-bundle", horizon_secs: week },
                ..Reservation::by_id(&s, id, false)
            };
            store.reserve_many(&[it], at, &caps).await.unwrap().remove(0)
        }
    };
    // Where the fixed window had a boundary (a multiple of the week).
    let boundary = (T0 / week + 1) * week;
    assert_eq!(r("TB-s1", boundary - 60).await, Ok(()));
    assert_eq!(r("TB-s2", boundary + 60).await, Err(Skip::Duplicate), "a minute across the old boundary");
    assert_eq!(r("TB-s3", boundary - 61 + week).await, Err(Skip::Duplicate), "still within the week");
    assert_eq!(r("TB-s4", boundary - 60 + week).await, Ok(()), "a week after the first: a second push");
    assert_eq!(r("TB-s4", boundary + 3 * week).await, Err(Skip::Duplicate), "a push id is reserved once");
    // Keys are per subject and key: another key pushes at once.
    let other = Reservation {
        dedupe: Dedupe { key: "TD-other", horizon_secs: week },
        ..Reservation::by_id(&s, "TB-s5", false)
    };
    assert_eq!(h.store.reserve_many(&[other], boundary + 120, &caps).await.unwrap(), [Ok(())]);
}

async fn a_reservation_keeps_its_push_in_the_outbox_until_cleared_and_recovery_takes_it_once_per_grace(h: Harness) {
    let (s, t) = (sid("u-outbox"), sid("u-outbox-2"));
    let since = 5_000_000;
    let (lost, sent) = (pending(&s, "TB-lost", since), pending(&t, "TB-sent", since));
    let items = [
        Reservation { outbox: Some(&lost), ..Reservation::by_id(&s, "TB-lost", false) },
        Reservation { outbox: Some(&sent), ..Reservation::by_id(&t, "TB-sent", false) },
    ];
    assert_eq!(h.store.reserve_many(&items, T0, &Caps::default()).await.unwrap(), [Ok(()), Ok(())]);
    // The second was enqueued and cleared; the first's request was dropped before its enqueue.
    h.store.clear_outbox(&[(&t, "TB-sent")]).await.unwrap();
    let both = [&s, &t];
    assert!(h.store.take_outbox(&both, since + OUTBOX_GRACE_MS - 1).await.unwrap().is_empty(), "within the grace");
    let taken = h.store.take_outbox(&both, since + OUTBOX_GRACE_MS).await.unwrap();
    assert_eq!(taken.len(), 1, "only the push never enqueued");
    assert_eq!((&taken[0].job, taken[0].due_ms), (&lost.job, lost.due_ms), "the whole job, to enqueue as it was");
    assert!(
        h.store.take_outbox(&both, since + OUTBOX_GRACE_MS + 1).await.unwrap().is_empty(),
        "taken: a second recovery pass within the grace leaves it"
    );
    h.store.clear_outbox(&[(&s, "TB-lost")]).await.unwrap();
    assert!(h.store.take_outbox(&both, since + 10 * OUTBOX_GRACE_MS).await.unwrap().is_empty(), "cleared");
    // A duplicate reservation writes no outbox entry.
    let again = pending(&s, "TB-lost", since);
    let dup = [Reservation { outbox: Some(&again), ..Reservation::by_id(&s, "TB-lost", false) }];
    assert_eq!(h.store.reserve_many(&dup, T0, &Caps::default()).await.unwrap(), [Err(Skip::Duplicate)]);
    assert!(h.store.take_outbox(&both, since + 20 * OUTBOX_GRACE_MS).await.unwrap().is_empty());
}

async fn an_erased_subject_leaves_no_outbox_entry(h: Harness) {
    let s = sid("u-outbox-erased");
    let p = pending(&s, "TB-e", 1_000);
    let items = [Reservation { outbox: Some(&p), ..Reservation::by_id(&s, "TB-e", false) }];
    assert_eq!(h.store.reserve_many(&items, T0, &Caps::default()).await.unwrap(), [Ok(())]);
    assert!(h.store.erase(&s).await.unwrap(), "an outbox entry is something to erase");
    assert!(h.store.take_outbox(&[&s], 1_000 + OUTBOX_GRACE_MS).await.unwrap().is_empty());
}

async fn pages_visit_every_subject_with_a_profile_once(h: Harness) {
    let n = 300;
    for i in 0..n {
        let s = sid(&format!("u-page-{i}"));
        apply(&h.store, &s, &[event(1, T0, EventKind::Applied)], &["p"]).await;
    }
    h.store.put_prefs(&sid("u-page-prefs-only"), &Preferences::default()).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = 0;
    loop {
        let (next, page) = h.store.page(cursor).await.unwrap();
        for (s, p, _) in page {
            assert_eq!(p.events(), 1);
            seen.insert(s.as_str().to_owned());
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), n, "every subject with a profile, and no other");
}

async fn concurrent_updates_of_one_subject_lose_nothing(h: Harness) {
    let s = sid("u-race");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, s) = (h.store.clone(), s.clone());
            tokio::spawn(async move {
                let e = [event(i, T0 + i64::from(i), EventKind::Applied)];
                let ids = [format!("race-{i}")];
                store.apply(&Batch { subject: &s, events: &e, ids: &ids }, &ctx(64), 0).await.unwrap().accepted
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    assert_eq!(accepted, 16);
    assert_eq!(h.store.profile(&s).await.unwrap().unwrap().events(), 16);
}

async fn batches_of_several_subjects_answer_in_order(h: Harness) {
    let (a, b) = (sid("u-ord-a"), sid("u-ord-b"));
    apply(&h.store, &a, &[event(1, T0, EventKind::Applied)], &["x"]).await;
    let ea = [event(1, T0, EventKind::Applied)];
    let eb = [event(1, T0, EventKind::Applied), event(2, T0 + 1, EventKind::Completed)];
    let (ia, ib) = (vec!["x".to_owned()], vec!["x".to_owned(), "y".to_owned()]);
    let batches = [Batch { subject: &a, events: &ea, ids: &ia }, Batch { subject: &b, events: &eb, ids: &ib }];
    let out = h.store.apply_many(&batches, &[0, 0], &ctx(64), T0).await.unwrap();
    assert_eq!((out[0].accepted, out[0].duplicates), (0, 1));
    assert_eq!(out[1].accepted, 2, "ids are per subject");
    let got = h.store.profiles_and_prefs(&[&b, &a]).await.unwrap();
    assert_eq!(got[0].0.as_ref().unwrap().events(), 2);
    assert_eq!(got[1].0.as_ref().unwrap().events(), 1);
}

fn look_up(at_ms: u64, who: &str, subject: &str) -> AuditEntry {
    AuditEntry { at_ms, who: who.into(), action: "lookup".into(), subject: subject.into() }
}

async fn the_audit_log_is_newest_first_bounded_by_n_and_outlives_an_erasure(h: Harness) {
    let s = sid("u-audited");
    apply(&h.store, &s, &[event(1, T0, EventKind::Applied)], &["a1"]).await;
    assert!(h.store.audit_log(10).await.unwrap().is_empty());
    let written = [look_up(3, "op-1", "u-audited"), look_up(1, "op-2", "u-other"), look_up(2, "op-1", "u-audited")];
    for e in &written {
        h.store.audit(e).await.unwrap();
    }
    // Newest is the last written, whatever its time says.
    assert_eq!(h.store.audit_log(2).await.unwrap(), [written[2].clone(), written[1].clone()]);
    assert!(h.store.audit_log(0).await.unwrap().is_empty());
    assert_eq!(h.store.audit_log(usize::MAX).await.unwrap().len(), 3);
    assert!(h.store.erase(&s).await.unwrap());
    let all = h.store.audit_log(10).await.unwrap();
    assert_eq!(all, [written[2].clone(), written[1].clone(), written[0].clone()], "an erasure keeps who looked");
}

// ---- Disk only: what a restart must keep.

#[tokio::test]
async fn disk_the_audit_log_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::disk(dir.path()).unwrap();
        store.audit(&look_up(1, "op-1", "u-a")).await.unwrap();
        store.audit(&look_up(2, "op-2", "u-b")).await.unwrap();
    }
    let store = Store::disk(dir.path()).expect("reopen the same directory");
    store.audit(&look_up(3, "op-1", "u-c")).await.unwrap();
    let at: Vec<u64> = store.audit_log(10).await.unwrap().into_iter().map(|e| e.at_ms).collect();
    assert_eq!(at, [3, 2, 1], "kept, and numbered after the kept ones");
}

#[tokio::test]
async fn disk_a_reopened_store_has_everything_that_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (s, other) = (sid("u-durable"), sid("u-durable-erased"));
    let opt_out = Preferences { push: false, channels: vec![Outbound::Sms], ..Preferences::default() };
    let caps = Caps { per_day: 1, ..Caps::default() };
    {
        let store = Store::disk(dir.path()).unwrap();
        let a = apply(
            &store,
            &s,
            &[event(1, T0, EventKind::Applied), event(2, T0 + 1, EventKind::Completed)],
            &["d1", "d2"],
        )
        .await;
        assert_eq!(a.accepted, 2);
        store.put_prefs(&s, &opt_out).await.unwrap();
        store.push_inbox(&s, &message("TB-D1", T0), DAY).await.unwrap();
        store.push_inbox(&s, &message("TB-D2", T0 + 1), DAY).await.unwrap();
        assert!(store.mark_read(&s, "TB-D1").await.unwrap());
        assert_eq!(store.reserve(&s, "TB-D1", T0, &caps, false).await.unwrap(), Ok(()));
        apply(&store, &other, &[event(1, T0, EventKind::Applied)], &["o1"]).await;
        assert!(store.erase(&other).await.unwrap());
        // Dropped here: the file is closed as by a restart.
    }
    let store = Store::disk(dir.path()).expect("reopen the same directory");
    let (p, prefs) = store.profile_and_prefs(&s).await.unwrap();
    assert_eq!(p.expect("the profile is kept").events(), 2);
    assert_eq!(prefs, Some(opt_out), "the opt-out is kept");
    let again =
        apply(&store, &s, &[event(1, T0, EventKind::Applied), event(3, T0 + 2, EventKind::Applied)], &["d1", "d3"])
            .await;
    assert_eq!((again.accepted, again.duplicates), (1, 1), "event ids seen are kept: a re-sent event is a duplicate");
    let inbox = store.inbox(&s).await.unwrap();
    assert_eq!(inbox.iter().map(|m| (m.id.as_str(), m.read)).collect::<Vec<_>>(), [("TB-D2", false), ("TB-D1", true)]);
    assert!(!store.push_inbox(&s, &message("TB-D1", T0), DAY).await.unwrap(), "one message per push id");
    assert_eq!(
        store.reserve(&s, "TB-D1", T0, &caps, true).await.unwrap(),
        Err(Skip::Duplicate),
        "reservations are kept"
    );
    assert_eq!(
        store.reserve(&s, "TB-D9", T0, &caps, false).await.unwrap(),
        Err(Skip::DailyCap),
        "and count for the caps"
    );
    assert!(
        !store.import_profile(&other, &Profile::new(1)).await.unwrap(),
        "the erasure is kept: no import brings it back"
    );
    assert!(store.profile(&other).await.unwrap().is_none());
    let mut cursor = 0;
    let mut paged = Vec::new();
    loop {
        let (next, page) = store.page(cursor).await.unwrap();
        paged.extend(page.into_iter().map(|(x, _, _)| x));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(paged, [s]);
}

#[tokio::test]
async fn disk_an_import_of_many_profiles_is_one_answer_per_profile() {
    let h = Harness::disk();
    let (a, b, erased) = (sid("u-many-a"), sid("u-many-b"), sid("u-many-x"));
    let mut offline = Profile::new(2);
    offline.apply(&event(7, T0, EventKind::Completed), &ctx(64));
    apply(&h.store, &a, &[event(1, T0, EventKind::Applied)], &["live"]).await;
    h.store.put_prefs(&erased, &Preferences::default()).await.unwrap();
    h.store.erase(&erased).await.unwrap();
    let got = h.store.import_profiles(&[(&a, &offline), (&b, &offline), (&erased, &offline)]).await.unwrap();
    assert_eq!(got, [false, true, false], "live data is kept, an erased subject stays erased");
    assert_eq!(h.store.import_profiles(&[(&b, &offline)]).await.unwrap(), [false], "a second import keeps it");
}

#[tokio::test]
async fn disk_ids_of_a_first_version_file_stay_duplicates_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The first version's table: (subject, id) -> (), no times.
        let db = redb::Database::create(dir.path().join(tongban_server::store::disk::STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        let old: redb::TableDefinition<(&str, &str), ()> = redb::TableDefinition::new("seen");
        txn.open_table(old).unwrap().insert(("u-v1", "e-old"), ()).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::disk(dir.path()).unwrap();
    let now = (tongban_server::clock::wall_ms() / 1000) as i64;
    let s = sid("u-v1");
    let ids = ["e-old".to_owned()];
    assert_eq!(apply_at(&store, &s, &[event(1, T0, EventKind::Applied)], &ids, now).await, (0, 1), "migrated");
    assert_eq!(
        apply_at(&store, &s, &[event(1, T0, EventKind::Applied)], &ids, now + SEEN_TTL_SECS).await,
        (1, 0),
        "as first seen at the upgrade"
    );
}

#[test]
fn disk_a_directory_that_cannot_be_created_is_named_in_the_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let dir = file.path().join("data");
    let err = Store::disk(&dir).unwrap_err().to_string();
    assert!(err.contains(&dir.display().to_string()), "{err}");
}

async fn a_lease_is_held_and_renewed_by_its_holder(h: Harness) {
    assert!(h.store.lease("scan", "worker-a", 60_000).await.unwrap());
    assert!(h.store.lease("scan", "worker-a", 60_000).await.unwrap(), "the holder renews");
    // Other leases are independent.
    assert!(h.store.lease("other", "worker-b", 60_000).await.unwrap());
}

// ---- Redis only: what a networked backend can meet.

#[tokio::test]
async fn redis_one_lease_holder_at_a_time_until_it_expires() {
    let h = Harness::redis().await;
    assert!(h.store.lease("scan", "worker-a", 300).await.unwrap());
    assert!(!h.store.lease("scan", "worker-b", 300).await.unwrap(), "held by worker-a");
    // worker-a renews; worker-b still waits.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(h.store.lease("scan", "worker-a", 300).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!h.store.lease("scan", "worker-b", 300).await.unwrap(), "renewed by worker-a");
    // worker-a stops renewing (dies): the lease expires and passes to worker-b.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(h.store.lease("scan", "worker-b", 300).await.unwrap());
    assert!(!h.store.lease("scan", "worker-a", 300).await.unwrap());
}

#[tokio::test]
async fn redis_a_restart_that_forgot_the_scripts_is_recovered_alone() {
    let h = Harness::redis().await;
    let url = h.redis.as_ref().unwrap().url();
    let mut raw = support::raw(&url).await;
    let s = sid("u-noscript");
    apply(&h.store, &s, &[event(1, T0, EventKind::Applied)], &["a"]).await;
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
    let a = apply(&h.store, &s, &[event(2, T0 + 1, EventKind::Applied)], &["b"]).await;
    assert_eq!(a.accepted, 1, "the compare-and-set script is loaded again");
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
    assert_eq!(h.store.reserve(&s, "TB-1", T0, &Caps::default(), false).await.unwrap(), Ok(()));
}

#[tokio::test]
async fn redis_ids_in_a_first_version_set_stay_duplicates() {
    let h = Harness::redis().await;
    let mut raw = support::raw(&h.redis.as_ref().unwrap().url()).await;
    let _: () = ::redis::cmd("SADD").arg("contract:tb:{u:u-v1}:e").arg("e-old").query_async(&mut raw).await.unwrap();
    let ids = ["e-old".to_owned()];
    assert_eq!(apply_at(&h.store, &sid("u-v1"), &[event(1, T0, EventKind::Applied)], &ids, T0).await, (0, 1));
    assert!(h.store.erase(&sid("u-v1")).await.unwrap(), "the old set is erased too");
    let n: i64 = ::redis::cmd("EXISTS").arg("contract:tb:{u:u-v1}:e").query_async(&mut raw).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn redis_an_unreadable_profile_fails_only_its_own_subject() {
    let h = Harness::redis().await;
    let mut raw = support::raw(&h.redis.as_ref().unwrap().url()).await;
    let (good, bad) = (sid("u-good"), sid("u-bad"));
    apply(&h.store, &good, &[event(1, T0, EventKind::Applied)], &["a"]).await;
    let _: () =
        ::redis::cmd("SET").arg("contract:tb:{u:u-bad}:p").arg("not a profile").query_async(&mut raw).await.unwrap();
    let each = h.store.profiles_and_prefs_each(&[&good, &bad]).await.unwrap();
    assert!(each[0].is_ok());
    assert!(matches!(each[1], Err(StoreError::Corrupt(_))), "{:?}", each[1]);
    assert!(matches!(h.store.profile(&bad).await, Err(StoreError::Corrupt(_))));
}

#[tokio::test]
async fn redis_that_lost_its_data_says_so_on_ping() {
    let h = Harness::redis().await;
    let mut raw = support::raw(&h.redis.as_ref().unwrap().url()).await;
    assert!(h.store.ping().await.is_ok());
    let _: () = ::redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    let r = h.store.ping().await;
    assert!(matches!(&r, Err(StoreError::Lost(m)) if m.contains("marker")), "{r:?}");
}

#[tokio::test]
async fn redis_down_is_an_error_never_a_silent_drop() {
    let mut h = Harness::redis().await;
    let s = sid("u-down");
    apply(&h.store, &s, &[event(1, T0, EventKind::Applied)], &["a"]).await;
    h.redis.as_mut().unwrap().kill();
    let ids = ["b".to_owned()];
    let e = [event(2, T0 + 1, EventKind::Applied)];
    let r = h.store.apply(&Batch { subject: &s, events: &e, ids: &ids }, &ctx(64), 0).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(matches!(h.store.ping().await, Err(StoreError::Unavailable(_))));
    assert!(h.store.reserve(&s, "TB-1", T0, &Caps::default(), false).await.is_err());
}
