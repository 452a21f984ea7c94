//! Bounded per-subject profiles, built in one batch or one event at a time, with equal results.
//!
//! # Event semantics
//! - **Duplicates**: an event whose id is already among the profile's retained events is
//!   ignored. Long-range idempotency (beyond the last `max_events` events) is the ingest
//!   layer's job; the profile stays bounded.
//! - **Late events** are placed in time order (ties by id hash, never by arrival). An event
//!   strictly older than every retained event of a full window is *too late*: it is counted in
//!   [`Profile::too_late`] and changes nothing else, so that a bounded profile never has to
//!   revise what it already forgot.
//! - **Needs and signals**: `applied`, `completed` and `rejected` say the subject needed the
//!   service (they feed counts, bundle progress and the targets); `viewed`, `clicked`,
//!   `dismissed`, `rated` and `push_opened` are signals, counted apart and never targets.
//!
//! Every field is a commutative function of the accepted events (integer counts, minima,
//! maxima, the top-`max_events` set), so applying events one by one in any arrival order gives
//! exactly the profile [`ProfileBuilder`] builds from the sorted log, provided that (a) no
//! event arrives after `max_events` newer ones, (b) a duplicate arrives while its original is
//! retained, and (c) the subject has at most `max_services` distinct services (beyond that the
//! least recently used is evicted, which can depend on the arrival order of late events). The
//! property test checks this over random sequences with duplicates and late events.
//! Decayed counts are computed on read from the retained events (exact, no float drift).
//!
//! # Encoding
//! [`Profile::encode`] writes a version byte then postcard. The size is bounded:
//! `1 + 10 + max_events * 24 + max_services * 40 + bundles * (12 + 10 * steps)` bytes at most
//! (about 9 KiB at the defaults with 30 bundles of up to 9 steps).

use serde::{Deserialize, Serialize};

use crate::catalogue::Catalogue;
use crate::domain::EventKind;
use crate::io::{EventLog, LogEvent};

/// The current encoding version of [`Profile`].
pub const PROFILE_VERSION: u8 = 1;

/// Bounds and decay of profiles. Checked with [`ProfileParams::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileParams {
    /// Events retained (L).
    pub max_events: usize,
    /// Distinct services with counts retained; the least recently used is evicted.
    pub max_services: usize,
    /// Half-life of decayed counts, in days.
    pub half_life_days: f32,
}

impl Default for ProfileParams {
    fn default() -> Self {
        ProfileParams { max_events: 64, max_services: 128, half_life_days: 90.0 }
    }
}

/// Why parameters or bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("max_events must be 1 to 4096, got {0}")]
    MaxEvents(usize),
    #[error("max_services must be 1 to 65536, got {0}")]
    MaxServices(usize),
    #[error("half_life_days must be positive and finite")]
    HalfLife,
    #[error("empty profile bytes")]
    Empty,
    #[error("profile encoding version {found}, this build reads version {PROFILE_VERSION}")]
    Version { found: u8 },
    #[error("corrupt profile bytes: {0}")]
    Corrupt(String),
}

impl ProfileParams {
    pub fn check(self) -> Result<ProfileParams, ProfileError> {
        if !(1..=4096).contains(&self.max_events) {
            return Err(ProfileError::MaxEvents(self.max_events));
        }
        if !(1..=65_536).contains(&self.max_services) {
            return Err(ProfileError::MaxServices(self.max_services));
        }
        if !(self.half_life_days.is_finite() && self.half_life_days > 0.0) {
            return Err(ProfileError::HalfLife);
        }
        Ok(self)
    }
}

/// One retained event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent {
    pub at: i64,
    pub id: u64,
    pub service: u32,
    pub kind: EventKind,
    /// A start of a service use (see [`crate::domain::is_start`]).
    pub start: bool,
}

impl Recent {
    fn key(&self) -> (i64, u64) {
        (self.at, self.id)
    }
}

/// Counts of one service for one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCount {
    pub service: u32,
    /// Starts: applications and system grants.
    pub starts: u32,
    /// Applied, completed or rejected events.
    pub needs: u32,
    /// Completed events.
    pub completed: u32,
    /// Viewed, clicked, rated or push-opened events.
    pub signals: u32,
    pub dismissed: u32,
    /// Last start (`i64::MIN` if none).
    pub last_start: i64,
    /// Last need event (`i64::MIN` if none).
    pub last_need: i64,
    /// Last event of any kind.
    pub last_any: i64,
}

/// Progress of a subject in one bundle (一件事).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleProgress {
    pub bundle: u32,
    /// (step position, earliest time it was needed), sorted by step.
    pub steps: Vec<(u16, i64)>,
}

impl BundleProgress {
    pub fn done(&self, step: u16) -> Option<i64> {
        self.steps.iter().find(|s| s.0 == step).map(|s| s.1)
    }
    /// The latest step time: when the subject last moved in this bundle.
    pub fn last_at(&self) -> i64 {
        self.steps.iter().map(|s| s.1).max().unwrap_or(i64::MIN)
    }
}

/// What a subject did, bounded.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Profile {
    recent: Vec<Recent>,
    services: Vec<ServiceCount>,
    bundles: Vec<BundleProgress>,
    first_at: Option<i64>,
    last_at: Option<i64>,
    events: u64,
    too_late: u64,
    /// Segment index (see [`crate::io::SEGMENTS`]), 0 when unknown.
    segment: u16,
}

/// Service index to its (bundle, step) places, from the catalogue. Empty for generic logs.
#[derive(Debug, Clone, Default)]
pub struct BundleIndex {
    places: Vec<Vec<(u32, u16)>>,
}

impl BundleIndex {
    pub fn new(cat: &Catalogue) -> BundleIndex {
        BundleIndex { places: cat.services().iter().map(|s| s.in_bundles.clone()).collect() }
    }
    fn of(&self, service: u32) -> &[(u32, u16)] {
        self.places.get(service as usize).map_or(&[], |v| v.as_slice())
    }
}

/// Everything `apply` needs besides the event.
#[derive(Debug, Clone)]
pub struct ProfileContext {
    pub params: ProfileParams,
    pub bundles: BundleIndex,
}

impl Profile {
    pub fn new(segment: u16) -> Profile {
        Profile { segment, ..Profile::default() }
    }

    pub fn recent(&self) -> &[Recent] {
        &self.recent
    }
    pub fn services(&self) -> &[ServiceCount] {
        &self.services
    }
    pub fn bundles(&self) -> &[BundleProgress] {
        &self.bundles
    }
    pub fn first_at(&self) -> Option<i64> {
        self.first_at
    }
    pub fn last_at(&self) -> Option<i64> {
        self.last_at
    }
    /// Accepted events (duplicates and too-late events excluded).
    pub fn events(&self) -> u64 {
        self.events
    }
    pub fn too_late(&self) -> u64 {
        self.too_late
    }
    pub fn segment(&self) -> u16 {
        self.segment
    }
    pub fn set_segment(&mut self, segment: u16) {
        self.segment = segment;
    }

    /// Counts of one service, if retained.
    pub fn count(&self, service: u32) -> Option<&ServiceCount> {
        self.services.binary_search_by_key(&service, |c| c.service).ok().map(|i| &self.services[i])
    }

    /// The retained starts, oldest first.
    pub fn starts(&self) -> impl DoubleEndedIterator<Item = &Recent> {
        self.recent.iter().filter(|r| r.start)
    }

    /// Starts of a service in the retained window, each weighted `2^(-age / half_life)`.
    pub fn decayed(&self, service: u32, now: i64, half_life_days: f32) -> f32 {
        let h = f64::from(half_life_days) * 86_400.0;
        self.starts().filter(|r| r.service == service).map(|r| (-((now - r.at).max(0) as f64) / h).exp2() as f32).sum()
    }

    /// Applies one event. Returns false when it changed nothing (duplicate or too late).
    pub fn apply(&mut self, ev: &LogEvent, ctx: &ProfileContext) -> bool {
        let r = Recent {
            at: ev.at.0,
            id: ev.id,
            service: ev.service,
            kind: ev.kind,
            start: crate::domain::is_start(ev.kind, ev.channel),
        };
        // Position in time order; the common case (newest) is a check of the last element.
        let pos = match self.recent.last() {
            Some(last) if last.key() < r.key() => self.recent.len(),
            _ => self.recent.partition_point(|x| x.key() < r.key()),
        };
        if self.recent.iter().any(|x| x.id == r.id) {
            return false;
        }
        let full = self.recent.len() >= ctx.params.max_events;
        // Strictly older than the window: too late. An equal time with a smaller id is counted
        // (the log's order of ties must not matter) but falls out of the window at once.
        if full && self.recent.first().is_some_and(|first| r.at < first.at) {
            self.too_late += 1;
            return false;
        }
        self.recent.insert(pos, r);
        if self.recent.len() > ctx.params.max_events {
            self.recent.remove(0);
        }
        self.events += 1;
        self.first_at = Some(self.first_at.map_or(r.at, |f| f.min(r.at)));
        self.last_at = Some(self.last_at.map_or(r.at, |l| l.max(r.at)));
        self.count_event(&r, ctx.params.max_services);
        if r.kind.is_need() {
            for &(bundle, step) in ctx.bundles.of(r.service) {
                self.mark_step(bundle, step, r.at);
            }
        }
        true
    }

    fn count_event(&mut self, r: &Recent, max_services: usize) {
        let i = match self.services.binary_search_by_key(&r.service, |c| c.service) {
            Ok(i) => i,
            Err(i) => {
                self.services.insert(
                    i,
                    ServiceCount {
                        service: r.service,
                        starts: 0,
                        last_start: i64::MIN,
                        needs: 0,
                        completed: 0,
                        signals: 0,
                        dismissed: 0,
                        last_need: i64::MIN,
                        last_any: i64::MIN,
                    },
                );
                i
            }
        };
        let c = &mut self.services[i];
        if r.start {
            c.starts += 1;
            c.last_start = c.last_start.max(r.at);
        }
        match r.kind {
            k if k.is_need() => {
                c.needs += 1;
                c.completed += u32::from(k == EventKind::Completed);
                c.last_need = c.last_need.max(r.at);
            }
            EventKind::Dismissed => c.dismissed += 1,
            k if k.is_procedure() => {}
            _ => c.signals += 1,
        }
        c.last_any = c.last_any.max(r.at);
        if self.services.len() > max_services {
            // Evict the least recently used service (ties: the larger index), never the one
            // just counted unless it is genuinely the oldest.
            let (victim, _) = self
                .services
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| (c.last_any, std::cmp::Reverse(c.service)))
                .expect("non-empty");
            self.services.remove(victim);
        }
    }

    fn mark_step(&mut self, bundle: u32, step: u16, at: i64) {
        let b = match self.bundles.binary_search_by_key(&bundle, |b| b.bundle) {
            Ok(i) => &mut self.bundles[i],
            Err(i) => {
                self.bundles.insert(i, BundleProgress { bundle, steps: Vec::new() });
                &mut self.bundles[i]
            }
        };
        match b.steps.binary_search_by_key(&step, |s| s.0) {
            Ok(i) => b.steps[i].1 = b.steps[i].1.min(at),
            Err(i) => b.steps.insert(i, (step, at)),
        }
    }

    /// Version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROFILE_VERSION];
        out.extend(postcard::to_allocvec(self).expect("profiles always serialise"));
        out
    }

    /// Decodes [`Profile::encode`] output; a wrong version or corrupt bytes is an error.
    pub fn decode(bytes: &[u8]) -> Result<Profile, ProfileError> {
        let (&v, rest) = bytes.split_first().ok_or(ProfileError::Empty)?;
        if v != PROFILE_VERSION {
            return Err(ProfileError::Version { found: v });
        }
        let (p, tail): (Profile, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| ProfileError::Corrupt(e.to_string()))?;
        if !tail.is_empty() {
            return Err(ProfileError::Corrupt(format!("{} trailing bytes", tail.len())));
        }
        let sorted = p.recent.windows(2).all(|w| w[0].key() < w[1].key())
            && p.services.windows(2).all(|w| w[0].service < w[1].service)
            && p.bundles.windows(2).all(|w| w[0].bundle < w[1].bundle);
        if !sorted {
            return Err(ProfileError::Corrupt("entries out of order".into()));
        }
        Ok(p)
    }
}

/// Builds the profiles of a whole sorted log in one pass.
#[derive(Debug)]
pub struct ProfileBuilder<'a> {
    ctx: &'a ProfileContext,
}

impl<'a> ProfileBuilder<'a> {
    pub fn new(ctx: &'a ProfileContext) -> ProfileBuilder<'a> {
        ProfileBuilder { ctx }
    }

    /// One profile per subject index of the log (subjects without events get an empty one).
    /// The log is sorted by (subject, time), so every event lands at the end of its window.
    pub fn build(&self, log: &EventLog, segments: &[u16]) -> Vec<Profile> {
        use rayon::prelude::*;
        let mut profiles: Vec<Profile> =
            (0..log.subjects.len()).map(|s| Profile::new(segments.get(s).copied().unwrap_or(0))).collect();
        let groups: Vec<&[LogEvent]> = log.by_subject().collect();
        let built: Vec<(u32, Profile)> = groups
            .par_iter()
            .map(|evs| {
                let s = evs[0].subject;
                let mut p = Profile::new(segments.get(s as usize).copied().unwrap_or(0));
                for e in *evs {
                    p.apply(e, self.ctx);
                }
                (s, p)
            })
            .collect();
        for (s, p) in built {
            profiles[s as usize] = p;
        }
        profiles
    }
}
