//! Proactive guidance without IO: who gets what, when, and why.
//!
//! Triggers ([`trigger`]) propose [`Candidate`]s: the next steps of a bundle after one was
//! completed (a digest, never one message per step), one consolidated message for a sensitive
//! life event, deadlines and renewals coming due (run by the worker's periodic scan and
//! `tongban scan`), and operators' campaigns. The policy ([`policy`]) checks consent,
//! categories and whether the services are done already; the store then reserves the push
//! atomically (de-duplication per push id, caps per day and week, a critical lane for legal
//! deadlines). A [`Job`] ([`job`]) carries the message, rendered from the templates
//! ([`crate::templates`]) in the subject's locale ([`prefs`]), through the queue
//! ([`crate::queue`]) to the worker ([`crate::deliver`]), which re-checks the policy at
//! delivery.

pub mod job;
pub mod policy;
pub mod prefs;
pub mod trigger;

pub use self::job::{job, push_id, IdKey, InboxMessage, Job};
pub use self::policy::{decide, Caps, Skip, MIN_CONFIDENCE};
pub use self::prefs::{Outbound, Preferences};
pub use self::trigger::{done_since, due, propose, Candidate, Trigger};
pub use crate::templates::{Content, Kind, Templates, Why};
