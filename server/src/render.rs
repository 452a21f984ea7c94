//! Turning suggestions into what portals show: names, a reason sentence, materials, deadline,
//! where to act; in zh-CN (default) or en.

use serde::Serialize;
use tongban_features::catalogue::Catalogue;
use tongban_features::profile::Profile;
use tongban_model::{reason, Suggestion};

pub use crate::locale::Locale;
use crate::templates::{self, ReasonKind, Templates};

/// A material to bring.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Material)]
pub struct MaterialOut<'a> {
    pub name: &'a str,
    /// The data is already shared between departments: nothing to bring.
    pub shared: bool,
}

/// A life-event bundle the service is a step of.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = BundleStep)]
pub struct BundleOut<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// 1-based step position and the number of steps.
    pub step: usize,
    pub of: usize,
}

/// A service's guidance (also the body of `GET /v1/services/{id}`).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Service)]
pub struct ServiceOut<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub name_zh: &'a str,
    pub name_en: &'a str,
    pub department: &'a str,
    pub online: bool,
    pub granted_without_applying: bool,
    /// Legal time limit in working days (0: on the spot).
    pub time_limit_days: u32,
    pub materials: Vec<MaterialOut<'a>>,
    /// True when every material is already shared.
    pub nothing_to_bring: bool,
    pub deadline: Option<String>,
    pub link: String,
    pub bundles: Vec<BundleOut<'a>>,
}

/// One rendered suggestion.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Suggestion)]
pub struct SuggestionOut<'a> {
    /// The service's guidance, serialised once per model and locale (see `Served::guidance`).
    #[schema(value_type = ServiceOut)]
    pub service: &'a serde_json::value::RawValue,
    pub score: f32,
    #[schema(schema_with = crate::openapi::reasons)]
    pub reasons: Vec<&'static str>,
    /// Why, as one sentence in the answer's language.
    pub reason_text: String,
}

/// Guidance for a catalogue service.
pub fn service<'a>(cat: &'a Catalogue, t: &Templates, idx: u32, locale: Locale, portal: &str) -> ServiceOut<'a> {
    let s = cat.service(idx);
    let zh = locale == Locale::ZhCn;
    let materials: Vec<MaterialOut> =
        s.materials.iter().map(|m| MaterialOut { name: if zh { &m.zh } else { &m.en }, shared: m.shared }).collect();
    let deadline = s.deadline.as_ref().map(|d| t.deadline_rule(d, locale));
    let bundles = s
        .in_bundles
        .iter()
        .map(|&(b, step)| {
            let b = &cat.bundles()[b as usize];
            BundleOut { id: &b.id, name: if zh { &b.zh } else { &b.en }, step: step as usize + 1, of: b.steps.len() }
        })
        .collect();
    ServiceOut {
        id: &s.id,
        name: if zh { &s.zh } else { &s.en },
        name_zh: &s.zh,
        name_en: &s.en,
        department: if zh || s.department_en.is_empty() { &s.department } else { &s.department_en },
        online: s.online,
        granted_without_applying: s.granted_without_applying,
        time_limit_days: s.time_limit_days,
        nothing_to_bring: materials.iter().all(|m| m.shared),
        materials,
        deadline,
        link: templates::link(cat, idx, portal),
        bundles,
    }
}

/// The sentence explaining a suggestion, from its strongest reason.
pub fn reason_text(
    cat: &Catalogue,
    t: &Templates,
    sug: &Suggestion,
    profile: Option<&Profile>,
    locale: Locale,
) -> String {
    let zh = locale == Locale::ZhCn;
    let quoted = |s: u32| t.quote(locale, templates::service_name(cat, s, locale));
    let mut values = vec![("service", quoted(sug.service))];
    let r = sug.reasons;
    let mut kind = None;
    if r & reason::NEXT_IN_BUNDLE != 0 {
        // The bundle where the subject moved most recently.
        let bundle = cat
            .service(sug.service)
            .in_bundles
            .iter()
            .filter_map(|&(b, _)| profile?.bundles().iter().find(|p| p.bundle == b).map(|p| (p.last_at(), b)))
            .max()
            .map(|(_, b)| &cat.bundles()[b as usize]);
        if let Some(b) = bundle {
            values.push(("bundle", t.quote(locale, if zh { &b.zh } else { &b.en })));
            kind = Some(ReasonKind::NextInBundle);
        }
    }
    let last = profile
        .and_then(|p| p.starts().next_back())
        .map(|r| r.service)
        .filter(|&s| (s as usize) < cat.services().len());
    if kind.is_none() {
        kind = if r & reason::DEADLINE != 0 {
            Some(ReasonKind::Deadline)
        } else if let (true, Some(l)) = (r & reason::FOLLOWS != 0, last) {
            values.push(("last", quoted(l)));
            Some(ReasonKind::Follows)
        } else if r & reason::REPEAT != 0 {
            Some(ReasonKind::Repeat)
        } else if r & reason::OFTEN_TOGETHER != 0 {
            Some(ReasonKind::OftenTogether)
        } else {
            None
        };
    }
    t.reason(locale, kind, &values)
}
