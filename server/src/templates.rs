//! Every word tongban writes for people, from editable files: `templates/<locale>.toml`, one
//! section per message [`Kind`], plus the words of portal answers (`[words]`), the reasons a
//! push gives (`[why]`) and the sentence under each suggestion (`[reasons]`). The Rust code
//! picks a template and fills its `((placeholder))` fields (`((name??text))` shows `text` only
//! when `name` is not empty, as in GOV.UK Notify); it writes no prose of its own.
//!
//! The files of this repository are built into the binary ([`Templates::builtin`]);
//! `--templates DIR` replaces them. Loading checks every placeholder of every field, and that
//! every SMS the catalogue can produce fits one segment.

use std::path::Path;

use serde::Deserialize;
use tongban_features::catalogue::{Catalogue, Deadline};
use tongban_features::time::Timestamp;

use crate::locale::Locale;

const BUILTIN: [(Locale, &str); 2] =
    [(Locale::ZhCn, include_str!("../../templates/zh-CN.toml")), (Locale::En, include_str!("../../templates/en.toml"))];

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

/// One message section of a template file.
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

/// `[words]`: pieces of portal answers and message fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Words {
    quote: String,
    list_separator: String,
    nothing_to_bring: String,
    on_the_spot: String,
    working_days: String,
    after_event: String,
    before_expiry: String,
    yearly_window: String,
}

/// `[why]`: why a push was sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhyText {
    renewal: String,
    yearly_window: String,
    deadline: String,
    campaign: String,
}

/// `[reasons]`: the sentence under a suggestion.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reasons {
    next_in_bundle: String,
    deadline: String,
    follows: String,
    repeat: String,
    often_together: String,
    similar: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    next_step: Template,
    due: Template,
    campaign: Template,
    sensitive: Template,
    words: Words,
    why: WhyText,
    reasons: Reasons,
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

    /// Every field with the placeholders it may use.
    fn fields(&self) -> Vec<(String, &str, &'static [&'static str])> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let s = self.section(kind);
            for (field, value) in [("title", &s.title), ("body", &s.body), ("sms", &s.sms), ("step", &s.step)] {
                out.push((format!("[{}] {field}", kind.section()), value.as_str(), &PLACEHOLDERS[..]));
            }
        }
        let (w, y, r) = (&self.words, &self.why, &self.reasons);
        let days: &'static [&'static str] = &["days"];
        let span: &'static [&'static str] = &["from", "to"];
        let reason: &'static [&'static str] = &["service", "bundle", "last"];
        for (name, value, allowed) in [
            ("[words] quote", &w.quote, &["name"][..]),
            ("[words] list_separator", &w.list_separator, &[]),
            ("[words] nothing_to_bring", &w.nothing_to_bring, &[]),
            ("[words] on_the_spot", &w.on_the_spot, &[]),
            ("[words] working_days", &w.working_days, days),
            ("[words] after_event", &w.after_event, days),
            ("[words] before_expiry", &w.before_expiry, days),
            ("[words] yearly_window", &w.yearly_window, span),
            ("[why] renewal", &y.renewal, &["last", "years", "expiry"]),
            ("[why] yearly_window", &y.yearly_window, span),
            ("[why] deadline", &y.deadline, &["bundle", "days", "date"]),
            ("[why] campaign", &y.campaign, &["service"]),
            ("[reasons] next_in_bundle", &r.next_in_bundle, reason),
            ("[reasons] deadline", &r.deadline, reason),
            ("[reasons] follows", &r.follows, reason),
            ("[reasons] repeat", &r.repeat, reason),
            ("[reasons] often_together", &r.often_together, reason),
            ("[reasons] similar", &r.similar, reason),
        ] {
            out.push((name.to_owned(), value.as_str(), allowed));
        }
        out
    }
}

/// Placeholders a message template may use.
pub const PLACEHOLDERS: [&str; 10] =
    ["bundle", "done", "steps", "service", "materials", "time_limit", "link", "deadline", "why", "ref"];

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
    while let Some(i) = opening(rest) {
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

/// Where the first `((` starts. A byte scan: `str::find` builds a substring searcher at each
/// call, which cost more than the search on these short texts (the hot path fills a few per
/// suggestion).
fn opening(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(k) = b[from..].iter().position(|&c| c == b'(') {
        let at = from + k;
        if b.get(at + 1) == Some(&b'(') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Replaces `((name))` by its value and `((name??text))` by `text` when the value is not empty
/// (by nothing otherwise).
pub fn fill(text: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut rest = text;
    while let Some(i) = opening(rest) {
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

/// Why a subject gets a message: the facts; the templates (`[why]`) make the sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// A document last done on `last` (Unix time), valid `years`, expiring at `expiry`.
    Renewal { last: i64, years: u32, expiry: i64 },
    /// A yearly window from `from` to `to` (`MM-DD`), done in earlier years.
    YearlyWindow { from: String, to: String },
    /// A step of bundle `bundle` due within `days` of its life event, by `date` (Unix time).
    Deadline { bundle: u32, days: u32, date: i64 },
    /// An operator's campaign for the message's first service, with the operator's own sentence
    /// if given.
    Campaign { text: Option<String> },
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
    pub why: Option<Why>,
}

/// A reference of the same length as a real push id, for length checks.
pub(crate) const REF_SAMPLE: &str = "TB-0123456789ABCDEF";

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub title: String,
    pub body: String,
    pub sms: String,
}

/// Templates per locale.
#[derive(Debug, Clone)]
pub struct Templates {
    /// Indexed like [`Locale::ALL`].
    files: [TemplateFile; 2],
}

fn date(t: i64) -> String {
    Timestamp(t).date_shanghai().to_string()
}

fn parse_file(text: &str, origin: &str) -> Result<TemplateFile, String> {
    let t: TemplateFile = toml::from_str(text).map_err(|e| format!("{origin}: {}", e.message()))?;
    for (field, value, allowed) in t.fields() {
        for p in placeholders(value) {
            if !allowed.contains(&p) {
                return Err(format!("{origin}: {field}: unknown placeholder (({p})), expected one of {allowed:?}"));
            }
        }
    }
    Ok(t)
}

impl Templates {
    /// The templates built into the binary (this repository's `templates/`).
    pub fn builtin() -> Templates {
        let [zh, en] = BUILTIN.map(|(l, text)| {
            parse_file(text, &format!("built-in {}.toml", l.tag())).expect("the built-in templates are valid")
        });
        Templates { files: [zh, en] }
    }

    /// Loads `zh-CN.toml` and `en.toml` from a folder, checking every placeholder, and that
    /// every SMS the catalogue can produce fits one segment.
    pub fn load(dir: &Path, cat: &Catalogue) -> Result<Templates, String> {
        let mut texts = Vec::new();
        for locale in Locale::ALL {
            let path = dir.join(format!("{}.toml", locale.tag()));
            texts.push(std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        Templates::from_texts(dir, [&texts[0], &texts[1]], cat)
    }

    /// [`Templates::load`] of files already read, in the order of [`Locale::ALL`]; `dir` only
    /// names them in messages. The fuzz target (`fuzz/fuzz_targets/templates.rs`) calls this
    /// to test the parser and checks without a file system round trip per input.
    pub fn from_texts(dir: &Path, texts: [&str; 2], cat: &Catalogue) -> Result<Templates, String> {
        let mut files = Vec::new();
        for (locale, text) in Locale::ALL.into_iter().zip(texts) {
            let path = dir.join(format!("{}.toml", locale.tag()));
            files.push(parse_file(text, &path.display().to_string())?);
        }
        let en = files.pop().expect("two locales");
        let zh = files.pop().expect("two locales");
        let t = Templates { files: [zh, en] };
        for locale in Locale::ALL {
            t.check_sms(cat, locale)
                .map_err(|e| format!("{}: {e}", dir.join(format!("{}.toml", locale.tag())).display()))?;
        }
        Ok(t)
    }

    /// Checks the SMS lengths of both locales against a catalogue.
    pub fn check(&self, cat: &Catalogue) -> Result<(), String> {
        Locale::ALL.iter().try_for_each(|&l| self.check_sms(cat, l).map_err(|e| format!("{}: {e}", l.tag())))
    }

    fn file(&self, locale: Locale) -> &TemplateFile {
        &self.files[usize::from(locale == Locale::En)]
    }

    /// Every SMS the catalogue can produce, at its longest, fits one segment.
    fn check_sms(&self, cat: &Catalogue, locale: Locale) -> Result<(), String> {
        let max = locale.sms_max_chars();
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

    /// A name in the locale's quotation marks.
    pub fn quote(&self, locale: Locale, name: &str) -> String {
        fill(&self.file(locale).words.quote, &[("name", name.to_owned())])
    }

    /// The materials to bring for a service, or that there are none.
    pub fn materials(&self, cat: &Catalogue, s: u32, locale: Locale) -> String {
        let w = &self.file(locale).words;
        let zh = locale == Locale::ZhCn;
        let to_bring: Vec<&str> = cat
            .service(s)
            .materials
            .iter()
            .filter(|m| !m.shared)
            .map(|m| if zh { m.zh.as_str() } else { m.en.as_str() })
            .collect();
        if to_bring.is_empty() {
            w.nothing_to_bring.clone()
        } else {
            to_bring.join(&w.list_separator)
        }
    }

    /// A service's legal time limit in words.
    pub fn time_limit(&self, cat: &Catalogue, s: u32, locale: Locale) -> String {
        let w = &self.file(locale).words;
        match cat.service(s).time_limit_days {
            0 => w.on_the_spot.clone(),
            d => fill(&w.working_days, &[("days", d.to_string())]),
        }
    }

    /// A catalogue deadline rule in words.
    pub fn deadline_rule(&self, d: &Deadline, locale: Locale) -> String {
        let w = &self.file(locale).words;
        match d {
            Deadline::AfterEvent { days, .. } => fill(&w.after_event, &[("days", days.to_string())]),
            Deadline::BeforeExpiry { days, .. } => fill(&w.before_expiry, &[("days", days.to_string())]),
            Deadline::YearlyWindow { from, to, .. } => {
                fill(&w.yearly_window, &[("from", from.clone()), ("to", to.clone())])
            }
        }
    }

    /// The sentence of a [`Why`].
    pub fn why(&self, cat: &Catalogue, locale: Locale, why: &Why, first: Option<u32>) -> String {
        let y = &self.file(locale).why;
        let zh = locale == Locale::ZhCn;
        match why {
            Why::Renewal { last, years, expiry } => {
                fill(&y.renewal, &[("last", date(*last)), ("years", years.to_string()), ("expiry", date(*expiry))])
            }
            Why::YearlyWindow { from, to } => fill(&y.yearly_window, &[("from", from.clone()), ("to", to.clone())]),
            Why::Deadline { bundle, days, date: d } => {
                let b = &cat.bundles()[*bundle as usize];
                let name = if zh { b.zh.clone() } else { b.en.clone() };
                fill(&y.deadline, &[("bundle", name), ("days", days.to_string()), ("date", date(*d))])
            }
            Why::Campaign { text: Some(t) } => t.clone(),
            Why::Campaign { text: None } => {
                let name = first.map(|s| service_name(cat, s, locale).to_owned()).unwrap_or_default();
                fill(&y.campaign, &[("service", name)])
            }
        }
    }

    /// The sentence under a suggestion, for its strongest reason (`None`: "people like you").
    pub fn reason(&self, locale: Locale, reason: Option<ReasonKind>, values: &[(&str, String)]) -> String {
        let r = &self.file(locale).reasons;
        let t = match reason {
            Some(ReasonKind::NextInBundle) => &r.next_in_bundle,
            Some(ReasonKind::Deadline) => &r.deadline,
            Some(ReasonKind::Follows) => &r.follows,
            Some(ReasonKind::Repeat) => &r.repeat,
            Some(ReasonKind::OftenTogether) => &r.often_together,
            None => &r.similar,
        };
        fill(t, values)
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
        let first = c.services.first().copied();
        let name = |s: u32| service_name(cat, s, locale).to_owned();
        let bundle = c.bundle.map_or(String::new(), |b| {
            let b = &cat.bundles()[b as usize];
            if zh {
                b.zh.clone()
            } else {
                b.en.clone()
            }
        });
        let mut v = vec![
            ("bundle", bundle),
            ("done", c.done.map(name).unwrap_or_default()),
            ("service", first.map(name).unwrap_or_default()),
            ("deadline", c.deadline.map(date).unwrap_or_default()),
            ("why", c.why.as_ref().map(|w| self.why(cat, locale, w, first)).unwrap_or_default()),
            ("ref", reference.to_owned()),
        ];
        if let Some(s) = first {
            v.push(("materials", self.materials(cat, s, locale)));
            v.push(("time_limit", self.time_limit(cat, s, locale)));
            v.push(("link", link(cat, s, portal)));
        }
        v
    }

    fn render_sms(&self, cat: &Catalogue, locale: Locale, kind: Kind, c: &Content, reference: &str) -> String {
        fill(&self.file(locale).section(kind).sms, &self.values(cat, locale, c, "", reference))
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
        let t = self.file(locale).section(kind);
        let lines: Vec<String> = c
            .services
            .iter()
            .map(|&s| {
                fill(
                    &t.step,
                    &[
                        ("service", service_name(cat, s, locale).to_owned()),
                        ("materials", self.materials(cat, s, locale)),
                        ("time_limit", self.time_limit(cat, s, locale)),
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

/// The reasons a suggestion's sentence can name (the strongest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonKind {
    NextInBundle,
    Deadline,
    Follows,
    Repeat,
    OftenTogether,
}

/// A service's name in a locale.
pub fn service_name(cat: &Catalogue, s: u32, locale: Locale) -> &str {
    let x = cat.service(s);
    if locale == Locale::ZhCn {
        &x.zh
    } else {
        &x.en
    }
}

/// Where to apply for a service on the portal.
pub fn link(cat: &Catalogue, s: u32, portal: &str) -> String {
    format!("{}/services/{}", portal.trim_end_matches('/'), cat.service(s).id)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_builtin_templates_parse_and_fill_their_words() {
        let t = Templates::builtin();
        assert_eq!(t.quote(Locale::ZhCn, "出生登记"), "「出生登记」");
        assert_eq!(t.quote(Locale::En, "Birth"), "\"Birth\"");
        let d = Deadline::YearlyWindow { from: "01-01".into(), to: "06-30".into(), share: 1.0 };
        assert_eq!(t.deadline_rule(&d, Locale::En), "every year from 01-01 to 06-30");
    }

    #[test]
    fn an_unknown_placeholder_names_its_section_and_field() {
        let text = BUILTIN[1].1.replace("[reasons]\nnext_in_bundle = \"", "[reasons]\nnext_in_bundle = \"((nope))");
        let err = parse_file(&text, "en.toml").unwrap_err();
        assert!(err.contains("[reasons] next_in_bundle") && err.contains("((nope))"), "{err}");
    }
}
