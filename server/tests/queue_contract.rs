//! The queue contract: every case runs on every backend (the durable embedded queue in a
//! temporary directory, memory, and a real `redis-server` started here), by one macro. A
//! disk-only case (a restart keeps everything) and Redis-only failure cases follow.

#[macro_use]
mod support;

use std::time::Duration;

use tongban_features::domain::SubjectId;
use tongban_server::push::{InboxMessage, Job, Skip, Trigger};
use tongban_server::queue::{wall_ms, Enqueue, Outcome, Queue, Status};
use tongban_server::store::RedisStore;

use support::RedisServer;

struct Harness {
    queue: Queue,
    redis: Option<RedisServer>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    fn disk() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::disk(dir.path()).expect("open the queue in a fresh directory");
        Harness { queue, redis: None, _dir: Some(dir) }
    }

    fn memory() -> Harness {
        Harness { queue: Queue::memory(), redis: None, _dir: None }
    }

    async fn redis() -> Harness {
        let r = RedisServer::start();
        let store = RedisStore::connect(&r.url(), "qc:").await.expect("connect to the test's redis-server");
        let (conn, prefix) = store.connection();
        let queue = Queue::redis(conn, &prefix, 4).await.expect("create the queue");
        Harness { queue, redis: Some(r), _dir: None }
    }
}

fn job(id: &str, subject: &str, trigger: Trigger) -> Job {
    Job {
        subject: SubjectId::parse(subject).unwrap(),
        message: InboxMessage {
            id: id.into(),
            trigger,
            bundle: None,
            services: vec!["s.one".into()],
            title: "t".into(),
            body: "b".into(),
            sms: "s".into(),
            created_at: 1,
            deliver_at: 1,
            expires_at: i64::MAX,
            read: false,
            model: "m".into(),
        },
        critical: false,
        done_after: 0,
        reasons: vec!["test".into()],
        decisions: vec![],
        attempts: 0,
        last_error: None,
        request_id: None,
    }
}

fn ready(job: Job) -> Enqueue {
    Enqueue { job, due_ms: 0, status: Status::Queued }
}

contract!(
    a_job_is_claimed_once_and_finished_with_its_record,
    a_delayed_job_waits_for_its_due_time,
    a_job_left_pending_by_a_dead_worker_is_reclaimed,
    a_retry_counts_the_attempt_and_comes_back_after_its_delay,
    dead_letters_keep_the_reason_newest_first,
    skips_never_overwrite_a_record_and_duplicates_are_only_counted,
    transitions_are_counted_by_status_and_trigger,
    many_jobs_over_partitions_are_all_delivered,
    a_dead_letter_is_redelivered_once_with_its_attempts_reset,
    concurrent_redeliveries_queue_the_job_once,
    erasure_removes_the_subjects_dead_letters_and_only_them,
);

async fn erasure_removes_the_subjects_dead_letters_and_only_them(h: Harness) {
    let q = &h.queue;
    for (id, subject) in [("TB-E1", "u-gone"), ("TB-E2", "u-kept"), ("TB-E3", "u-gone")] {
        q.enqueue(&[ready(job(id, subject, Trigger::Campaign))]).await.unwrap();
        finish_one(q, id, Outcome::Dead { reason: "gateway refused".into() }).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let gone = tongban_features::domain::SubjectId::parse("u-gone").unwrap();
    assert_eq!(q.forget_subject(&gone).await.unwrap(), 2);
    let dead = q.dead_letters(10).await.unwrap();
    let left: Vec<&str> = dead.iter().map(|(j, _)| j.as_ref().unwrap().message.id.as_str()).collect();
    assert_eq!(left, ["TB-E2"]);
    assert_eq!(q.forget_subject(&gone).await.unwrap(), 0, "nothing left to forget");
    // The audit records stay: they name no subject.
    assert_eq!(q.record("TB-E1").await.unwrap().unwrap().status, Status::Dead);
}

async fn a_job_is_claimed_once_and_finished_with_its_record(h: Harness) {
    let q = &h.queue;
    q.enqueue(&[ready(job("TB-1", "u-a", Trigger::NextStep))]).await.unwrap();
    assert_eq!(q.record("TB-1").await.unwrap().unwrap().status, Status::Queued);
    let got = q.claim("w1", 10, 60_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(!got[0].reclaimed);
    assert!(q.claim("w2", 10, 60_000).await.unwrap().is_empty(), "claimed once");
    assert_eq!(q.depth().await.unwrap().pending, 1);
    q.finish(vec![(got[0].clone(), Outcome::Delivered { channels: "inbox".into() })]).await.unwrap();
    let rec = q.record("TB-1").await.unwrap().unwrap();
    assert_eq!((rec.status, rec.detail.as_deref()), (Status::Delivered, Some("inbox")));
    assert!(q.depth().await.unwrap().idle());
}

async fn a_delayed_job_waits_for_its_due_time(h: Harness) {
    let q = &h.queue;
    let due = wall_ms() + 60_000;
    q.enqueue(&[Enqueue { job: job("TB-D", "u-d", Trigger::Renewal), due_ms: due, status: Status::Deferred }])
        .await
        .unwrap();
    assert_eq!(q.promote(wall_ms()).await.unwrap(), 0);
    assert!(q.claim("w", 10, 60_000).await.unwrap().is_empty());
    assert_eq!(q.depth().await.unwrap().delayed, 1);
    assert_eq!(q.promote(due).await.unwrap(), 1);
    let got = q.claim("w", 10, 60_000).await.unwrap();
    assert_eq!(got[0].job.message.id, "TB-D");
}

async fn a_job_left_pending_by_a_dead_worker_is_reclaimed(h: Harness) {
    let q = &h.queue;
    q.enqueue(&[ready(job("TB-P", "u-p", Trigger::NextStep))]).await.unwrap();
    let first = q.claim("dead-worker", 10, 50).await.unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let again = q.claim("live-worker", 10, 50).await.unwrap();
    assert_eq!(again.len(), 1, "reclaimed after the visibility timeout");
    assert!(again[0].reclaimed);
    assert_eq!((first[0].job.attempts, again[0].job.attempts), (0, 1), "a reclaim counts as an attempt");
    // The second worker stops too: a third one sees two attempts.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let third = q.claim("third-worker", 10, 50).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].job.attempts, 2, "reclaims add up");
    q.finish(vec![(third[0].clone(), Outcome::Delivered { channels: "inbox".into() })]).await.unwrap();
    assert!(q.depth().await.unwrap().idle());
}

async fn a_retry_counts_the_attempt_and_comes_back_after_its_delay(h: Harness) {
    let q = &h.queue;
    q.enqueue(&[ready(job("TB-R", "u-r", Trigger::Deadline))]).await.unwrap();
    let c = q.claim("w", 10, 60_000).await.unwrap().remove(0);
    let due = wall_ms() + 1_000;
    q.finish(vec![(c, Outcome::Retry { due_ms: due, error: "webhook answered 503".into() })]).await.unwrap();
    let rec = q.record("TB-R").await.unwrap().unwrap();
    assert_eq!((rec.status, rec.attempts), (Status::Retrying, 1));
    assert_eq!(q.depth().await.unwrap().delayed, 1);
    q.promote(due).await.unwrap();
    let back = q.claim("w", 10, 60_000).await.unwrap();
    assert_eq!(back[0].job.attempts, 1);
    assert_eq!(back[0].job.last_error.as_deref(), Some("webhook answered 503"));
}

async fn dead_letters_keep_the_reason_newest_first(h: Harness) {
    let q = &h.queue;
    for id in ["TB-X1", "TB-X2"] {
        q.enqueue(&[ready(job(id, "u-x", Trigger::Campaign))]).await.unwrap();
        let c = q.claim("w", 10, 60_000).await.unwrap().remove(0);
        q.finish(vec![(c, Outcome::Dead { reason: format!("gone {id}") })]).await.unwrap();
        // Stream ids are per millisecond: keep the two apart.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].1, "gone TB-X2");
    assert_eq!(dead[0].0.as_ref().unwrap().message.id, "TB-X2");
    assert_eq!(q.depth().await.unwrap().dead, 2);
    assert_eq!(q.record("TB-X1").await.unwrap().unwrap().status, Status::Dead);
}

async fn skips_never_overwrite_a_record_and_duplicates_are_only_counted(h: Harness) {
    let q = &h.queue;
    q.enqueue(&[ready(job("TB-S", "u-s", Trigger::NextStep))]).await.unwrap();
    q.skipped(&[(job("TB-S", "u-s", Trigger::NextStep), Skip::WeeklyCap)]).await.unwrap();
    assert_eq!(q.record("TB-S").await.unwrap().unwrap().status, Status::Queued, "the sent push keeps its record");
    q.skipped(&[(job("TB-N", "u-s", Trigger::NextStep), Skip::Duplicate)]).await.unwrap();
    assert!(q.record("TB-N").await.unwrap().is_none(), "a duplicate writes no record");
    q.skipped(&[(job("TB-O", "u-s", Trigger::NextStep), Skip::PushOff)]).await.unwrap();
    let rec = q.record("TB-O").await.unwrap().unwrap();
    assert_eq!((rec.status, rec.detail.as_deref()), (Status::Skipped, Some("push_off")));
}

async fn transitions_are_counted_by_status_and_trigger(h: Harness) {
    let q = &h.queue;
    q.enqueue(&[ready(job("TB-C1", "u-c", Trigger::NextStep)), ready(job("TB-C2", "u-c", Trigger::Renewal))])
        .await
        .unwrap();
    q.skipped(&[(job("TB-C3", "u-c", Trigger::Renewal), Skip::Duplicate)]).await.unwrap();
    let counts = q.counts().await.unwrap();
    let n = |s: Status, t: Trigger| counts.iter().find(|c| c.0 == s && c.1 == t).map_or(0, |c| c.2);
    assert_eq!(n(Status::Queued, Trigger::NextStep), 1);
    assert_eq!(n(Status::Queued, Trigger::Renewal), 1);
    assert_eq!(n(Status::Skipped, Trigger::Renewal), 1);
}

async fn many_jobs_over_partitions_are_all_delivered(h: Harness) {
    let q = &h.queue;
    let jobs: Vec<Enqueue> =
        (0..200).map(|i| ready(job(&format!("TB-M{i}"), &format!("u-m{i}"), Trigger::NextStep))).collect();
    q.enqueue(&jobs).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let got = q.claim("w", 64, 60_000).await.unwrap();
        if got.is_empty() {
            break;
        }
        for c in &got {
            assert!(seen.insert(c.job.message.id.clone()), "claimed twice: {}", c.job.message.id);
        }
        q.finish(got.into_iter().map(|c| (c, Outcome::Delivered { channels: "inbox".into() })).collect())
            .await
            .unwrap();
    }
    assert_eq!(seen.len(), 200);
    assert!(q.depth().await.unwrap().idle());
}

/// Claims the one ready job `id` and finishes it with `outcome`.
async fn finish_one(q: &Queue, id: &str, outcome: Outcome) {
    let mut got = q.claim("w", 10, 60_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.message.id, id);
    q.finish(vec![(got.remove(0), outcome)]).await.unwrap();
}

async fn a_dead_letter_is_redelivered_once_with_its_attempts_reset(h: Harness) {
    let q = &h.queue;
    // One failed attempt, then a permanent failure: the dead letter holds attempts 1.
    q.enqueue(&[ready(job("TB-RD", "u-rd", Trigger::Deadline))]).await.unwrap();
    let due = wall_ms();
    finish_one(q, "TB-RD", Outcome::Retry { due_ms: due, error: "webhook answered 503".into() }).await;
    assert_eq!(q.promote(due).await.unwrap(), 1);
    finish_one(q, "TB-RD", Outcome::Dead { reason: "webhook answered 410".into() }).await;
    // Another dead letter, which stays.
    q.enqueue(&[ready(job("TB-RK", "u-rk", Trigger::Campaign))]).await.unwrap();
    finish_one(q, "TB-RK", Outcome::Dead { reason: "gone".into() }).await;
    assert_eq!(q.depth().await.unwrap().dead, 2);
    let dead = q.dead_letters(10).await.unwrap();
    let rd = dead.iter().filter_map(|(j, _)| j.as_ref()).find(|j| j.message.id == "TB-RD").unwrap();
    assert_eq!(rd.attempts, 1);

    assert!(!q.redeliver("TB-UNKNOWN", wall_ms()).await.unwrap(), "no dead letter with that id");
    assert!(q.redeliver("TB-RD", wall_ms()).await.unwrap());
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.dead), (1, 1), "{d:?}");
    let left: Vec<String> = q.dead_letters(10).await.unwrap().into_iter().map(|(j, _)| j.unwrap().message.id).collect();
    assert_eq!(left, ["TB-RK"]);
    let rec = q.record("TB-RD").await.unwrap().unwrap();
    assert_eq!((rec.status, rec.attempts), (Status::Queued, 0));
    assert!(rec.detail.as_deref().is_some_and(|x| x.contains("redelivered by an operator")), "{rec:?}");
    assert!(!q.redeliver("TB-RD", wall_ms()).await.unwrap(), "redelivered once");
    assert_eq!(q.depth().await.unwrap().ready, 1, "a second call queues nothing");

    // Claimable and deliverable like any job, from a fresh start.
    let got = q.claim("w", 10, 60_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].job.message.id.as_str(), got[0].job.attempts), ("TB-RD", 0));
    q.finish(vec![(got[0].clone(), Outcome::Delivered { channels: "webhook".into() })]).await.unwrap();
    assert_eq!(q.record("TB-RD").await.unwrap().unwrap().status, Status::Delivered);
    let d = q.depth().await.unwrap();
    assert!(d.idle() && d.dead == 1, "{d:?}");
}

async fn concurrent_redeliveries_queue_the_job_once(h: Harness) {
    let q = &h.queue;
    q.enqueue(&[ready(job("TB-RC", "u-rc", Trigger::NextStep))]).await.unwrap();
    finish_one(q, "TB-RC", Outcome::Dead { reason: "gone".into() }).await;
    // Both look the letter up before either moves it (on Redis): only one move may win.
    let (a, b) = tokio::join!(q.redeliver("TB-RC", wall_ms()), q.redeliver("TB-RC", wall_ms()));
    assert_eq!([a.unwrap(), b.unwrap()].iter().filter(|x| **x).count(), 1);
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.dead), (1, 0), "{d:?}");
}

// ---- Disk only.

#[tokio::test]
async fn disk_a_reopened_queue_has_every_job_record_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let later = wall_ms() + 60_000;
    {
        let q = Queue::disk(dir.path()).unwrap();
        let jobs: Vec<Enqueue> = (0..3).map(|i| ready(job(&format!("TB-K{i}"), "u-k", Trigger::NextStep))).collect();
        q.enqueue(&jobs).await.unwrap();
        q.enqueue(&[Enqueue { job: job("TB-KD", "u-k", Trigger::Renewal), due_ms: later, status: Status::Deferred }])
            .await
            .unwrap();
        q.skipped(&[(job("TB-KS", "u-k", Trigger::Campaign), Skip::PushOff)]).await.unwrap();
        let mut got = q.claim("w", 2, 60_000).await.unwrap();
        assert_eq!(got.len(), 2);
        q.finish(vec![(got.remove(0), Outcome::Dead { reason: "gone".into() })]).await.unwrap();
        // got[0] (TB-K1) stays claimed and unfinished: the process dies with it.
    }
    let q = Queue::disk(dir.path()).expect("reopen the same directory");
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.pending, d.delayed, d.dead), (1, 1, 1, 1), "{d:?}");
    assert_eq!(q.record("TB-K0").await.unwrap().unwrap().status, Status::Dead);
    assert_eq!(q.record("TB-KD").await.unwrap().unwrap().status, Status::Deferred);
    assert_eq!(q.record("TB-KS").await.unwrap().unwrap().status, Status::Skipped);
    assert_eq!(q.dead_letters(10).await.unwrap()[0].1, "gone");
    let counts = q.counts().await.unwrap();
    assert!(counts.contains(&(Status::Queued, Trigger::NextStep, 3)), "{counts:?}");
    // The job claimed before the restart comes back after the visibility timeout, marked so.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut ids: Vec<(String, bool)> =
        q.claim("w2", 10, 50).await.unwrap().into_iter().map(|c| (c.job.message.id, c.reclaimed)).collect();
    ids.sort();
    assert_eq!(ids, [("TB-K1".to_owned(), true), ("TB-K2".to_owned(), false)]);
    assert_eq!(q.promote(later).await.unwrap(), 1, "the delayed job is kept");
    assert_eq!(q.claim("w2", 10, 60_000).await.unwrap()[0].job.message.id, "TB-KD");
}

// ---- Redis only.

#[tokio::test]
async fn redis_an_entry_that_is_not_a_job_goes_to_the_dead_letters() {
    let h = Harness::redis().await;
    let mut raw = support::raw(&h.redis.as_ref().unwrap().url()).await;
    let _: String = ::redis::cmd("XADD")
        .arg("qc:tb:{q:0}:ready")
        .arg("*")
        .arg("job")
        .arg("{not json")
        .query_async(&mut raw)
        .await
        .unwrap();
    h.queue.enqueue(&[ready(job("TB-OK", "u-ok", Trigger::NextStep))]).await.unwrap();
    let got = h.queue.claim("w", 10, 60_000).await.unwrap();
    assert_eq!(got.len(), 1, "the good job still comes");
    let dead = h.queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].0.is_none() && dead[0].1.contains("unreadable queued job"), "{:?}", dead[0].1);
}

#[tokio::test]
async fn redis_an_unreadable_dead_letter_is_not_redelivered() {
    let h = Harness::redis().await;
    let mut raw = support::raw(&h.redis.as_ref().unwrap().url()).await;
    // Cut short: it names the push but is no job.
    let _: String = ::redis::cmd("XADD")
        .arg("qc:tb:{q:0}:dead")
        .arg("*")
        .arg("job")
        .arg(r#"{"message":{"id":"TB-U""#)
        .arg("reason")
        .arg("unreadable queued job")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!h.queue.redeliver("TB-U", wall_ms()).await.unwrap());
    let d = h.queue.depth().await.unwrap();
    assert_eq!((d.ready, d.dead), (0, 1), "the entry stays where it was: {d:?}");
}

#[tokio::test]
async fn redis_lost_consumer_groups_and_scripts_are_made_again() {
    let h = Harness::redis().await;
    let mut raw = support::raw(&h.redis.as_ref().unwrap().url()).await;
    // A Redis restarted without persistence: everything gone.
    let _: () = ::redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
    assert!(h.queue.claim("w", 10, 60_000).await.unwrap().is_empty(), "the groups are created again");
    let due = wall_ms() + 10;
    h.queue
        .enqueue(&[Enqueue { job: job("TB-G", "u-g", Trigger::NextStep), due_ms: due, status: Status::Deferred }])
        .await
        .unwrap();
    assert_eq!(h.queue.promote(due + 1).await.unwrap(), 1, "the promote script is loaded again");
    assert_eq!(h.queue.claim("w", 10, 60_000).await.unwrap().len(), 1);
}

#[tokio::test]
async fn redis_down_is_an_error() {
    let mut h = Harness::redis().await;
    h.redis.as_mut().unwrap().kill();
    assert!(h.queue.enqueue(&[ready(job("TB-Z", "u-z", Trigger::NextStep))]).await.is_err());
    assert!(h.queue.claim("w", 10, 60_000).await.is_err());
}
