//! What the queue carries: the rendered message and its audit trail.

use serde::{Deserialize, Serialize};
use tongban_features::catalogue::Catalogue;
use tongban_features::domain::SubjectId;
use tongban_features::io::fnv1a;
use tongban_features::time::Timestamp;

use super::prefs::Preferences;
use super::trigger::{Candidate, Trigger};
use crate::templates::Templates;

/// One message of the portal inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InboxMessage {
    /// Push id: one per push, stable for the same (subject, bundle, trigger, window), so
    /// receivers and the inbox de-duplicate by it. Contains no personal data.
    pub id: String,
    #[schema(schema_with = crate::openapi::trigger)]
    pub trigger: Trigger,
    pub bundle: Option<String>,
    pub services: Vec<String>,
    pub title: String,
    pub body: String,
    pub sms: String,
    pub created_at: i64,
    /// Not shown before this time (quiet hours).
    pub deliver_at: i64,
    pub expires_at: i64,
    pub read: bool,
    pub model: String,
}

/// The push id of (subject, key, trigger, window): a hash, no personal data. Receivers and the
/// inbox de-duplicate by it.
pub fn push_id(subject: &SubjectId, key: &str, trigger: Trigger, window: i64) -> String {
    IdKey::default().id(subject, key, trigger, window)
}

/// The secret push ids are made with (`TONGBAN_PUSH_ID_KEY`). Without one an id is a plain hash
/// of (subject, bundle or service, trigger, window), which anyone who knows a subject id can
/// recompute; with one it is an HMAC-SHA256 under the key, so ids cannot be guessed. Every
/// replica and worker must share the key, and it must not change while pushes are in flight
/// (de-duplication is by id).
#[derive(Clone, Default)]
pub struct IdKey(Option<std::sync::Arc<[u8]>>);

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "IdKey(set)" } else { "IdKey(none)" })
    }
}

impl IdKey {
    /// At least 16 bytes; `None` (or empty) leaves ids unkeyed.
    pub fn new(secret: Option<&[u8]>) -> Result<IdKey, String> {
        match secret.filter(|s| !s.is_empty()) {
            None => Ok(IdKey(None)),
            Some(s) if s.len() < 16 => Err("the push id key (TONGBAN_PUSH_ID_KEY) must be at least 16 bytes".into()),
            Some(s) => Ok(IdKey(Some(s.into()))),
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    pub fn id(&self, subject: &SubjectId, key: &str, trigger: Trigger, window: i64) -> String {
        self.hash("TB", &format!("{subject}|{key}|{}|{window}", trigger.as_str()))
    }

    /// The de-duplication key of the pushes of (subject, key, trigger) in any window (a sliding
    /// window de-duplicates by it): keyed as push ids are, with its own prefix, and from a text
    /// no push id hashes (no window number).
    pub fn dedupe_key(&self, subject: &SubjectId, key: &str, trigger: Trigger) -> String {
        self.hash("TD", &format!("{subject}|{key}|{}|sliding", trigger.as_str()))
    }

    fn hash(&self, prefix: &str, text: &str) -> String {
        match &self.0 {
            None => format!("{prefix}-{:016X}", fnv1a(text.as_bytes())),
            Some(secret) => {
                use hmac::Mac as _;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
                mac.update(text.as_bytes());
                let tag = mac.finalize().into_bytes();
                let mut first = [0u8; 8];
                first.copy_from_slice(&tag[..8]);
                format!("{prefix}-{:016X}", u64::from_be_bytes(first))
            }
        }
    }
}

/// A push on its way: the rendered message, who it is for, and its audit trail. This is what
/// the queue carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub subject: SubjectId,
    pub message: InboxMessage,
    pub critical: bool,
    pub done_after: i64,
    pub reasons: Vec<String>,
    /// Policy decisions so far, e.g. `consent:ok`, `quiet_hours:deferred`.
    pub decisions: Vec<String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The `x-request-id` of the API request that made the push (none for scans), so an audit
    /// record leads back to the request in the logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Builds the job of a candidate that passed the policy.
#[allow(clippy::too_many_arguments)]
pub fn job(
    cat: &Catalogue,
    templates: &Templates,
    prefs: &Preferences,
    subject: &SubjectId,
    c: &Candidate,
    now: i64,
    portal: &str,
    model: &str,
    ids: &IdKey,
) -> Job {
    let locale = prefs.locale;
    let id = ids.id(subject, &c.key, c.trigger, c.window);
    let r = templates.render(cat, locale, c.kind, &c.content, portal, &id);
    let deliver_at = prefs.deliverable_at(now);
    let mut decisions = vec!["consent:ok".to_owned(), "not_done:ok".to_owned(), "caps:ok".to_owned()];
    if c.critical {
        decisions.push("lane:critical".into());
    }
    if deliver_at > now {
        decisions.push(format!("quiet_hours:deferred_to:{}", Timestamp(deliver_at)));
    }
    Job {
        subject: subject.clone(),
        message: InboxMessage {
            id,
            trigger: c.trigger,
            bundle: c.content.bundle.map(|b| cat.bundles()[b as usize].id.clone()),
            services: c.content.services.iter().map(|&s| cat.service(s).id.clone()).collect(),
            title: r.title,
            body: r.body,
            sms: r.sms,
            created_at: now,
            deliver_at,
            expires_at: c.expires_at,
            read: false,
            model: model.to_owned(),
        },
        critical: c.critical,
        done_after: c.done_after,
        reasons: c.reasons.iter().map(|&r| r.to_owned()).collect(),
        decisions,
        attempts: 0,
        last_error: None,
        request_id: crate::app::request_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_push_ids_differ_from_plain_ones_and_by_key() {
        let p1 = SubjectId::parse("p0000001").unwrap();
        let plain = push_id(&p1, "b.birth", Trigger::NextStep, 7);
        let k1 = IdKey::new(Some(b"0123456789abcdef")).unwrap();
        let k2 = IdKey::new(Some(b"fedcba9876543210")).unwrap();
        let a = k1.id(&p1, "b.birth", Trigger::NextStep, 7);
        assert_eq!(a, k1.id(&p1, "b.birth", Trigger::NextStep, 7), "stable under one key");
        assert_ne!(a, plain);
        assert_ne!(a, k2.id(&p1, "b.birth", Trigger::NextStep, 7));
        assert_eq!(a.len(), plain.len());
        assert!(a.starts_with("TB-"));
        assert!(IdKey::new(Some(b"short")).is_err());
        assert!(!IdKey::new(Some(b"")).unwrap().is_set());
        assert!(!format!("{k1:?}").contains("0123"), "the key is never printed");
        let d = k1.dedupe_key(&p1, "b.birth", Trigger::NextStep);
        assert!(d.starts_with("TD-") && d != k2.dedupe_key(&p1, "b.birth", Trigger::NextStep));
        assert_ne!(d, IdKey::default().dedupe_key(&p1, "b.birth", Trigger::NextStep));
    }

    #[test]
    fn push_ids_are_stable_per_window_and_carry_no_personal_data() {
        let p1 = SubjectId::parse("p0000001").unwrap();
        let a = push_id(&p1, "b.birth", Trigger::NextStep, 7);
        assert_eq!(a, push_id(&p1, "b.birth", Trigger::NextStep, 7));
        assert_ne!(a, push_id(&p1, "b.birth", Trigger::NextStep, 8));
        assert_ne!(a, push_id(&p1, "b.birth", Trigger::Deadline, 7));
        assert!(!a.contains("p0000001"));
        assert_eq!(a.len(), crate::templates::REF_SAMPLE.len());
    }
}
