//! Profiles: one batch over a log equals applying its events one by one, in any arrival order
//! within the documented bounds; encoding round-trips and refuses bad bytes.

use proptest::prelude::*;
use tongban_features::catalogue::Catalogue;
use tongban_features::domain::{Channel, EventKind};
use tongban_features::io::{EventLog, LogEvent};
use tongban_features::profile::{BundleIndex, Profile, ProfileBuilder, ProfileContext, ProfileError, ProfileParams};
use tongban_features::time::Timestamp;

const SERVICES: u32 = 10;

fn catalogue() -> Catalogue {
    let mut text = String::new();
    for i in 0..SERVICES {
        text += &format!(
            "[[service]]\nid = \"p.s{i}\"\nzh = \"事项{i}\"\nen = \"S{i}\"\ndepartment = \"部门\"\naudience = \"person\"\n\
             item_type = \"other\"\ncategory = \"daily\"\nonline = true\ntime_limit_days = 1\nrepeatable = true\n\n"
        );
    }
    text += "[[bundle]]\nid = \"b.x\"\nzh = \"一件事\"\nen = \"X\"\nstage = \"daily\"\naudience = \"person\"\nlife_event = \"move\"\n";
    for (i, after) in [(0, ""), (1, "\"p.s0\""), (2, "\"p.s0\""), (3, "\"p.s1\", \"p.s2\"")] {
        text += &format!("[[bundle.step]]\nservice = \"p.s{i}\"\nafter = [{after}]\ndelay_days = [0, 5]\n");
    }
    Catalogue::from_sources(&[("t.toml".into(), text)]).unwrap()
}

fn ctx(max_events: usize) -> ProfileContext {
    let params = ProfileParams { max_events, max_services: SERVICES as usize, half_life_days: 30.0 }.check().unwrap();
    ProfileContext { params, bundles: BundleIndex::new(&catalogue()) }
}

const KINDS: [EventKind; 6] = [
    EventKind::Applied,
    EventKind::Completed,
    EventKind::Viewed,
    EventKind::Dismissed,
    EventKind::Rated,
    EventKind::Rejected,
];

/// Raw material for one case: events (service, kind, time step), then for each event an
/// arrival jitter and maybe a duplicate with its own jitter.
fn events() -> impl Strategy<Value = Vec<(u32, usize, i64, f64, Option<f64>)>> {
    prop::collection::vec(
        (0..SERVICES, 0..KINDS.len(), 1..4i64, 0.0..1.0f64, prop::option::weighted(0.2, 0.0..1.0f64)),
        0..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn batch_equals_incremental_for_any_bounded_arrival_order(raw in events(), window in 4usize..24) {
        let ctx = ctx(window);
        // Time-ordered events (ties have their own test below).
        let mut t = 1_700_000_000i64;
        let evs: Vec<LogEvent> = raw
            .iter()
            .enumerate()
            .map(|(i, &(service, kind, step, _, _))| {
                t += step * 3600;
                let kind = KINDS[kind];
                LogEvent {
                    id: 1000 + i as u64 * 7919 % 1009,
                    subject: 0,
                    service,
                    kind,
                    rating: if kind == EventKind::Rated { 4 } else { 0 },
                    channel: Channel::Web,
                    at: Timestamp(t),
                }
            })
            .collect();
        // Arrival: each event late by less than d = window / 2 positions; a duplicate arrives
        // less than d positions after its original.
        let d = (window / 2) as f64;
        let mut arrivals: Vec<(f64, LogEvent)> = Vec::new();
        for (i, (e, r)) in evs.iter().zip(&raw).enumerate() {
            let key = i as f64 + r.3 * (d - 1.0);
            arrivals.push((key, *e));
            if let Some(j) = r.4 {
                arrivals.push((key + j * (d - 1.0), *e));
            }
        }
        arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));

        let mut log = EventLog::default();
        log.subjects.intern("u");
        log.events = evs.clone();
        log.events.extend(raw.iter().zip(&evs).filter(|(r, _)| r.4.is_some()).map(|(_, e)| *e));
        log.sort();
        let batch = ProfileBuilder::new(&ctx).build(&log, &[3]).remove(0);

        let mut inc = Profile::new(3);
        for (_, e) in &arrivals {
            inc.apply(e, &ctx);
        }
        prop_assert_eq!(&inc, &batch);
        // Every distinct event counts; a duplicate whose original already left a small window
        // through a tie in time may count again, identically in both paths.
        if raw.iter().all(|r| r.4.is_none()) {
            prop_assert_eq!(inc.events(), evs.len() as u64);
        } else {
            prop_assert!(inc.events() >= evs.len() as u64);
        }
        prop_assert_eq!(inc.too_late(), 0);
        prop_assert_eq!(Profile::decode(&batch.encode()).unwrap(), batch);
    }
}

fn ev(id: u64, service: u32, kind: EventKind, at: i64) -> LogEvent {
    LogEvent { id, subject: 0, service, kind, rating: 0, channel: Channel::Web, at: Timestamp(at) }
}

#[test]
fn equal_times_are_ordered_by_id_whatever_the_arrival_order() {
    let ctx = ctx(3);
    let evs = [ev(30, 1, EventKind::Applied, 50), ev(10, 2, EventKind::Viewed, 50), ev(20, 3, EventKind::Applied, 50)];
    let mut a = Profile::new(0);
    let mut b = Profile::new(0);
    for e in &evs {
        a.apply(e, &ctx);
    }
    for e in evs.iter().rev() {
        b.apply(e, &ctx);
    }
    assert_eq!(a, b);
    assert_eq!(a.recent().iter().map(|r| r.id).collect::<Vec<_>>(), [10, 20, 30]);
}

#[test]
fn bundle_progress_records_each_step_once_at_its_earliest_time() {
    let ctx = ctx(16);
    let mut p = Profile::new(0);
    p.apply(&ev(1, 1, EventKind::Applied, 200), &ctx);
    p.apply(&ev(2, 0, EventKind::Completed, 100), &ctx);
    p.apply(&ev(3, 1, EventKind::Completed, 300), &ctx);
    p.apply(&ev(4, 2, EventKind::Viewed, 400), &ctx);
    let b = &p.bundles()[0];
    assert_eq!(b.steps, vec![(0, 100), (1, 200)]);
    assert_eq!(p.count(1).map(|c| (c.starts, c.needs)), Some((1, 2)));
    assert_eq!(p.count(2).map(|c| (c.needs, c.signals)), Some((0, 1)));
    assert_eq!(p.recent().iter().map(|r| r.id).collect::<Vec<_>>(), [2, 1, 3, 4]);
}

#[test]
fn an_event_older_than_a_full_window_is_counted_as_too_late_and_changes_nothing_else() {
    let ctx = ctx(4);
    let mut p = Profile::new(0);
    for i in 0..4 {
        assert!(p.apply(&ev(10 + i, i as u32, EventKind::Applied, 1000 + i as i64), &ctx));
    }
    let before = p.clone();
    assert!(!p.apply(&ev(99, 5, EventKind::Applied, 10), &ctx));
    assert_eq!(p.too_late(), 1);
    assert_eq!(p.recent(), before.recent());
    assert_eq!(p.services(), before.services());
    // A duplicate is ignored, and so is not counted as too late.
    assert!(!p.apply(&ev(12, 2, EventKind::Applied, 1002), &ctx));
    assert_eq!(p.too_late(), 1);
}

#[test]
fn the_least_recently_used_service_is_evicted_beyond_the_bound() {
    let mut ctx = ctx(64);
    ctx.params.max_services = 3;
    let mut p = Profile::new(0);
    for (i, s) in [0u32, 1, 2, 0, 3].into_iter().enumerate() {
        p.apply(&ev(i as u64, s, EventKind::Applied, i as i64 * 10), &ctx);
    }
    assert_eq!(p.services().iter().map(|c| c.service).collect::<Vec<_>>(), [0, 2, 3]);
}

#[test]
fn corrupt_or_wrong_version_bytes_are_errors_not_panics() {
    let ctx = ctx(8);
    let mut p = Profile::new(2);
    p.apply(&ev(1, 0, EventKind::Applied, 5), &ctx);
    let bytes = p.encode();
    assert_eq!(bytes[0], tongban_features::profile::PROFILE_VERSION);
    assert_eq!(Profile::decode(&bytes), Ok(p));
    assert_eq!(Profile::decode(&[]), Err(ProfileError::Empty));
    let mut wrong = bytes.clone();
    wrong[0] = 99;
    assert_eq!(Profile::decode(&wrong), Err(ProfileError::Version { found: 99 }));
    for cut in 1..bytes.len() {
        assert!(matches!(Profile::decode(&bytes[..cut]), Err(ProfileError::Corrupt(_))), "cut at {cut}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(Profile::decode(&long), Err(ProfileError::Corrupt(_))));
    // Random garbage never panics.
    let mut x = 12345u64;
    for _ in 0..2000 {
        let n = (x % 64) as usize;
        let junk: Vec<u8> = (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let mut b = vec![1u8];
        b.extend(junk);
        let _ = Profile::decode(&b);
    }
}

#[test]
fn bad_parameters_are_refused() {
    assert_eq!(ProfileParams { max_events: 0, ..ProfileParams::default() }.check(), Err(ProfileError::MaxEvents(0)));
    assert_eq!(
        ProfileParams { half_life_days: f32::NAN, ..ProfileParams::default() }.check(),
        Err(ProfileError::HalfLife)
    );
}
