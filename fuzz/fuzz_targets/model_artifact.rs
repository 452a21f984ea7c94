//! The model artifact loader (`tongban_model::artifact::from_bytes`, what `load` calls after
//! reading the file) on any bytes.
//!
//! The first input byte picks the mode. Bit 1: load with the built-in catalogue (as `serve`
//! does for a model trained on a native log) or without one. Bit 0: *reseal*: the rest is
//! taken as a model file without its checksum; the target rewrites the body length (all
//! bytes after the header) and appends the right SHA-256. Without resealing, a fuzzer never
//! gets past the checksum (the property there: anything not bit-exact is refused, and no
//! declared length is trusted before it is checked against the file); resealed, its
//! mutations reach the JSON header, the postcard body and the consistency checks, where a
//! "valid" file with hostile contents must still be refused or load into a model that scores
//! without panicking. Never a panic, never an allocation the input's size does not justify
//! (libFuzzer's `-rss_limit_mb` and `-malloc_limit_mb` catch those).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use tongban_features::catalogue::Catalogue;
use tongban_features::domain::{Channel, EventKind};
use tongban_features::io::{EventLog, LogEvent};
use tongban_features::time::Timestamp;
use tongban_model::artifact::{from_bytes, ArtifactError, MAGIC};

fn catalogue() -> &'static Arc<Catalogue> {
    static C: OnceLock<Arc<Catalogue>> = OnceLock::new();
    C.get_or_init(|| Arc::new(Catalogue::builtin()))
}

/// `file` (magic, version, header length, header, body length, body, no checksum) with the
/// body length made to match and the checksum appended; `None` if too short to hold a header.
fn reseal(file: &[u8]) -> Option<Vec<u8>> {
    let head_at = MAGIC.len() + 4 + 8;
    let hlen = usize::try_from(u64::from_le_bytes(file.get(MAGIC.len() + 4..head_at)?.try_into().ok()?)).ok()?;
    let body_at = head_at.checked_add(hlen)?.checked_add(8)?;
    let body = file.get(body_at..)?;
    let mut out = file[..body_at - 8].to_vec();
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else { return };
    let cat = (mode & 2 != 0).then(|| catalogue().clone());
    let resealed;
    let bytes = if mode & 1 != 0 {
        match reseal(file) {
            Some(b) => {
                resealed = b;
                &resealed[..]
            }
            None => return,
        }
    } else {
        file
    };
    match from_bytes(bytes, "fuzz.model", cat) {
        Ok((model, header)) => {
            assert_eq!(header.format_version, tongban_model::artifact::FORMAT_VERSION);
            // A model that loaded is used: one subject with up to three events of its first
            // services, recommended for (service indices straight from the model's list, so
            // only when its ids are distinct).
            let mut log = EventLog::default();
            for s in model.services() {
                log.services.intern(s);
            }
            if log.services.len() != model.service_count() {
                return;
            }
            let u = log.subjects.intern("u");
            for (i, at) in (0..model.service_count().min(3) as u32).zip([100, 200, 300]) {
                let ev = LogEvent {
                    id: u64::from(i),
                    subject: u,
                    service: i,
                    kind: EventKind::Applied,
                    rating: 0,
                    channel: Channel::Web,
                    at: Timestamp(at),
                };
                log.events.push(ev);
            }
            let profiles = model.profiles(&log, &[]);
            let mut scratch = model.scratch();
            let req = tongban_model::Request::default();
            for p in &profiles {
                let _ = model.recommend(p, &req, 400, &mut scratch);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("fuzz.model"), "an error that does not name the file: {msg}");
            assert!(!matches!(e, ArtifactError::Read { .. } | ArtifactError::Write { .. }), "{msg}");
        }
    }
});
