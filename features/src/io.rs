//! Event-log files: the native log (CSV or JSONL) and generic interaction logs.
//!
//! Every reader produces an [`EventLog`]: subjects and services interned to dense `u32`
//! indices, events sorted *stably* by (subject, time). Ties keep file order; nothing is ever
//! ordered by item id, which in public data sets often follows time and would leak the answer.
//!
//! Generic formats carry no event kinds: each row becomes an `applied` event. Formats without
//! timestamps use the row's position as its time, so the stable sort keeps the file's order.
//!
//! Bad rows are an error naming file, line and reason; with [`BadRowPolicy::Skip`] they are
//! counted in the [`ReadReport`] (with the first few kept for display), never silently dropped.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::{Channel, EventKind, Rating, ServiceId, SubjectId};
use crate::time::Timestamp;

pub use crate::hash::fnv1a;
use crate::log::clip;
pub use crate::log::{EventLog, Interner, LogEvent, NATIVE_HEADER, SUBJECTS_HEADER};

/// Which file format to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `event_id,subject,service,kind,rating,at,channel` CSV with that header.
    NativeCsv,
    /// One JSON object per line with the native fields.
    NativeJsonl,
    /// `user item` per line, in time order within each user.
    Pairs,
    /// `user item1 item2 ...` per line, items in time order.
    Lines,
    /// `user item rating timestamp`, tab- or space-separated, with a header line.
    Tsv,
}

impl LogFormat {
    /// Parses a CLI name (`native`, `csv`, `jsonl`, `pairs`, `lines`, `tsv`); `native` picks CSV
    /// or JSONL by the file's extension.
    pub fn from_name(name: &str, path: &Path) -> Option<LogFormat> {
        Some(match name {
            "native" if path.extension().is_some_and(|e| e == "jsonl") => LogFormat::NativeJsonl,
            "native" | "csv" => LogFormat::NativeCsv,
            "jsonl" => LogFormat::NativeJsonl,
            "pairs" => LogFormat::Pairs,
            "lines" => LogFormat::Lines,
            "tsv" => LogFormat::Tsv,
            _ => return None,
        })
    }
}

/// What to do with a row that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadRowPolicy {
    #[default]
    Fail,
    Skip,
}

/// A row that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRow {
    pub line: u64,
    pub reason: String,
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {reason}")]
    BadRow { path: PathBuf, line: u64, reason: String },
}

/// What a read did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadReport {
    pub rows: u64,
    pub events: u64,
    pub skipped: u64,
    /// The first few skipped rows, for display.
    pub first_skipped: Vec<BadRow>,
}

/// The JSONL form of a native event.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent<'a> {
    event_id: &'a str,
    subject: &'a str,
    service: &'a str,
    kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rating: Option<u8>,
    at: &'a str,
    channel: Channel,
}

/// Reads a log file in the given format.
pub fn read_log(path: &Path, format: LogFormat, policy: BadRowPolicy) -> Result<(EventLog, ReadReport), IoError> {
    read_log_into(path, format, policy, EventLog::default())
}

/// Reads a log file into `base` (e.g. [`EventLog::for_catalogue`]).
pub fn read_log_into(
    path: &Path,
    format: LogFormat,
    policy: BadRowPolicy,
    base: EventLog,
) -> Result<(EventLog, ReadReport), IoError> {
    let file = File::open(path).map_err(|source| IoError::Open { path: path.to_owned(), source })?;
    read_into(BufReader::with_capacity(1 << 20, file), path, format, policy, base)
}

/// Reads a log from any reader; `path` is used in messages only.
pub fn read_log_from<R: BufRead>(
    reader: R,
    path: &Path,
    format: LogFormat,
    policy: BadRowPolicy,
) -> Result<(EventLog, ReadReport), IoError> {
    read_into(reader, path, format, policy, EventLog::default())
}

/// Reads a log from any reader into `base` (e.g. [`EventLog::for_catalogue`]).
pub fn read_into<R: BufRead>(
    mut reader: R,
    path: &Path,
    format: LogFormat,
    policy: BadRowPolicy,
    mut log: EventLog,
) -> Result<(EventLog, ReadReport), IoError> {
    let mut report = ReadReport::default();
    let mut line = String::new();
    let mut lineno = 0u64;
    let mut seq = 0i64;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|source| IoError::Read { path: path.to_owned(), source })?;
        if n == 0 {
            break;
        }
        lineno += 1;
        let row = line.trim_end_matches(['\n', '\r']);
        let is_header = lineno == 1 && matches!(format, LogFormat::NativeCsv | LogFormat::Tsv);
        if is_header {
            if format == LogFormat::NativeCsv && row != NATIVE_HEADER {
                return Err(IoError::BadRow {
                    path: path.to_owned(),
                    line: 1,
                    reason: format!("expected the header {NATIVE_HEADER:?}, got {:?}", clip(row)),
                });
            }
            continue;
        }
        if row.trim().is_empty() {
            continue;
        }
        report.rows += 1;
        let before = log.events.len();
        let res = match format {
            LogFormat::NativeCsv => parse_native_csv(row, &mut log),
            LogFormat::NativeJsonl => parse_native_json(row, &mut log),
            LogFormat::Pairs => parse_generic(row, &mut log, &mut seq, false),
            LogFormat::Lines => parse_generic(row, &mut log, &mut seq, true),
            LogFormat::Tsv => parse_tsv(row, &mut log, &mut seq),
        };
        if let Err(reason) = res {
            log.events.truncate(before);
            match policy {
                BadRowPolicy::Fail => return Err(IoError::BadRow { path: path.to_owned(), line: lineno, reason }),
                BadRowPolicy::Skip => {
                    report.skipped += 1;
                    if report.first_skipped.len() < 10 {
                        report.first_skipped.push(BadRow { line: lineno, reason });
                    }
                }
            }
        }
    }
    log.sort();
    report.events = log.events.len() as u64;
    Ok((log, report))
}

fn parse_native_csv(row: &str, log: &mut EventLog) -> Result<(), String> {
    let mut f = row.split(',');
    let mut next =
        |name: &str| f.next().ok_or_else(|| format!("missing field `{name}` (expected 7 comma-separated fields)"));
    let (id, subject, service, kind, rating, at, channel) = (
        next("event_id")?,
        next("subject")?,
        next("service")?,
        next("kind")?,
        next("rating")?,
        next("at")?,
        next("channel")?,
    );
    if f.next().is_some() {
        return Err("too many fields (expected 7 comma-separated fields)".into());
    }
    let rating = if rating.is_empty() {
        None
    } else {
        Some(
            rating
                .parse::<u8>()
                .map_err(|_| format!("field `rating`: expected 1-5 or empty, got {:?}", clip(rating)))?,
        )
    };
    push_native(log, id, subject, service, kind, rating, at, channel)
}

fn parse_native_json(row: &str, log: &mut EventLog) -> Result<(), String> {
    let j: JsonEvent = serde_json::from_str(row).map_err(|e| format!("bad JSON event: {e}"))?;
    push_native(log, j.event_id, j.subject, j.service, j.kind.as_str(), j.rating, j.at, j.channel.as_str())
}

#[allow(clippy::too_many_arguments)]
fn push_native(
    log: &mut EventLog,
    id: &str,
    subject: &str,
    service: &str,
    kind: &str,
    rating: Option<u8>,
    at: &str,
    channel: &str,
) -> Result<(), String> {
    let field = |name: &'static str| move |e: crate::domain::DomainError| format!("field `{name}`: {e}");
    crate::domain::EventId::parse(id).map_err(field("event_id"))?;
    SubjectId::parse(subject).map_err(field("subject"))?;
    ServiceId::parse(service).map_err(field("service"))?;
    let kind = EventKind::parse(kind).map_err(field("kind"))?;
    let rating = match (kind, rating) {
        (EventKind::Rated, Some(r)) => Rating::new(r).map_err(field("rating"))?.get(),
        (EventKind::Rated, None) => return Err("field `rating`: a rated event needs a rating 1-5".into()),
        (_, Some(_)) => return Err("field `rating`: only rated events carry a rating".into()),
        (_, None) => 0,
    };
    let at = Timestamp::parse(at).ok_or_else(|| {
        format!("field `at`: expected RFC 3339 (2024-03-01T09:15:00+08:00) or epoch seconds, got {:?}", clip(at))
    })?;
    let channel = Channel::parse(channel).map_err(field("channel"))?;
    let ev = LogEvent {
        id: fnv1a(id.as_bytes()),
        service: log.service(service)?,
        subject: log.subjects.intern(subject),
        kind,
        rating,
        channel,
        at,
    };
    log.events.push(ev);
    Ok(())
}

/// `seq` numbers the rows of the file: the event id, so that equal times are distinct events.
fn generic_event(log: &mut EventLog, user: u32, item: &str, at: i64, seq: i64) -> Result<(), String> {
    ServiceId::parse(item).map_err(|e| format!("item: {e}"))?;
    let service = log.service(item)?;
    let id = (u64::from(user) << 32) ^ (seq as u64);
    log.events.push(LogEvent {
        id,
        subject: user,
        service,
        kind: EventKind::Applied,
        rating: 0,
        channel: Channel::Web,
        at: Timestamp(at),
    });
    Ok(())
}

fn parse_generic(row: &str, log: &mut EventLog, seq: &mut i64, many: bool) -> Result<(), String> {
    let mut f = row.split_ascii_whitespace();
    let user = f.next().ok_or("expected `user item`")?;
    SubjectId::parse(user).map_err(|e| format!("user: {e}"))?;
    let items: Vec<&str> = f.collect();
    match (many, items.len()) {
        (_, 0) => return Err("expected at least one item after the user".into()),
        (false, n) if n > 1 => return Err(format!("expected `user item`, got {} items (use --format lines?)", n)),
        _ => {}
    }
    let u = log.subjects.intern(user);
    for item in items {
        *seq += 1;
        generic_event(log, u, item, *seq, *seq)?;
    }
    Ok(())
}

fn parse_tsv(row: &str, log: &mut EventLog, seq: &mut i64) -> Result<(), String> {
    let f: Vec<&str> = row.split(['\t', ' ']).filter(|s| !s.is_empty()).collect();
    let [user, item, rating, ts] = f[..] else {
        return Err(format!("expected 4 fields `user item rating timestamp`, got {}", f.len()));
    };
    SubjectId::parse(user).map_err(|e| format!("user: {e}"))?;
    rating
        .parse::<f32>()
        .ok()
        .filter(|r| r.is_finite())
        .ok_or_else(|| format!("field `rating`: expected a number, got {:?}", clip(rating)))?;
    let at = Timestamp::parse(ts)
        .ok_or_else(|| format!("field `timestamp`: expected epoch seconds or RFC 3339, got {:?}", clip(ts)))?;
    let u = log.subjects.intern(user);
    *seq += 1;
    generic_event(log, u, item, at.0, *seq)
}

/// Segments: 0 unknown, 1-10 persons by age decade (0-9 ... 90+), 11-13 enterprises S/M/L.
pub const SEGMENTS: usize = 14;

/// The name of a segment index.
pub fn segment_name(seg: u16) -> String {
    match seg {
        1..=10 => format!("person:{}-{}", (seg - 1) * 10, (seg - 1) * 10 + 9),
        11 => "enterprise:S".into(),
        12 => "enterprise:M".into(),
        13 => "enterprise:L".into(),
        _ => "unknown".into(),
    }
}

/// Reads `subjects.csv` (as written by `tongban generate`) and returns the segment of each
/// subject index of `log` on the date `on` (subjects absent from the log are interned).
pub fn read_subjects(path: &Path, log: &mut EventLog, on: crate::time::Date) -> Result<Vec<u16>, IoError> {
    let text = std::fs::read_to_string(path).map_err(|source| IoError::Open { path: path.to_owned(), source })?;
    let bad = |line: usize, reason: String| IoError::BadRow { path: path.to_owned(), line: line as u64, reason };
    let mut segs = Vec::new();
    for (i, row) in text.lines().enumerate() {
        if i == 0 {
            if row != SUBJECTS_HEADER {
                return Err(bad(1, format!("expected the header {:?}", SUBJECTS_HEADER)));
            }
            continue;
        }
        let f: Vec<&str> = row.split(',').collect();
        let [id, kind, born, _district, _group, class] = f[..] else {
            return Err(bad(i + 1, format!("expected 6 fields, got {}", f.len())));
        };
        SubjectId::parse(id).map_err(|e| bad(i + 1, format!("field `subject`: {e}")))?;
        let born = crate::time::Date::parse(born)
            .ok_or_else(|| bad(i + 1, format!("field `born`: expected YYYY-MM-DD, got {:?}", clip(born))))?;
        let seg = match (kind, class) {
            ("person", _) => 1 + ((on.year - born.year).clamp(0, 99) / 10) as u16,
            ("enterprise", "S") => 11,
            ("enterprise", "M") => 12,
            ("enterprise", "L") => 13,
            _ => return Err(bad(i + 1, format!("field `kind`/`class`: unexpected {kind:?}/{class:?}"))),
        };
        let s = log.subjects.intern(id) as usize;
        if segs.len() <= s {
            segs.resize(s + 1, 0);
        }
        segs[s] = seg;
    }
    segs.resize(log.subjects.len(), 0);
    Ok(segs)
}

/// Writes native events as CSV or JSONL, streaming.
#[derive(Debug)]
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
    jsonl: bool,
    buf: String,
}

/// One event to write, borrowing its strings.
#[derive(Debug, Clone, Copy)]
pub struct EventRecord<'a> {
    pub event_id: &'a str,
    pub subject: &'a str,
    pub service: &'a str,
    pub kind: EventKind,
    pub rating: u8,
    pub at: Timestamp,
    pub channel: Channel,
}

impl EventWriter {
    pub fn create(path: &Path, jsonl: bool) -> Result<EventWriter, IoError> {
        let file = File::create(path).map_err(|source| IoError::Write { path: path.to_owned(), source })?;
        let mut w = EventWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path: path.to_owned(),
            jsonl,
            buf: String::with_capacity(256),
        };
        if !jsonl {
            w.write_raw(&format!("{NATIVE_HEADER}\n"))?;
        }
        Ok(w)
    }

    fn write_raw(&mut self, s: &str) -> Result<(), IoError> {
        self.out.write_all(s.as_bytes()).map_err(|source| IoError::Write { path: self.path.clone(), source })
    }

    /// Formats one event into `out` (no IO): shared by the writer and parallel producers.
    pub fn format(rec: &EventRecord<'_>, jsonl: bool, out: &mut String) {
        use std::fmt::Write as _;
        if jsonl {
            let j = JsonEvent {
                event_id: rec.event_id,
                subject: rec.subject,
                service: rec.service,
                kind: rec.kind,
                rating: (rec.rating > 0).then_some(rec.rating),
                at: &rec.at.to_string(),
                channel: rec.channel,
            };
            out.push_str(&serde_json::to_string(&j).unwrap_or_default());
            out.push('\n');
        } else {
            let _ = write!(out, "{},{},{},{},", rec.event_id, rec.subject, rec.service, rec.kind.as_str());
            if rec.rating > 0 {
                let _ = write!(out, "{}", rec.rating);
            }
            let _ = writeln!(out, ",{},{}", rec.at, rec.channel.as_str());
        }
    }

    pub fn write(&mut self, rec: &EventRecord<'_>) -> Result<(), IoError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        Self::format(rec, self.jsonl, &mut buf);
        let r = self.write_raw(&buf);
        self.buf = buf;
        r
    }

    /// Writes text already formatted by [`EventWriter::format`].
    pub fn write_formatted(&mut self, s: &str) -> Result<(), IoError> {
        self.write_raw(s)
    }

    pub fn finish(mut self) -> Result<(), IoError> {
        self.out.flush().map_err(|source| IoError::Write { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, format: LogFormat, policy: BadRowPolicy) -> Result<(EventLog, ReadReport), IoError> {
        read_log_from(text.as_bytes(), Path::new("t.log"), format, policy)
    }

    fn items(log: &EventLog) -> Vec<(String, String)> {
        log.events
            .iter()
            .map(|e| (log.subjects.name(e.subject).to_owned(), log.services.name(e.service).to_owned()))
            .collect()
    }

    #[test]
    fn a_malformed_row_fails_with_its_line_number() {
        let text = format!(
            "{NATIVE_HEADER}\ne1,u1,s1,applied,,2024-01-01T00:00:00Z,web\ne2,u1,s2,liked,,2024-01-02T00:00:00Z,web\n"
        );
        let err = read(&text, LogFormat::NativeCsv, BadRowPolicy::Fail).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.log:3: field `kind`: unknown event kind \"liked\""), "{msg}");
        let (log, report) = read(&text, LogFormat::NativeCsv, BadRowPolicy::Skip).unwrap();
        assert_eq!((log.events.len(), report.skipped, report.first_skipped[0].line), (1, 1, 3));
    }

    #[test]
    fn native_csv_and_jsonl_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for jsonl in [false, true] {
            let path = dir.path().join(if jsonl { "e.jsonl" } else { "e.csv" });
            let mut w = EventWriter::create(&path, jsonl).unwrap();
            let recs = [
                EventRecord {
                    event_id: "e1",
                    subject: "u1",
                    service: "p.a",
                    kind: EventKind::Rated,
                    rating: 4,
                    at: Timestamp(1_700_000_000),
                    channel: Channel::App,
                },
                EventRecord {
                    event_id: "e2",
                    subject: "u0",
                    service: "p.b",
                    kind: EventKind::Completed,
                    rating: 0,
                    at: Timestamp(1_600_000_000),
                    channel: Channel::Office,
                },
            ];
            for r in &recs {
                w.write(r).unwrap();
            }
            w.finish().unwrap();
            let fmt = LogFormat::from_name("native", &path).unwrap();
            let (log, rep) = read_log(&path, fmt, BadRowPolicy::Fail).unwrap();
            assert_eq!(rep.events, 2);
            let e = log.events[0];
            assert_eq!(log.subjects.name(e.subject), "u1");
            assert_eq!(
                (e.kind, e.rating, e.channel, e.at),
                (EventKind::Rated, 4, Channel::App, Timestamp(1_700_000_000))
            );
            assert_eq!(e.id, fnv1a(b"e1"));
            assert_eq!(log.events[1].kind, EventKind::Completed);
        }
    }

    #[test]
    fn equal_times_keep_file_order_never_item_order() {
        let tsv = "user\titem\trating\ttimestamp\nu1\t9\t5\t100\nu2\t1\t3\t50\nu1\t3\t4\t100\nu1\t5\t4\t90\n";
        let (log, _) = read(tsv, LogFormat::Tsv, BadRowPolicy::Fail).unwrap();
        let got = items(&log);
        let want = [("u1", "5"), ("u1", "9"), ("u1", "3"), ("u2", "1")];
        assert_eq!(got, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
    }

    #[test]
    fn pairs_and_lines_keep_sequence_order_per_user() {
        let (log, _) = read("1 7\n2 3\n1 2\n1 7\n", LogFormat::Pairs, BadRowPolicy::Fail).unwrap();
        assert_eq!(items(&log).iter().map(|x| x.1.as_str()).collect::<Vec<_>>(), ["7", "2", "7", "3"]);
        let (log, _) = read("1 5 4 3\n2 9\n", LogFormat::Lines, BadRowPolicy::Fail).unwrap();
        assert_eq!(items(&log).iter().map(|x| x.1.as_str()).collect::<Vec<_>>(), ["5", "4", "3", "9"]);
        let err = read("1 5 4\n", LogFormat::Pairs, BadRowPolicy::Fail).unwrap_err();
        assert!(err.to_string().contains("t.log:1: expected `user item`, got 2 items"), "{err}");
    }

    #[test]
    fn a_wrong_header_is_refused() {
        let err = read("a,b,c\n", LogFormat::NativeCsv, BadRowPolicy::Skip).unwrap_err();
        assert!(err.to_string().contains("t.log:1: expected the header"), "{err}");
    }

    #[test]
    fn a_rating_on_a_non_rated_event_is_a_bad_row() {
        let text = format!("{NATIVE_HEADER}\ne1,u1,s1,applied,3,2024-01-01T00:00:00Z,web\n");
        let err = read(&text, LogFormat::NativeCsv, BadRowPolicy::Fail).unwrap_err();
        assert!(err.to_string().contains("only rated events carry a rating"), "{err}");
    }
}
