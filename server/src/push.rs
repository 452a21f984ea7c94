//! Proactive guidance, first slice: triggers after ingest, policy, templates, the portal inbox.
//!
//! A completed step of a bundle (一件事) proposes one digest message naming the bundle's next
//! steps (never one message per step); the policy then checks consent and preferences, whether
//! the steps are done already, de-duplication per (subject, bundle, trigger) within a window,
//! and daily and weekly caps; quiet hours defer delivery, never drop it. Messages are rendered
//! from editable templates per locale (`templates/*.toml`, `((placeholder))` fields, checked at
//! start-up, with an SMS variant of one segment: 70 characters in Chinese) and stored in the
//! subject's inbox.
//!
//! Not built yet (issue 6): the Redis Streams queue between policy and delivery, workers,
//! webhook and log channels, deadline scans, operator campaigns, per-push audit records.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tongban_features::catalogue::{Catalogue, Stage};
use tongban_features::io::fnv1a;
use tongban_features::profile::Profile;

use crate::render::Locale;

/// A subject's choices about pushes and suggestions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preferences {
    /// The off switch for every push.
    pub push: bool,
    /// Life stages the subject does not want pushes about.
    pub categories_off: Vec<Stage>,
    /// Quiet hours in local time, `[start, end)`, e.g. `[22, 8]`; pushes wait until the end.
    pub quiet_hours: Option<[u8; 2]>,
    /// Offset of the subject's time zone from UTC in minutes (Asia/Shanghai: 480).
    pub utc_offset_minutes: i32,
    /// Suggestions from the subject's history (false: popularity only, PIPL art. 24).
    pub personalised: bool,
    pub locale: String,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            push: true,
            categories_off: Vec::new(),
            quiet_hours: Some([22, 8]),
            utc_offset_minutes: 480,
            personalised: true,
            locale: "zh-CN".into(),
        }
    }
}

impl Preferences {
    /// Checks ranges; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if let Some([a, b]) = self.quiet_hours {
            if a > 23 || b > 23 {
                return Err("quiet_hours: hours must be 0 to 23".into());
            }
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            return Err("utc_offset_minutes: expected -840 to 840".into());
        }
        if Locale::parse(Some(&self.locale)).is_none() {
            return Err("locale: expected zh-CN or en".into());
        }
        Ok(())
    }

    /// The first instant at or after `at` outside quiet hours.
    pub fn deliverable_at(&self, at: i64) -> i64 {
        let Some([start, end]) = self.quiet_hours else { return at };
        if start == end {
            return at;
        }
        let offset = i64::from(self.utc_offset_minutes) * 60;
        let local = at + offset;
        let hour = (local.rem_euclid(86_400) / 3600) as u8;
        let quiet = if start < end { hour >= start && hour < end } else { hour >= start || hour < end };
        if !quiet {
            return at;
        }
        let day = local.div_euclid(86_400) * 86_400;
        let mut end_local = day + i64::from(end) * 3600;
        if end_local <= local {
            end_local += 86_400;
        }
        end_local - offset
    }
}

/// One message of the portal inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxMessage {
    /// Push id: stable for the same (subject, bundle, trigger, window), so receivers and the
    /// store de-duplicate by it. Contains no personal data.
    pub id: String,
    pub trigger: String,
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

/// Message templates of one locale.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub title: String,
    pub body: String,
    pub sms: String,
    /// One line per next step in `((steps))`.
    pub step: String,
}

/// Placeholders a template may use.
pub const PLACEHOLDERS: [&str; 8] = ["bundle", "done", "steps", "service", "materials", "time_limit", "link", "ref"];

/// The longest SMS in characters (one segment): 70 for Chinese (UCS-2), 160 for English (GSM-7).
pub fn sms_max_chars(locale: Locale) -> usize {
    match locale {
        Locale::ZhCn => 70,
        Locale::En => 160,
    }
}

/// Templates per locale.
#[derive(Debug, Clone)]
pub struct Templates {
    by_locale: HashMap<&'static str, Template>,
}

fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("((") {
        let Some(j) = rest[i..].find("))") else { break };
        out.push(&rest[i + 2..i + j]);
        rest = &rest[i + j + 2..];
    }
    out
}

fn fill(text: &str, values: &[(&str, String)]) -> String {
    let mut out = text.to_owned();
    for (k, v) in values {
        out = out.replace(&format!("(({k}))"), v);
    }
    out
}

impl Templates {
    /// Loads `zh-CN.toml` and `en.toml` from a folder, checking every placeholder, and that
    /// the SMS of every bundle's longest step fits one segment.
    pub fn load(dir: &Path, cat: &Catalogue) -> Result<Templates, String> {
        let mut by_locale = HashMap::new();
        for tag in ["zh-CN", "en"] {
            let path = dir.join(format!("{tag}.toml"));
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let t: Template = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
            for (field, value) in [("title", &t.title), ("body", &t.body), ("sms", &t.sms), ("step", &t.step)] {
                for p in placeholders(value) {
                    if !PLACEHOLDERS.contains(&p) {
                        return Err(format!(
                            "{}: field `{field}`: unknown placeholder (({p})), expected one of {PLACEHOLDERS:?}",
                            path.display()
                        ));
                    }
                }
            }
            let t2 = Templates { by_locale: HashMap::from([(tag, t.clone())]) };
            let locale = Locale::parse(Some(tag)).expect("known tag");
            for b in cat.bundles() {
                for st in &b.steps {
                    let sms = t2.render_sms(cat, locale, b.id.as_str(), st.service, "TB-XXXXXXXX");
                    let max = sms_max_chars(locale);
                    if sms.chars().count() > max {
                        return Err(format!(
                            "{}: field `sms`: {} characters for bundle {} step {} (at most {max}): {sms}",
                            path.display(),
                            sms.chars().count(),
                            b.id,
                            cat.service(st.service).id
                        ));
                    }
                }
            }
            by_locale.insert(tag, t);
        }
        Ok(Templates { by_locale })
    }

    fn get(&self, locale: Locale) -> &Template {
        self.by_locale.get(locale.tag()).or_else(|| self.by_locale.values().next()).expect("templates loaded")
    }

    fn render_sms(&self, cat: &Catalogue, locale: Locale, bundle: &str, service: u32, reference: &str) -> String {
        let t = self.get(locale);
        let zh = locale == Locale::ZhCn;
        let b = cat.bundles().iter().find(|x| x.id == bundle);
        let s = cat.service(service);
        fill(
            &t.sms,
            &[
                ("bundle", b.map_or(String::new(), |b| if zh { b.zh.clone() } else { b.en.clone() })),
                ("service", if zh { s.zh.clone() } else { s.en.clone() }),
                ("ref", reference.to_owned()),
            ],
        )
    }

    /// Renders the digest of a bundle's next steps after `done` was completed.
    #[allow(clippy::too_many_arguments)]
    pub fn render(
        &self,
        cat: &Catalogue,
        locale: Locale,
        bundle: u32,
        done: u32,
        steps: &[u32],
        portal: &str,
        reference: &str,
    ) -> (String, String, String) {
        let t = self.get(locale);
        let zh = locale == Locale::ZhCn;
        let b = &cat.bundles()[bundle as usize];
        let name = |s: u32| {
            let x = cat.service(s);
            if zh {
                x.zh.clone()
            } else {
                x.en.clone()
            }
        };
        let mut lines = Vec::new();
        for &s in steps {
            let svc = cat.service(s);
            let to_bring: Vec<String> = svc
                .materials
                .iter()
                .filter(|m| !m.shared)
                .map(|m| if zh { m.zh.clone() } else { m.en.clone() })
                .collect();
            let materials = if to_bring.is_empty() {
                if zh {
                    "无需提交材料，数据已共享".to_owned()
                } else {
                    "nothing to bring: the data is already shared".to_owned()
                }
            } else {
                to_bring.join(if zh { "、" } else { ", " })
            };
            let time_limit = match (svc.time_limit_days, zh) {
                (0, true) => "当场办结".to_owned(),
                (0, false) => "done on the spot".to_owned(),
                (d, true) => format!("{d}个工作日"),
                (d, false) => format!("{d} working days"),
            };
            lines.push(fill(
                &t.step,
                &[
                    ("service", name(s)),
                    ("materials", materials),
                    ("time_limit", time_limit),
                    ("link", format!("{}/services/{}", portal.trim_end_matches('/'), svc.id)),
                ],
            ));
        }
        let values = [
            ("bundle", if zh { b.zh.clone() } else { b.en.clone() }),
            ("done", name(done)),
            ("steps", lines.join("\n")),
            ("service", steps.first().map(|&s| name(s)).unwrap_or_default()),
            ("ref", reference.to_owned()),
        ];
        let sms = self.render_sms(cat, locale, &b.id, steps.first().copied().unwrap_or(done), reference);
        (fill(&t.title, &values), fill(&t.body, &values), sms)
    }
}

/// Why a proposed push was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    PushOff,
    CategoryOff,
    AlreadyDone,
    Duplicate,
    DailyCap,
    WeeklyCap,
}

/// Caps per subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub per_day: usize,
    pub per_week: usize,
    /// A message with the same id within this many days is a duplicate.
    pub dedup_days: i64,
    /// Messages expire after this many days.
    pub ttl_days: i64,
}

impl Default for Caps {
    fn default() -> Self {
        Caps { per_day: 3, per_week: 10, dedup_days: 7, ttl_days: 30 }
    }
}

/// The push id of a (subject, bundle, trigger) in a de-duplication window: a hash, no personal
/// data.
pub fn push_id(subject: &str, bundle: &str, trigger: &str, now: i64, caps: &Caps) -> String {
    let window = now.div_euclid(caps.dedup_days.max(1) * 86_400);
    format!("TB-{:016X}", fnv1a(format!("{subject}|{bundle}|{trigger}|{window}").as_bytes()))
}

/// A proposed digest: the bundle, the step just completed, the next steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub bundle: u32,
    pub done: u32,
    pub steps: Vec<u32>,
}

/// Next steps of the bundles whose step `done` the subject just completed: pending steps whose
/// dependencies are all seen done, not done themselves. One proposal per bundle.
pub fn propose(cat: &Catalogue, profile: &Profile, done: u32) -> Vec<Proposal> {
    let mut out = Vec::new();
    let Some(svc) = cat.services().get(done as usize) else { return out };
    for &(b, _) in &svc.in_bundles {
        let Some(pb) = profile.bundles().iter().find(|p| p.bundle == b) else { continue };
        let bundle = &cat.bundles()[b as usize];
        let steps: Vec<u32> = bundle
            .steps
            .iter()
            .enumerate()
            .filter(|(k, st)| pb.done(*k as u16).is_none() && st.after.iter().all(|&a| pb.done(a).is_some()))
            .map(|(_, st)| st.service)
            .filter(|&s| profile.count(s).is_none_or(|c| c.needs == 0))
            .collect();
        if !steps.is_empty() {
            out.push(Proposal { bundle: b, done, steps });
        }
    }
    out
}

/// The policy: consent, categories, already done, de-duplication, caps. `inbox` is the
/// subject's current inbox. (Eight plain inputs, each one a different fact the policy weighs;
/// bundling them would only hide that.)
#[allow(clippy::too_many_arguments)]
pub fn decide(
    cat: &Catalogue,
    prefs: &Preferences,
    profile: &Profile,
    proposal: &Proposal,
    id: &str,
    inbox: &[InboxMessage],
    now: i64,
    caps: &Caps,
) -> Result<(), Skip> {
    if !prefs.push {
        return Err(Skip::PushOff);
    }
    let stage = cat.bundles()[proposal.bundle as usize].stage;
    if prefs.categories_off.contains(&stage) {
        return Err(Skip::CategoryOff);
    }
    if proposal.steps.iter().all(|&s| profile.count(s).is_some_and(|c| c.needs > 0)) {
        return Err(Skip::AlreadyDone);
    }
    if inbox.iter().any(|m| m.id == id) {
        return Err(Skip::Duplicate);
    }
    let within = |secs: i64| inbox.iter().filter(|m| now - m.created_at < secs).count();
    if within(86_400) >= caps.per_day {
        return Err(Skip::DailyCap);
    }
    if within(7 * 86_400) >= caps.per_week {
        return Err(Skip::WeeklyCap);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_defer_to_their_end_in_the_subjects_time_zone() {
        let p = Preferences::default(); // 22:00-08:00, UTC+8
                                        // 2026-01-01 23:30 Shanghai = 15:30 UTC -> deliver at 08:00 Shanghai = 00:00 UTC next day.
        let at = tongban_features::time::Timestamp::parse("2026-01-01T15:30:00Z").unwrap().0;
        let want = tongban_features::time::Timestamp::parse("2026-01-02T00:00:00Z").unwrap().0;
        assert_eq!(p.deliverable_at(at), want);
        // 07:59 Shanghai -> 08:00 the same day.
        let at = tongban_features::time::Timestamp::parse("2026-01-01T23:59:00Z").unwrap().0;
        assert_eq!(p.deliverable_at(at), want);
        // 12:00 Shanghai: now.
        let noon = tongban_features::time::Timestamp::parse("2026-01-02T04:00:00Z").unwrap().0;
        assert_eq!(p.deliverable_at(noon), noon);
        let none = Preferences { quiet_hours: None, ..Preferences::default() };
        assert_eq!(none.deliverable_at(at), at);
    }

    #[test]
    fn push_ids_are_stable_within_a_window_and_carry_no_personal_data() {
        let caps = Caps::default();
        let a = push_id("p0000001", "b.birth", "next_step", 1_000_000, &caps);
        assert_eq!(a, push_id("p0000001", "b.birth", "next_step", 1_000_100, &caps));
        assert_ne!(a, push_id("p0000001", "b.birth", "next_step", 1_000_000 + 8 * 86_400, &caps));
        assert!(!a.contains("p0000001"));
    }

    #[test]
    fn placeholders_are_found() {
        assert_eq!(placeholders("((a)) x ((bundle))"), vec!["a", "bundle"]);
        assert_eq!(fill("((a))-((a))", &[("a", "x".into())]), "x-x");
    }
}
