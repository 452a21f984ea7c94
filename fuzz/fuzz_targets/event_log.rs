//! The event-log readers (`tongban_features::io::read_into`) on any bytes.
//!
//! The first input byte picks the reader: its low bits the format (native CSV, native JSONL,
//! pairs, lines, TSV), bit 6 whether the log starts from the built-in catalogue (a closed set
//! of services, as `train` reads native logs) or empty, bit 7 the bad-row policy. The rest is
//! the file. The property is the one of `tests/robustness.rs`: no panic; Ok with a report that
//! adds up, or an error that names the file.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tongban_features::catalogue::Catalogue;
use tongban_features::io::{read_into, BadRowPolicy, EventLog, LogFormat};

const FORMATS: [LogFormat; 5] =
    [LogFormat::NativeCsv, LogFormat::NativeJsonl, LogFormat::Pairs, LogFormat::Lines, LogFormat::Tsv];

fn base() -> &'static EventLog {
    static B: OnceLock<EventLog> = OnceLock::new();
    B.get_or_init(|| EventLog::for_catalogue(&Catalogue::builtin()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, file)) = data.split_first() else { return };
    let format = FORMATS[usize::from(sel & 0x3f) % FORMATS.len()];
    let log = if sel & 0x40 != 0 { base().clone() } else { EventLog::default() };
    let policy = if sel & 0x80 != 0 { BadRowPolicy::Skip } else { BadRowPolicy::Fail };
    match read_into(file, Path::new("fuzz.log"), format, policy, log) {
        Ok((log, report)) => {
            assert_eq!(report.events, log.events.len() as u64);
            assert!(report.skipped <= report.rows, "{report:?}");
            assert!(policy == BadRowPolicy::Skip || report.skipped == 0, "{report:?}");
        }
        Err(e) => assert!(e.to_string().contains("fuzz.log"), "an error that does not name the file: {e}"),
    }
});
