//! Turning suggestions into what portals show: names, a reason sentence, materials, deadline,
//! where to act; in zh-CN (default) or en.

use serde::Serialize;
use tongban_features::catalogue::{Catalogue, Deadline};
use tongban_features::profile::Profile;
use tongban_model::{reason, Suggestion};

/// A response language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locale {
    ZhCn,
    En,
}

impl Locale {
    /// `zh-CN` (default, also `zh`) or `en`.
    pub fn parse(s: Option<&str>) -> Option<Locale> {
        match s {
            None | Some("zh-CN") | Some("zh") | Some("zh-cn") => Some(Locale::ZhCn),
            Some("en") | Some("en-US") | Some("en-GB") => Some(Locale::En),
            _ => None,
        }
    }
    pub fn tag(self) -> &'static str {
        match self {
            Locale::ZhCn => "zh-CN",
            Locale::En => "en",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MaterialOut<'a> {
    pub name: &'a str,
    /// The data is already shared between departments: nothing to bring.
    pub shared: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BundleOut<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// 1-based step position and the number of steps.
    pub step: usize,
    pub of: usize,
}

/// A service's guidance (also the body of `GET /v1/services/{id}`).
#[derive(Debug, Clone, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Serialize)]
pub struct SuggestionOut<'a> {
    /// The service's guidance, serialised once per model and locale (see `Served::guidance`).
    pub service: &'a serde_json::value::RawValue,
    pub score: f32,
    pub reasons: Vec<&'static str>,
    pub reason_text: String,
}

fn quote(locale: Locale, s: &str) -> String {
    match locale {
        Locale::ZhCn => format!("「{s}」"),
        Locale::En => format!("\"{s}\""),
    }
}

/// Guidance for a catalogue service.
pub fn service<'a>(cat: &'a Catalogue, idx: u32, locale: Locale, portal: &str) -> ServiceOut<'a> {
    let s = cat.service(idx);
    let zh = locale == Locale::ZhCn;
    let materials: Vec<MaterialOut> =
        s.materials.iter().map(|m| MaterialOut { name: if zh { &m.zh } else { &m.en }, shared: m.shared }).collect();
    let deadline = s.deadline.as_ref().map(|d| match (d, zh) {
        (Deadline::AfterEvent { days, .. }, true) => format!("相关事件发生后{days}日内办理"),
        (Deadline::AfterEvent { days, .. }, false) => format!("within {days} days of the event"),
        (Deadline::BeforeExpiry { days, .. }, true) => format!("证件有效期满前{days}日内办理"),
        (Deadline::BeforeExpiry { days, .. }, false) => format!("within {days} days before the document expires"),
        (Deadline::YearlyWindow { from, to, .. }, true) => format!("每年{from}至{to}办理"),
        (Deadline::YearlyWindow { from, to, .. }, false) => format!("every year from {from} to {to}"),
    });
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
        link: format!("{}/services/{}", portal.trim_end_matches('/'), s.id),
        bundles,
    }
}

/// The sentence explaining a suggestion, from its strongest reason.
pub fn reason_text(cat: &Catalogue, sug: &Suggestion, profile: Option<&Profile>, locale: Locale) -> String {
    let zh = locale == Locale::ZhCn;
    let svc = cat.service(sug.service);
    let name = quote(locale, if zh { &svc.zh } else { &svc.en });
    let service_name = |i: u32| {
        let s = cat.service(i);
        quote(locale, if zh { &s.zh } else { &s.en })
    };
    let last = profile
        .and_then(|p| p.starts().next_back())
        .map(|r| r.service)
        .filter(|&s| (s as usize) < cat.services().len());
    let r = sug.reasons;
    if r & reason::NEXT_IN_BUNDLE != 0 {
        // The bundle where the subject moved most recently.
        let bundle = svc
            .in_bundles
            .iter()
            .filter_map(|&(b, _)| profile?.bundles().iter().find(|p| p.bundle == b).map(|p| (p.last_at(), b)))
            .max()
            .map(|(_, b)| &cat.bundles()[b as usize]);
        if let Some(b) = bundle {
            let bname = quote(locale, if zh { &b.zh } else { &b.en });
            return if zh {
                format!("您正在办理{bname}，下一步是{name}。")
            } else {
                format!("You are in the middle of {bname}; the next step is {name}.")
            };
        }
    }
    if r & reason::DEADLINE != 0 {
        return if zh {
            format!("{name}有办理期限，请及时办理。")
        } else {
            format!("{name} has a deadline coming up.")
        };
    }
    if r & reason::FOLLOWS != 0 {
        if let Some(l) = last {
            let lname = service_name(l);
            return if zh {
                format!("办理过{lname}的人通常接着办理{name}。")
            } else {
                format!("People who applied for {lname} usually apply for {name} next.")
            };
        }
    }
    if r & reason::REPEAT != 0 {
        return if zh {
            format!("您曾办理过{name}，可能需要再次办理。")
        } else {
            format!("You used {name} before and may need it again.")
        };
    }
    if r & reason::OFTEN_TOGETHER != 0 {
        return if zh {
            format!("{name}常与您办理过的事项一起办理。")
        } else {
            format!("{name} is often needed together with services you used.")
        };
    }
    if zh {
        format!("与您情况相似的人常办理{name}。")
    } else {
        format!("People in a situation like yours often need {name}.")
    }
}
