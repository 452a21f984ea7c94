//! The event log in memory: interned subjects and services, compact events. The readers and
//! writers of its files are in [`crate::io`]; the generator ([`crate::synth`]) produces it.

use std::collections::HashMap;

use crate::domain::{Channel, EventKind};
use crate::time::Timestamp;

/// The header of the native CSV log.
pub const NATIVE_HEADER: &str = "event_id,subject,service,kind,rating,at,channel";

/// The header of `subjects.csv`.
pub const SUBJECTS_HEADER: &str = "subject,kind,born,district,group,class";

/// Strings to dense indices, in first-seen order.
#[derive(Debug, Clone, Default)]
pub struct Interner {
    map: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.map.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.into());
        self.map.insert(s.into(), i);
        i
    }
    pub fn get(&self, s: &str) -> Option<u32> {
        self.map.get(s).copied()
    }
    pub fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One event in compact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEvent {
    /// 64-bit FNV-1a hash of the event id string (for de-duplication).
    pub id: u64,
    pub subject: u32,
    pub service: u32,
    pub kind: EventKind,
    /// 1-5 for `rated`, 0 otherwise.
    pub rating: u8,
    pub channel: Channel,
    pub at: Timestamp,
}

/// A whole log in memory, sorted stably by (subject, time).
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    pub subjects: Interner,
    pub services: Interner,
    pub events: Vec<LogEvent>,
    /// When set, the services are fixed (a catalogue's) and an unknown one is a bad row.
    pub(crate) closed: bool,
}

impl EventLog {
    /// An empty log whose service indices are the catalogue's: reading into it rejects
    /// services the catalogue does not know.
    pub fn for_catalogue(cat: &crate::catalogue::Catalogue) -> EventLog {
        let mut log = EventLog::default();
        for s in cat.services() {
            log.services.intern(&s.id);
        }
        log.closed = true;
        log
    }

    /// A log with the same subjects and services (and closedness) but no events: for subsets
    /// and for reading a second file with the same indices.
    pub fn empty_like(&self) -> EventLog {
        EventLog {
            subjects: self.subjects.clone(),
            services: self.services.clone(),
            events: Vec::new(),
            closed: self.closed,
        }
    }

    pub(crate) fn service(&mut self, id: &str) -> Result<u32, String> {
        match self.services.get(id) {
            Some(i) => Ok(i),
            None if self.closed => Err(format!("unknown service {:?} (not in the catalogue)", clip(id))),
            None => Ok(self.services.intern(id)),
        }
    }

    /// Sorts stably by (subject, time): equal times keep their input order.
    pub fn sort(&mut self) {
        self.events.sort_by_key(|e| (e.subject, e.at));
    }

    /// The events of each subject, as contiguous slices (the log must be sorted).
    pub fn by_subject(&self) -> impl Iterator<Item = &[LogEvent]> {
        self.events.chunk_by(|a, b| a.subject == b.subject)
    }
}

/// At most 80 characters of a value, for error messages.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}
