//! Domain types validated at construction: ids, event kinds, channels, events, subjects.
//!
//! Ids are opaque, pseudonymous strings; they are checked once at the edge (`parse`) and cannot
//! hold bad values afterwards. In memory, logs refer to subjects and services by dense `u32`
//! indices (see [`crate::io::EventLog`]) so that hot loops never touch strings.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::{Date, Timestamp};

/// Why a value was refused, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{what} must be 1 to {max} characters of [A-Za-z0-9._:-], got {got:?}")]
    BadId { what: &'static str, max: usize, got: String },
    #[error("unknown event kind {0:?} (expected one of viewed, applied, completed, rejected, clicked, dismissed, rated, push_opened)")]
    BadKind(String),
    #[error("rating must be an integer 1-5, got {0:?}")]
    BadRating(String),
    #[error("unknown channel {0:?} (expected one of web, app, mini, office, push, system)")]
    BadChannel(String),
    #[error("bad timestamp {0:?} (expected RFC 3339 such as 2024-03-01T09:15:00+08:00, or epoch seconds)")]
    BadTimestamp(String),
    #[error("a rated event needs a rating 1-5; other kinds must not carry one")]
    RatingMismatch,
}

/// What [`SubjectId`], [`ServiceId`] and [`EventId`] accept, as an ECMA-262 pattern (the API
/// document states it; a test holds it to the check below).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

fn check_id(s: &str, what: &'static str) -> Result<(), DomainError> {
    const MAX: usize = 64;
    let ok = !s.is_empty()
        && s.len() <= MAX
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DomainError::BadId { what, max: MAX, got: s.chars().take(80).collect() })
    }
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                check_id(s, $what).map(|()| Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A pseudonymous subject (person or enterprise) id.
    SubjectId,
    "subject id"
);
string_id!(
    /// A catalogue service id (or an item id of a generic interaction log).
    ServiceId,
    "service id"
);
string_id!(
    /// The sender's id of one event, used for idempotency.
    EventId,
    "event id"
);

/// What happened between a subject and a service.
///
/// `Applied`, `Completed` and `Rejected` mean the subject *needed* the service: they are the
/// targets a model learns to predict. The others are signals about attention and satisfaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Viewed,
    Applied,
    Completed,
    Rejected,
    Clicked,
    Dismissed,
    Rated,
    PushOpened,
    /// The department stopped the legal clock of an application for a part of the procedure
    /// that the time limit does not count (特别程序: hearing, inspection, testing, quarantine,
    /// appraisal, expert review; 行政许可法 art. 45), or asked for corrections (补正).
    Suspended,
    /// The clock runs again after `suspended`.
    Resumed,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Viewed,
        EventKind::Applied,
        EventKind::Completed,
        EventKind::Rejected,
        EventKind::Clicked,
        EventKind::Dismissed,
        EventKind::Rated,
        EventKind::PushOpened,
        EventKind::Suspended,
        EventKind::Resumed,
    ];

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Ok(match s {
            "viewed" => Self::Viewed,
            "applied" => Self::Applied,
            "completed" => Self::Completed,
            "rejected" => Self::Rejected,
            "clicked" => Self::Clicked,
            "dismissed" => Self::Dismissed,
            "rated" => Self::Rated,
            "push_opened" => Self::PushOpened,
            "suspended" => Self::Suspended,
            "resumed" => Self::Resumed,
            _ => return Err(DomainError::BadKind(s.chars().take(40).collect())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewed => "viewed",
            Self::Applied => "applied",
            Self::Completed => "completed",
            Self::Rejected => "rejected",
            Self::Clicked => "clicked",
            Self::Dismissed => "dismissed",
            Self::Rated => "rated",
            Self::PushOpened => "push_opened",
            Self::Suspended => "suspended",
            Self::Resumed => "resumed",
        }
    }

    /// True for kinds that say the subject needed the service (the prediction targets).
    pub fn is_need(self) -> bool {
        matches!(self, Self::Applied | Self::Completed | Self::Rejected)
    }

    /// True for the department's steps of a procedure (the clock stopped or running again):
    /// they say nothing of what the subject wants, so profiles keep them but count nothing.
    pub fn is_procedure(self) -> bool {
        matches!(self, Self::Suspended | Self::Resumed)
    }
}

/// True when an event starts a new use of a service: an application, or a grant the government
/// made on its own data (免申即享, logged as `completed` by the `system` channel). Starts are
/// the targets of next-service prediction and the units of item statistics.
pub fn is_start(kind: EventKind, channel: Channel) -> bool {
    kind == EventKind::Applied || (kind == EventKind::Completed && channel == Channel::System)
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Web,
    App,
    Mini,
    Office,
    Push,
    System,
}

impl Channel {
    pub const ALL: [Channel; 6] =
        [Channel::Web, Channel::App, Channel::Mini, Channel::Office, Channel::Push, Channel::System];

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Ok(match s {
            "web" => Self::Web,
            "app" => Self::App,
            "mini" => Self::Mini,
            "office" => Self::Office,
            "push" => Self::Push,
            "system" => Self::System,
            _ => return Err(DomainError::BadChannel(s.chars().take(40).collect())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::App => "app",
            Self::Mini => "mini",
            Self::Office => "office",
            Self::Push => "push",
            Self::System => "system",
        }
    }
}

/// A rating 1-5 (好差评).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Rating(u8);

impl Rating {
    pub fn new(v: u8) -> Result<Rating, DomainError> {
        if (1..=5).contains(&v) {
            Ok(Rating(v))
        } else {
            Err(DomainError::BadRating(v.to_string()))
        }
    }
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Rating {
    type Error = DomainError;
    fn try_from(v: u8) -> Result<Self, DomainError> {
        Rating::new(v)
    }
}

impl From<Rating> for u8 {
    fn from(r: Rating) -> u8 {
        r.0
    }
}

/// One validated event. A `Rated` event carries a rating and no other kind does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    id: EventId,
    subject: SubjectId,
    service: ServiceId,
    kind: EventKind,
    rating: Option<Rating>,
    at: Timestamp,
    channel: Channel,
}

impl Event {
    pub fn new(
        id: EventId,
        subject: SubjectId,
        service: ServiceId,
        kind: EventKind,
        rating: Option<Rating>,
        at: Timestamp,
        channel: Channel,
    ) -> Result<Event, DomainError> {
        if (kind == EventKind::Rated) != rating.is_some() {
            return Err(DomainError::RatingMismatch);
        }
        Ok(Event { id, subject, service, kind, rating, at, channel })
    }
    pub fn id(&self) -> &EventId {
        &self.id
    }
    pub fn subject(&self) -> &SubjectId {
        &self.subject
    }
    pub fn service(&self) -> &ServiceId {
        &self.service
    }
    pub fn kind(&self) -> EventKind {
        self.kind
    }
    pub fn rating(&self) -> Option<Rating> {
        self.rating
    }
    pub fn at(&self) -> Timestamp {
        self.at
    }
    pub fn channel(&self) -> Channel {
        self.channel
    }
}

/// Person or enterprise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Person,
    Enterprise,
}

/// The ten districts and counties of Dalian.
pub const DISTRICTS: [&str; 10] =
    ["中山区", "西岗区", "沙河口区", "甘井子区", "旅顺口区", "金州区", "普兰店区", "瓦房店市", "庄河市", "长海县"];

/// Segment attributes of a subject, for popularity per segment and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub id: SubjectId,
    pub kind: SubjectKind,
    /// Birth date of a person, founding date of an enterprise.
    pub born: Date,
    /// Index into [`DISTRICTS`].
    pub district: u8,
    /// Person: hukou registered in Dalian. Enterprise: unused (false).
    pub hukou_local: bool,
    /// Person: 'F' or 'M'. Enterprise: size class 'S' small, 'M' medium, 'L' large.
    pub class: char,
}

impl Subject {
    /// A coarse segment name: `person:30-39`, `enterprise:S`.
    pub fn segment(&self, on: Date) -> String {
        match self.kind {
            SubjectKind::Person => {
                let age = on.year - self.born.year;
                let band = (age.clamp(0, 89) / 10) * 10;
                format!("person:{}-{}", band, band + 9)
            }
            SubjectKind::Enterprise => format!("enterprise:{}", self.class),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_spaces_or_too_long_are_rejected() {
        assert!(SubjectId::parse("u-123").is_ok());
        assert!(SubjectId::parse("u 123").is_err());
        assert!(SubjectId::parse("").is_err());
        assert!(ServiceId::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn the_stated_id_pattern_accepts_exactly_what_the_check_accepts() {
        let re = regex::Regex::new(ID_PATTERN).unwrap();
        let mut cases: Vec<String> = (0u8..128).map(|b| char::from(b).to_string()).collect();
        cases.extend(["", "é", "a b", "p0000050", "e.entry.registration"].map(String::from));
        cases.extend([63, 64, 65].map(|n| "a".repeat(n)));
        for s in cases {
            assert_eq!(re.is_match(&s), check_id(&s, "id").is_ok(), "{s:?}");
        }
    }

    #[test]
    fn a_rated_event_without_a_rating_is_rejected() {
        let e = Event::new(
            EventId::parse("e1").unwrap(),
            SubjectId::parse("u1").unwrap(),
            ServiceId::parse("s1").unwrap(),
            EventKind::Rated,
            None,
            Timestamp(0),
            Channel::Web,
        );
        assert_eq!(e, Err(DomainError::RatingMismatch));
        assert!(Rating::new(6).is_err());
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Ok(k));
        }
        assert!(EventKind::parse("liked").is_err());
    }
}
