//! Proactive guidance: triggers, policy, templates, the jobs the delivery queue carries.
//!
//! Triggers propose [`Candidate`]s: the next steps of a bundle after one was completed (a
//! digest, never one message per step), one consolidated message for a sensitive life event,
//! deadlines and renewals coming due ([`due`], run by the worker's periodic scan and `tongban
//! scan`), and operators' campaigns. The policy ([`decide`]) checks consent, categories and
//! whether the services are done already; the store then reserves the push atomically
//! (de-duplication per push id, caps per day and week, a critical lane for legal deadlines).
//! A [`Job`] carries the message, rendered from editable templates per locale
//! (`templates/*.toml`, one section per [`Kind`], `((placeholder))` fields and
//! `((name??optional block))`, checked at start-up, with an SMS variant of one segment: 70
//! characters in Chinese), through the queue ([`crate::queue`]) to the worker
//! ([`crate::deliver`]), which re-checks the policy at delivery.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tongban_features::catalogue::{Catalogue, Deadline, Stage};
use tongban_features::io::fnv1a;
use tongban_features::profile::Profile;
use tongban_features::time::{Date, Timestamp};

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
    /// Outbound channels the subject allowed besides the portal inbox (always on): `sms`,
    /// `app`. The webhook gateway receives a push only when this is not empty.
    pub channels: Vec<String>,
}

/// Outbound channels a subject may allow.
pub const OUTBOUND: [&str; 2] = ["sms", "app"];

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            push: true,
            categories_off: Vec::new(),
            quiet_hours: Some([22, 8]),
            utc_offset_minutes: 480,
            personalised: true,
            locale: "zh-CN".into(),
            channels: Vec::new(),
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
        if let Some(c) = self.channels.iter().find(|c| !OUTBOUND.contains(&c.as_str())) {
            return Err(format!("channels: unknown channel {c:?}, expected some of {OUTBOUND:?}"));
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

/// The message kinds, each a section of a locale's template file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The next steps of a bundle after one was completed (a digest, one message per bundle).
    NextStep,
    /// A deadline, renewal or yearly window coming due.
    Due,
    /// An operator's campaign for one service.
    Campaign,
    /// A sensitive life event (death, illness, disability): one consolidated message.
    Sensitive,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::NextStep, Kind::Due, Kind::Campaign, Kind::Sensitive];

    pub fn section(self) -> &'static str {
        match self {
            Kind::NextStep => "next_step",
            Kind::Due => "due",
            Kind::Campaign => "campaign",
            Kind::Sensitive => "sensitive",
        }
    }
}

/// One section of a template file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub title: String,
    pub body: String,
    pub sms: String,
    /// One line per service in `((steps))`.
    #[serde(default)]
    pub step: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    next_step: Template,
    due: Template,
    campaign: Template,
    sensitive: Template,
}

/// Placeholders a template may use. `((name??text))` shows `text` only when `name` is not
/// empty (an optional block, as in GOV.UK Notify).
pub const PLACEHOLDERS: [&str; 10] =
    ["bundle", "done", "steps", "service", "materials", "time_limit", "link", "deadline", "why", "ref"];

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
    by_locale: HashMap<&'static str, TemplateFile>,
}

/// The length of the `((...))` field that `text` starts inside (just after its `((`), up to
/// its matching `))`, which it excludes; optional blocks nest fields.
fn field_end(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let (mut depth, mut i) = (1, 0);
    while i + 1 < b.len() {
        match &b[i..i + 2] {
            b"((" => {
                depth += 1;
                i += 2;
            }
            b"))" => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// The names of the fields of a template, those inside optional blocks included.
fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("((") {
        let Some(j) = field_end(&rest[i + 2..]) else { break };
        let inner = &rest[i + 2..i + 2 + j];
        match inner.split_once("??") {
            Some((name, block)) => {
                out.push(name);
                out.extend(placeholders(block));
            }
            None => out.push(inner),
        }
        rest = &rest[i + 2 + j + 2..];
    }
    out
}

/// Replaces `((name))` by its value and `((name??text))` by `text` when the value is not empty
/// (by nothing otherwise).
fn fill(text: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut rest = text;
    while let Some(i) = rest.find("((") {
        let Some(j) = field_end(&rest[i + 2..]) else { break };
        out.push_str(&rest[..i]);
        let inner = &rest[i + 2..i + 2 + j];
        let (name, block) = match inner.split_once("??") {
            Some((n, b)) => (n, Some(b)),
            None => (inner, None),
        };
        let value = values.iter().find(|(k, _)| *k == name).map_or("", |(_, v)| v.as_str());
        match block {
            Some(b) if !value.is_empty() => out.push_str(&fill(b, values)),
            Some(_) => {}
            None => out.push_str(value),
        }
        rest = &rest[i + 2 + j + 2..];
    }
    out.push_str(rest);
    out
}

/// What a message is about; the templates turn it into text.
#[derive(Debug, Clone, Default)]
pub struct Content {
    pub bundle: Option<u32>,
    /// The step just completed (next-step messages).
    pub done: Option<u32>,
    /// The services the message is about, the first one foremost.
    pub services: Vec<u32>,
    /// The deadline it reminds about (a Unix time), if any.
    pub deadline: Option<i64>,
    /// Why the subject gets it, in plain words of the locale.
    pub why: String,
}

/// A reference of the same length as a real push id, for length checks.
const REF_SAMPLE: &str = "TB-0123456789ABCDEF";

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub title: String,
    pub body: String,
    pub sms: String,
}

impl Templates {
    /// Loads `zh-CN.toml` and `en.toml` from a folder, checking every placeholder, and that
    /// every SMS the catalogue can produce fits one segment.
    pub fn load(dir: &Path, cat: &Catalogue) -> Result<Templates, String> {
        let mut by_locale = HashMap::new();
        for tag in ["zh-CN", "en"] {
            let path = dir.join(format!("{tag}.toml"));
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let t: TemplateFile = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
            for kind in Kind::ALL {
                let s = t.section(kind);
                for (field, value) in [("title", &s.title), ("body", &s.body), ("sms", &s.sms), ("step", &s.step)] {
                    for p in placeholders(value) {
                        if !PLACEHOLDERS.contains(&p) {
                            return Err(format!(
                                "{}: [{}] field `{field}`: unknown placeholder (({p})), expected one of {PLACEHOLDERS:?}",
                                path.display(),
                                kind.section()
                            ));
                        }
                    }
                }
            }
            let one = Templates { by_locale: HashMap::from([(tag, t)]) };
            let locale = Locale::parse(Some(tag)).expect("known tag");
            one.check_sms(cat, locale).map_err(|e| format!("{}: {e}", path.display()))?;
            by_locale.insert(tag, one.by_locale.into_values().next().expect("one locale"));
        }
        Ok(Templates { by_locale })
    }

    /// Every SMS the catalogue can produce, at its longest, fits one segment.
    fn check_sms(&self, cat: &Catalogue, locale: Locale) -> Result<(), String> {
        let max = sms_max_chars(locale);
        let deadline = Some(4_102_444_800); // 2100-01-01: a date of full length
        let mut cases: Vec<(Kind, Content)> = Vec::new();
        for (b, bundle) in cat.bundles().iter().enumerate() {
            let kind = if bundle.sensitive { Kind::Sensitive } else { Kind::NextStep };
            for st in &bundle.steps {
                let c = Content { bundle: Some(b as u32), services: vec![st.service], ..Content::default() };
                cases.push((kind, c));
            }
        }
        for (s, svc) in cat.services().iter().enumerate() {
            let c = Content { services: vec![s as u32], deadline, ..Content::default() };
            if svc.deadline.is_some() {
                cases.push((Kind::Due, c.clone()));
            }
            cases.push((Kind::Campaign, c));
        }
        for (kind, c) in cases {
            let sms = self.render_sms(cat, locale, kind, &c, REF_SAMPLE);
            let n = sms.chars().count();
            if n > max {
                let what = c.services.first().map_or("", |&s| cat.service(s).id.as_str());
                return Err(format!(
                    "[{}] field `sms`: {n} characters for {what} (at most {max}): {sms}",
                    kind.section()
                ));
            }
        }
        Ok(())
    }

    fn get(&self, locale: Locale, kind: Kind) -> &Template {
        self.by_locale
            .get(locale.tag())
            .or_else(|| self.by_locale.values().next())
            .expect("templates loaded")
            .section(kind)
    }

    fn values(
        &self,
        cat: &Catalogue,
        locale: Locale,
        c: &Content,
        portal: &str,
        reference: &str,
    ) -> Vec<(&'static str, String)> {
        let zh = locale == Locale::ZhCn;
        let name = |s: u32| {
            let x = cat.service(s);
            if zh {
                x.zh.clone()
            } else {
                x.en.clone()
            }
        };
        let first = c.services.first().copied();
        let mut v = vec![
            (
                "bundle",
                c.bundle.map_or(String::new(), |b| {
                    let b = &cat.bundles()[b as usize];
                    if zh {
                        b.zh.clone()
                    } else {
                        b.en.clone()
                    }
                }),
            ),
            ("done", c.done.map(name).unwrap_or_default()),
            ("service", first.map(name).unwrap_or_default()),
            ("deadline", c.deadline.map(|d| Timestamp(d).date_shanghai().to_string()).unwrap_or_default()),
            ("why", c.why.clone()),
            ("ref", reference.to_owned()),
        ];
        if let Some(s) = first {
            v.push(("materials", materials(cat, s, zh)));
            v.push(("time_limit", time_limit(cat, s, zh)));
            v.push(("link", link(cat, s, portal)));
        }
        v
    }

    fn render_sms(&self, cat: &Catalogue, locale: Locale, kind: Kind, c: &Content, reference: &str) -> String {
        fill(&self.get(locale, kind).sms, &self.values(cat, locale, c, "", reference))
    }

    /// Renders a message of `kind`.
    pub fn render(
        &self,
        cat: &Catalogue,
        locale: Locale,
        kind: Kind,
        c: &Content,
        portal: &str,
        reference: &str,
    ) -> Rendered {
        let t = self.get(locale, kind);
        let zh = locale == Locale::ZhCn;
        let lines: Vec<String> = c
            .services
            .iter()
            .map(|&s| {
                let svc = cat.service(s);
                fill(
                    &t.step,
                    &[
                        ("service", if zh { svc.zh.clone() } else { svc.en.clone() }),
                        ("materials", materials(cat, s, zh)),
                        ("time_limit", time_limit(cat, s, zh)),
                        ("link", link(cat, s, portal)),
                    ],
                )
            })
            .collect();
        let mut values = self.values(cat, locale, c, portal, reference);
        values.push(("steps", lines.join("\n")));
        Rendered {
            title: fill(&t.title, &values),
            body: fill(&t.body, &values),
            sms: self.render_sms(cat, locale, kind, c, reference),
        }
    }
}

impl TemplateFile {
    fn section(&self, kind: Kind) -> &Template {
        match kind {
            Kind::NextStep => &self.next_step,
            Kind::Due => &self.due,
            Kind::Campaign => &self.campaign,
            Kind::Sensitive => &self.sensitive,
        }
    }
}

fn materials(cat: &Catalogue, s: u32, zh: bool) -> String {
    let to_bring: Vec<String> = cat
        .service(s)
        .materials
        .iter()
        .filter(|m| !m.shared)
        .map(|m| if zh { m.zh.clone() } else { m.en.clone() })
        .collect();
    match (to_bring.is_empty(), zh) {
        (true, true) => "无需提交材料，数据已共享".to_owned(),
        (true, false) => "nothing to bring: the data is already shared".to_owned(),
        (false, true) => to_bring.join("、"),
        (false, false) => to_bring.join(", "),
    }
}

fn time_limit(cat: &Catalogue, s: u32, zh: bool) -> String {
    match (cat.service(s).time_limit_days, zh) {
        (0, true) => "当场办结".to_owned(),
        (0, false) => "done on the spot".to_owned(),
        (d, true) => format!("{d}个工作日"),
        (d, false) => format!("{d} working days"),
    }
}

fn link(cat: &Catalogue, s: u32, portal: &str) -> String {
    format!("{}/services/{}", portal.trim_end_matches('/'), cat.service(s).id)
}

/// What produced a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A bundle step was completed: its next steps.
    NextStep,
    /// A sensitive life event: one consolidated message.
    Sensitive,
    /// A legal deadline after a life event (newborn registration within a month...).
    Deadline,
    /// A document expiring (ID card, driving licence, permits).
    Renewal,
    /// A yearly window (annual report, tax settlement).
    YearlyWindow,
    /// An operator's campaign.
    Campaign,
}

impl Trigger {
    pub const ALL: [Trigger; 6] = [
        Trigger::NextStep,
        Trigger::Sensitive,
        Trigger::Deadline,
        Trigger::Renewal,
        Trigger::YearlyWindow,
        Trigger::Campaign,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::NextStep => "next_step",
            Trigger::Sensitive => "sensitive",
            Trigger::Deadline => "deadline",
            Trigger::Renewal => "renewal",
            Trigger::YearlyWindow => "yearly_window",
            Trigger::Campaign => "campaign",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Why a push was not stored or not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    PushOff,
    CategoryOff,
    AlreadyDone,
    Duplicate,
    DailyCap,
    WeeklyCap,
    CriticalCap,
    /// At delivery: past its deadline or time to live.
    Expired,
    /// At delivery: the subject did it meanwhile.
    DoneMeanwhile,
    /// At delivery: the subject's data was erased.
    Erased,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::PushOff => "push_off",
            Skip::CategoryOff => "category_off",
            Skip::AlreadyDone => "already_done",
            Skip::Duplicate => "duplicate",
            Skip::DailyCap => "daily_cap",
            Skip::WeeklyCap => "weekly_cap",
            Skip::CriticalCap => "critical_cap",
            Skip::Expired => "expired",
            Skip::DoneMeanwhile => "done_meanwhile",
            Skip::Erased => "erased",
        }
    }
}

/// Caps per subject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Caps {
    pub per_day: usize,
    pub per_week: usize,
    /// The critical lane (legal deadlines) bypasses the caps above, within its own weekly cap;
    /// it never bypasses consent.
    pub critical_per_week: usize,
    /// Next-step messages of one bundle within this many days are duplicates.
    pub dedup_days: i64,
    /// Messages without a deadline expire after this many days.
    pub ttl_days: i64,
    /// Next steps whose model confidence (the ranker's probability, a relative figure: it was
    /// trained against sampled negatives) is below this are left out of a digest.
    pub min_confidence: f32,
}

impl Default for Caps {
    fn default() -> Self {
        Caps { per_day: 3, per_week: 10, critical_per_week: 3, dedup_days: 7, ttl_days: 30, min_confidence: 0.01 }
    }
}

/// The push id of (subject, key, trigger, window): a hash, no personal data. Receivers and the
/// inbox de-duplicate by it.
pub fn push_id(subject: &str, key: &str, trigger: Trigger, window: i64) -> String {
    format!("TB-{:016X}", fnv1a(format!("{subject}|{key}|{}|{window}", trigger.as_str()).as_bytes()))
}

/// A push proposed by a trigger, before policy.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub trigger: Trigger,
    pub kind: Kind,
    pub content: Content,
    /// What it is about, for de-duplication: a bundle or service id (with the campaign id).
    pub key: String,
    /// The de-duplication window number (one push per key, trigger and window).
    pub window: i64,
    pub critical: bool,
    pub expires_at: i64,
    /// A service counts as done when completed at or after this time.
    pub done_after: i64,
    pub reasons: Vec<&'static str>,
    /// The life stage, for the subject's category switches.
    pub stage: Stage,
}

/// Whether `profile` completed service `s` at or after `after`.
pub fn done_since(profile: &Profile, s: u32, after: i64) -> bool {
    profile.count(s).is_some_and(|c| c.needs > 0 && c.last_need >= after)
}

const DAY: i64 = 86_400;

/// Pushes proposed after the subject completed `done`: for each bundle of `done` the subject
/// has started, a digest of the next steps (pending steps whose dependencies are done); for a
/// sensitive bundle (death, illness, disability), one consolidated message of every remaining
/// step, once per bundle instance.
pub fn propose(cat: &Catalogue, profile: &Profile, done: u32, now: i64, caps: &Caps) -> Vec<Candidate> {
    let mut out = Vec::new();
    let Some(svc) = cat.services().get(done as usize) else { return out };
    for &(b, _) in &svc.in_bundles {
        let Some(pb) = profile.bundles().iter().find(|p| p.bundle == b) else { continue };
        let bundle = &cat.bundles()[b as usize];
        let started = pb.steps.iter().map(|&(_, at)| at).min().unwrap_or(now);
        let pending = |k: usize, st: &tongban_features::catalogue::Step| {
            pb.done(k as u16).is_none()
                && !done_since(profile, st.service, 0)
                && !cat.service(st.service).granted_without_applying
        };
        let steps: Vec<u32> = bundle
            .steps
            .iter()
            .enumerate()
            .filter(|&(k, st)| pending(k, st) && (bundle.sensitive || st.after.iter().all(|&a| pb.done(a).is_some())))
            .map(|(_, st)| st.service)
            .collect();
        if steps.is_empty() {
            continue;
        }
        // The earliest legal deadline among the steps, if any (after the bundle's life event).
        let deadline = steps
            .iter()
            .filter_map(|&s| match cat.service(s).deadline {
                Some(Deadline::AfterEvent { days, .. }) => Some(started + i64::from(days) * DAY),
                _ => None,
            })
            .filter(|&d| d > now)
            .min();
        let (trigger, kind, window) = if bundle.sensitive {
            (Trigger::Sensitive, Kind::Sensitive, started.div_euclid(DAY))
        } else {
            (Trigger::NextStep, Kind::NextStep, now.div_euclid(caps.dedup_days.max(1) * DAY))
        };
        out.push(Candidate {
            trigger,
            kind,
            content: Content { bundle: Some(b), done: Some(done), services: steps, deadline, why: String::new() },
            key: bundle.id.clone(),
            window,
            critical: false,
            expires_at: now + caps.ttl_days * DAY,
            done_after: 0,
            reasons: vec!["next_in_bundle"],
            stage: bundle.stage,
        });
    }
    out
}

/// Deadlines and renewals coming due at `now`, from the profile and the catalogue's rules:
/// - a document valid N years, within its renewal window before expiry (from its last
///   completion);
/// - a yearly window (annual report...) in its last 30 days, for subjects who did it in an
///   earlier year and not yet in this one;
/// - a legal deadline after a life event (a step of a started bundle), in the second half of
///   its period (or its last 14 days).
pub fn due(cat: &Catalogue, profile: &Profile, now: i64, locale: Locale) -> Vec<Candidate> {
    let zh = locale == Locale::ZhCn;
    let mut out = Vec::new();
    let today = Timestamp(now).date_shanghai();
    for c in profile.services() {
        let Some(svc) = cat.services().get(c.service as usize) else { continue };
        if c.needs == 0 {
            continue;
        }
        match &svc.deadline {
            Some(Deadline::BeforeExpiry { days, validity_years, .. }) => {
                let expiry = c.last_need + (f64::from(*validity_years) * 365.25 * DAY as f64) as i64;
                let opens = expiry - i64::from(*days) * DAY;
                if (opens..expiry).contains(&now) {
                    let date = Timestamp(expiry).date_shanghai();
                    let why = if zh {
                        format!(
                            "您上次办理于{}，有效期{}年，将于{}到期",
                            Timestamp(c.last_need).date_shanghai(),
                            validity_years,
                            date
                        )
                    } else {
                        format!(
                            "last done on {}, valid {} years, it expires on {}",
                            Timestamp(c.last_need).date_shanghai(),
                            validity_years,
                            date
                        )
                    };
                    out.push(due_candidate(
                        cat,
                        c.service,
                        Trigger::Renewal,
                        expiry,
                        opens,
                        expiry.div_euclid(DAY),
                        false,
                        why,
                    ));
                }
            }
            Some(Deadline::YearlyWindow { from, to, .. }) => {
                let (Some(f), Some(t)) = (
                    Date::parse(&format!("{:04}-{from}", today.year)),
                    Date::parse(&format!("{:04}-{to}", today.year)),
                ) else {
                    continue;
                };
                let opens = f.start_shanghai().0;
                let closes = t.start_shanghai().0 + DAY;
                // Silent for most of a long window: a reminder in its last 30 days, if not done.
                let remind = opens.max(closes - 30 * DAY);
                if (remind..closes).contains(&now) && c.last_need < opens {
                    let why = if zh {
                        format!("每年{from}至{to}办理，您往年已办理，今年尚未办理")
                    } else {
                        format!("due every year from {from} to {to}; done in earlier years, not yet this year")
                    };
                    out.push(due_candidate(
                        cat,
                        c.service,
                        Trigger::YearlyWindow,
                        closes,
                        opens,
                        i64::from(today.year),
                        true,
                        why,
                    ));
                }
            }
            _ => {}
        }
    }
    for pb in profile.bundles() {
        let bundle = &cat.bundles()[pb.bundle as usize];
        let started = pb.steps.iter().map(|&(_, at)| at).min().unwrap_or(now);
        for (k, st) in bundle.steps.iter().enumerate() {
            let svc = cat.service(st.service);
            let Some(Deadline::AfterEvent { days, .. }) = svc.deadline else { continue };
            let deadline = started + i64::from(days) * DAY;
            let remind = deadline - (i64::from(days) * DAY / 2).min(14 * DAY);
            if pb.done(k as u16).is_some() || done_since(profile, st.service, started) || svc.granted_without_applying {
                continue;
            }
            if (remind..deadline).contains(&now) {
                let date = Timestamp(deadline).date_shanghai();
                let why = if zh {
                    format!("「{}」须在{}天内办理，截止{}", bundle.zh, days, date)
                } else {
                    format!("part of \"{}\", due within {} days, by {}", bundle.en, days, date)
                };
                out.push(due_candidate(
                    cat,
                    st.service,
                    Trigger::Deadline,
                    deadline,
                    started,
                    started.div_euclid(DAY),
                    true,
                    why,
                ));
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn due_candidate(
    cat: &Catalogue,
    s: u32,
    trigger: Trigger,
    deadline: i64,
    done_after: i64,
    window: i64,
    critical: bool,
    why: String,
) -> Candidate {
    let svc = cat.service(s);
    Candidate {
        trigger,
        kind: Kind::Due,
        content: Content { bundle: None, done: None, services: vec![s], deadline: Some(deadline), why },
        key: svc.id.clone(),
        window,
        critical,
        expires_at: deadline,
        done_after,
        reasons: vec!["deadline"],
        stage: svc.category,
    }
}

/// The policy before enqueue, on what the subject's data says: consent, categories, already
/// done. De-duplication and caps are checked atomically by the store when the push is
/// reserved ([`crate::store::Store::reserve`]).
pub fn decide(prefs: &Preferences, profile: &Profile, c: &Candidate) -> Result<(), Skip> {
    if !prefs.push {
        return Err(Skip::PushOff);
    }
    if prefs.categories_off.contains(&c.stage) {
        return Err(Skip::CategoryOff);
    }
    if c.content.services.iter().all(|&s| done_since(profile, s, c.done_after)) {
        return Err(Skip::AlreadyDone);
    }
    Ok(())
}

/// A push on its way: the rendered message, who it is for, and its audit trail. This is what
/// the queue carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub subject: String,
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
}

/// Builds the job of a candidate that passed the policy.
#[allow(clippy::too_many_arguments)]
pub fn job(
    cat: &Catalogue,
    templates: &Templates,
    prefs: &Preferences,
    subject: &str,
    c: &Candidate,
    now: i64,
    portal: &str,
    model: &str,
) -> Job {
    let locale = Locale::parse(Some(&prefs.locale)).unwrap_or(Locale::ZhCn);
    let id = push_id(subject, &c.key, c.trigger, c.window);
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
        subject: subject.to_owned(),
        message: InboxMessage {
            id,
            trigger: c.trigger.as_str().to_owned(),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_defer_to_their_end_in_the_subjects_time_zone() {
        let p = Preferences::default(); // 22:00-08:00, UTC+8
                                        // 2026-01-01 23:30 Shanghai = 15:30 UTC -> deliver at 08:00 Shanghai = 00:00 UTC next day.
        let at = Timestamp::parse("2026-01-01T15:30:00Z").unwrap().0;
        let want = Timestamp::parse("2026-01-02T00:00:00Z").unwrap().0;
        assert_eq!(p.deliverable_at(at), want);
        // 07:59 Shanghai -> 08:00 the same day.
        let at = Timestamp::parse("2026-01-01T23:59:00Z").unwrap().0;
        assert_eq!(p.deliverable_at(at), want);
        // 12:00 Shanghai: now.
        let noon = Timestamp::parse("2026-01-02T04:00:00Z").unwrap().0;
        assert_eq!(p.deliverable_at(noon), noon);
        let none = Preferences { quiet_hours: None, ..Preferences::default() };
        assert_eq!(none.deliverable_at(at), at);
    }

    #[test]
    fn push_ids_are_stable_per_window_and_carry_no_personal_data() {
        let a = push_id("p0000001", "b.birth", Trigger::NextStep, 7);
        assert_eq!(a, push_id("p0000001", "b.birth", Trigger::NextStep, 7));
        assert_ne!(a, push_id("p0000001", "b.birth", Trigger::NextStep, 8));
        assert_ne!(a, push_id("p0000001", "b.birth", Trigger::Deadline, 7));
        assert!(!a.contains("p0000001"));
        assert_eq!(a.len(), REF_SAMPLE.len());
    }

    #[test]
    fn placeholders_and_optional_blocks() {
        assert_eq!(placeholders("((a)) x ((bundle??in ((done))))"), vec!["a", "bundle", "done"]);
        assert_eq!(fill("((a))-((a))", &[("a", "x".into())]), "x-x");
        let v = [("deadline", "2026-12-31".to_owned()), ("why", String::new())];
        assert_eq!(fill("A((deadline??, by ((deadline))))((why??: ((why))))", &v), "A, by 2026-12-31");
        assert_eq!(fill("((unknown))", &v), "");
        assert_eq!(fill("x((deadline??\n请于((deadline))前办理。))\ny", &v), "x\n请于2026-12-31前办理。\ny");
        assert_eq!(fill("x((why??\n((why))))\ny", &v), "x\ny");
    }
}
