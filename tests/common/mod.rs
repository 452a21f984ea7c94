//! Helpers shared by the end-to-end tests of the binary.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use tongban_features::catalogue::Catalogue;
use tongban_features::io::{read_into, BadRowPolicy, EventLog, LogFormat};
use tongban_features::synth::{generate, GenParams, MemorySink};
use tongban_model::artifact::{self, DataInfo};
use tongban_model::eval::{train, TrainStyle};
use tongban_model::ModelParams;

/// A small generated history and a model trained on it quickly.
pub struct SmallModel {
    pub catalogue: Arc<Catalogue>,
    pub model_file: tempfile::NamedTempFile,
    pub log: EventLog,
    /// The generated events.csv.
    pub events_csv: String,
    /// Just after the newest event.
    pub now: i64,
}

pub fn small_model(persons: u64, enterprises: u64) -> SmallModel {
    let cat = Arc::new(Catalogue::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogue")).unwrap());
    let mut files = MemorySink::default();
    generate(&cat, &GenParams { persons, enterprises, truth_samples: 0, ..GenParams::default() }, &mut files).unwrap();
    let base = EventLog::for_catalogue(&cat);
    let (log, _) =
        read_into(files.events.as_bytes(), Path::new("gen"), LogFormat::NativeCsv, BadRowPolicy::Fail, base).unwrap();
    let mut params = ModelParams::default();
    params.ranker.max_cases = 2000;
    params.ranker.max_iterations = 60;
    // The sequence model is on the request path; a few epochs are enough for these tests.
    params.seq.epochs = 3;
    let model = train(&log, &[], Some(cat.clone()), &params, TrainStyle::Temporal { horizon_days: 90 }).unwrap();
    let now = log.events.iter().map(|e| e.at.0).max().unwrap() + 1;
    let data = DataInfo {
        source: "gen".into(),
        fingerprint: "00".into(),
        events: log.events.len() as u64,
        subjects: 0,
        services: 0,
    };
    let header = artifact::header_for(&model, data, None, "2026-11-27T00:00:00Z".into());
    let model_file = tempfile::NamedTempFile::new().unwrap();
    artifact::save(model_file.path(), &model, &header).unwrap();
    SmallModel { catalogue: cat, model_file, log, events_csv: files.events, now }
}

/// Runs the built `tongban` binary from the repository root.
pub fn tongban(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tongban"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

/// `n` ready next-step pushes `TB-<i in hex>` for `subjects` in turn, made at `now` (the load of
/// the worker tests: what the pipeline would queue, without a model).
pub fn ready_pushes(
    subjects: &[tongban_features::domain::SubjectId],
    n: usize,
    now: i64,
) -> Vec<tongban_server::queue::Enqueue> {
    use tongban_server::push::{InboxMessage, Job, Trigger};
    (0..n)
        .map(|i| tongban_server::queue::Enqueue {
            job: Job {
                subject: subjects[i % subjects.len()].clone(),
                message: InboxMessage {
                    id: format!("TB-{i:016X}"),
                    trigger: Trigger::NextStep,
                    bundle: None,
                    services: Vec::new(),
                    title: format!("push {i}"),
                    body: String::new(),
                    sms: String::new(),
                    created_at: now,
                    deliver_at: now,
                    expires_at: now + 30 * 86_400,
                    read: false,
                    model: "test".into(),
                },
                critical: false,
                done_after: 0,
                reasons: Vec::new(),
                decisions: Vec::new(),
                attempts: 0,
                last_error: None,
                request_id: None,
            },
            due_ms: 0,
            status: tongban_server::queue::Status::Queued,
        })
        .collect()
}
