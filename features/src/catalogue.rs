//! The service catalogue: services, life-event bundles (一件事), and their validation.
//!
//! The catalogue is human-edited TOML (see `catalogue/README.md` for the schema). Loading parses
//! every file, then validates the merged whole and reports *every* problem at once, each with
//! its file and field, so an editor can fix a catalogue in one round. After loading, services
//! and bundles are addressed by dense `u32` indices; ids are only used at the edges.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who a service or bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    Person,
    Enterprise,
    Both,
}

impl Audience {
    pub fn admits(self, kind: crate::domain::SubjectKind) -> bool {
        use crate::domain::SubjectKind as K;
        matches!(
            (self, kind),
            (Audience::Both, _) | (Audience::Person, K::Person) | (Audience::Enterprise, K::Enterprise)
        )
    }
}

/// The legal nature of a service item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemType {
    Licence,
    Confirmation,
    Benefit,
    PublicService,
    Other,
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// Life stages of the national list of high-frequency items (persons, then enterprises).
    Stage {
        Birth = "birth",
        Education = "education",
        Employment = "employment",
        Marriage = "marriage",
        Daily = "daily",
        Housing = "housing",
        Travel = "travel",
        Medical = "medical",
        Assistance = "assistance",
        OldAge = "old_age",
        AfterDeath = "after_death",
        MarketEntry = "market_entry",
        Hiring = "hiring",
        Tax = "tax",
        Operation = "operation",
        Construction = "construction",
        Exit = "exit",
    }
);

named_enum!(
    /// Life events the synthetic-history generator simulates; each may start bundle journeys.
    LifeEvent {
        ChildBirth = "child_birth",
        SchoolEntry = "school_entry",
        Graduation = "graduation",
        JobStart = "job_start",
        JobLoss = "job_loss",
        Marriage = "marriage",
        HomePurchase = "home_purchase",
        Move = "move",
        CarPurchase = "car_purchase",
        Illness = "illness",
        Hardship = "hardship",
        Disability = "disability",
        Retirement = "retirement",
        Bereavement = "bereavement",
        StartBusiness = "start_business",
        EnterpriseOpen = "enterprise_open",
        Hiring = "hiring",
        EnterpriseChange = "enterprise_change",
        ConstructionProject = "construction_project",
        PropertyPurchase = "property_purchase",
        EnterpriseRelocation = "enterprise_relocation",
        YearStart = "year_start",
        EnterpriseClose = "enterprise_close",
    }
);

/// A material the applicant provides; `shared` when departments already hold the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Material {
    pub zh: String,
    pub en: String,
    #[serde(default)]
    pub shared: bool,
}

/// When a service is due.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Deadline {
    /// Within `days` calendar days of a life event.
    AfterEvent { event: LifeEvent, days: u32 },
    /// A document valid `validity_years`, renewed within `days` before expiry. `holders` is a
    /// simulation hint: the share of the audience holding one.
    BeforeExpiry {
        days: u32,
        validity_years: u32,
        #[serde(default = "default_share")]
        holders: f32,
    },
    /// Once a year between `from` and `to` (MM-DD). `share` is a simulation hint: the share of
    /// the audience doing it in a given year.
    YearlyWindow {
        from: String,
        to: String,
        #[serde(default = "default_share")]
        share: f32,
    },
}

fn default_share() -> f32 {
    0.5
}

fn default_observed() -> f32 {
    0.9
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    id: String,
    #[serde(default)]
    zh: String,
    #[serde(default)]
    en: String,
    #[serde(default)]
    department: String,
    #[serde(default)]
    department_en: String,
    audience: Audience,
    item_type: ItemType,
    category: Stage,
    online: bool,
    #[serde(default)]
    granted_without_applying: bool,
    time_limit_days: u32,
    #[serde(default)]
    repeatable: bool,
    #[serde(default)]
    prerequisites: Vec<String>,
    #[serde(default)]
    noise: f32,
    #[serde(default)]
    materials: Vec<Material>,
    deadline: Option<Deadline>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    service: String,
    #[serde(default)]
    after: Vec<String>,
    delay_days: [f32; 2],
    #[serde(default = "default_observed")]
    observed: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBundle {
    id: String,
    #[serde(default)]
    zh: String,
    #[serde(default)]
    en: String,
    stage: Stage,
    audience: Audience,
    life_event: LifeEvent,
    #[serde(default)]
    sensitive: bool,
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    bundle: Vec<RawBundle>,
}

/// One service of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub id: String,
    pub zh: String,
    pub en: String,
    pub department: String,
    pub department_en: String,
    pub audience: Audience,
    pub item_type: ItemType,
    pub category: Stage,
    pub online: bool,
    pub granted_without_applying: bool,
    pub time_limit_days: u32,
    pub repeatable: bool,
    /// Indices of prerequisite services.
    pub prerequisites: Vec<u32>,
    pub noise: f32,
    pub materials: Vec<Material>,
    pub deadline: Option<Deadline>,
    /// Bundles (index) and step positions this service appears in.
    pub in_bundles: Vec<(u32, u16)>,
}

/// One step of a bundle journey.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Service index.
    pub service: u32,
    /// Positions of earlier steps of the same bundle that must be done first.
    pub after: Vec<u16>,
    /// Simulation hint: delay in days after the latest `after` step, uniform in `[lo, hi]`.
    pub delay_days: (f32, f32),
    /// Simulation hint: probability that the step appears in the online log.
    pub observed: f32,
}

/// A life-event bundle (一件事): ordered steps with dependencies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bundle {
    pub id: String,
    pub zh: String,
    pub en: String,
    pub stage: Stage,
    pub audience: Audience,
    pub life_event: LifeEvent,
    pub sensitive: bool,
    pub steps: Vec<Step>,
}

/// One problem found while loading, with the file and the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.field, self.message)
    }
}

/// Why a catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read catalogue {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("catalogue {path} holds no *.toml file")]
    Empty { path: PathBuf },
    #[error("catalogue is invalid ({} problems):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// The validated catalogue.
#[derive(Debug, Clone)]
pub struct Catalogue {
    services: Vec<Service>,
    bundles: Vec<Bundle>,
    index: HashMap<String, u32>,
    fingerprint: String,
}

/// The files of the built-in catalogue, in the order `load` reads a folder (sorted by name).
const BUILTIN: [(&str, &str); 2] = [
    ("catalogue/enterprise.toml", include_str!("../../catalogue/enterprise.toml")),
    ("catalogue/person.toml", include_str!("../../catalogue/person.toml")),
];

impl Catalogue {
    /// Loads a catalogue file, or every `*.toml` file of a folder in file-name order.
    pub fn load(path: &Path) -> Result<Catalogue, CatalogueError> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|source| CatalogueError::Read { path: p.to_owned(), source });
        let mut files = Vec::new();
        if path.is_dir() {
            let entries =
                std::fs::read_dir(path).map_err(|source| CatalogueError::Read { path: path.to_owned(), source })?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            for p in paths {
                let text = read(&p)?;
                files.push((p.display().to_string(), text));
            }
            if files.is_empty() {
                return Err(CatalogueError::Empty { path: path.to_owned() });
            }
        } else {
            files.push((path.display().to_string(), read(path)?));
        }
        Catalogue::from_sources(&files)
    }

    /// The Dalian catalogue of this repository (`catalogue/*.toml`), built into the binary: the
    /// default wherever no `--catalogue` is given. Same fingerprint as loading the folder.
    pub fn builtin() -> Catalogue {
        let files = BUILTIN.map(|(name, text)| (name.to_owned(), text.to_owned()));
        Catalogue::from_sources(&files).expect("the built-in catalogue is valid (tests/cli.rs checks it)")
    }

    /// The built-in catalogue's files, (path, TOML text), e.g. to write them out.
    pub fn builtin_files() -> &'static [(&'static str, &'static str)] {
        &BUILTIN
    }

    /// Builds a catalogue from (file name, TOML text) pairs.
    pub fn from_sources(files: &[(String, String)]) -> Result<Catalogue, CatalogueError> {
        let mut problems = Vec::new();
        let mut raw = Vec::new();
        let mut hasher = Sha256::new();
        for (name, text) in files {
            hasher.update(name.rsplit('/').next().unwrap_or(name).as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            match toml::from_str::<RawFile>(text) {
                Ok(f) => raw.push((name.clone(), f)),
                Err(e) => problems.push(Problem {
                    file: name.clone(),
                    field: "(syntax)".into(),
                    message: e.to_string().trim().replace('\n', " "),
                }),
            }
        }
        let fingerprint = hex(&hasher.finalize()[..16]);
        let cat = validate(raw, &mut problems, fingerprint);
        if problems.is_empty() {
            Ok(cat)
        } else {
            Err(CatalogueError::Invalid(problems))
        }
    }

    /// Adds generated long-tail services (`x.tail.NNNN`, rarely used, no bundle) until the
    /// catalogue holds `total` services; for scale tests and benchmarks. The real files are not
    /// touched and the fingerprint changes.
    pub fn with_long_tail(mut self, total: usize) -> Catalogue {
        let stages = [Stage::Daily, Stage::Medical, Stage::Operation, Stage::Tax];
        let mut i = 0;
        while self.services.len() < total {
            i += 1;
            let id = format!("x.tail.{i:04}");
            if self.index.contains_key(&id) {
                continue;
            }
            let stage = stages[i % stages.len()];
            let audience =
                if stage == Stage::Operation || stage == Stage::Tax { Audience::Enterprise } else { Audience::Person };
            self.index.insert(id.clone(), self.services.len() as u32);
            self.services.push(Service {
                id,
                zh: format!("长尾事项{i}"),
                en: format!("Long-tail service {i}"),
                department: "大连市政务服务中心".into(),
                department_en: "Dalian Government Service Center".into(),
                audience,
                item_type: ItemType::PublicService,
                category: stage,
                online: true,
                granted_without_applying: false,
                time_limit_days: 5,
                repeatable: true,
                prerequisites: Vec::new(),
                // Zipf-like tail: rare, and rarer further out.
                noise: 0.02 / (1.0 + i as f32 / 50.0),
                materials: Vec::new(),
                deadline: None,
                in_bundles: Vec::new(),
            });
        }
        self.fingerprint = format!("{}+tail{}", self.fingerprint, self.services.len());
        self
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }
    pub fn bundles(&self) -> &[Bundle] {
        &self.bundles
    }
    pub fn service(&self, idx: u32) -> &Service {
        &self.services[idx as usize]
    }
    /// The index of a service id.
    pub fn lookup(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }
    /// A short hash of the catalogue sources (and long tail), recorded in every artifact.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// Bundles started by a life event.
    pub fn bundles_for(&self, ev: LifeEvent) -> impl Iterator<Item = (u32, &Bundle)> {
        self.bundles.iter().enumerate().filter(move |(_, b)| b.life_event == ev).map(|(i, b)| (i as u32, b))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'_')
}

fn month_day(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 5 && b[2] == b'-' && crate::time::Date::parse(&format!("2024-{s}")).is_some()
}

fn validate(raw: Vec<(String, RawFile)>, problems: &mut Vec<Problem>, fingerprint: String) -> Catalogue {
    let mut push =
        |file: &str, field: String, message: String| problems.push(Problem { file: file.to_owned(), field, message });
    // Pass 1: ids.
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut first_seen: HashMap<String, String> = HashMap::new();
    let mut services = Vec::new();
    let mut origins = Vec::new();
    for (file, f) in &raw {
        for (i, s) in f.service.iter().enumerate() {
            let field = format!("service[{i}] (id {:?})", s.id);
            if !valid_id(&s.id) {
                push(file, format!("{field}.id"), "ids use only a-z, 0-9, '.' and '_' (1-64 chars)".into());
            }
            if let Some(prev) = first_seen.get(&s.id) {
                push(file, format!("{field}.id"), format!("duplicate service id, first defined in {prev}"));
                continue;
            }
            first_seen.insert(s.id.clone(), file.clone());
            index.insert(s.id.clone(), services.len() as u32);
            origins.push((file.as_str(), field));
            services.push(s);
        }
    }
    // Pass 2: fields and references.
    let mut out = Vec::with_capacity(services.len());
    for (s, (file, field)) in services.iter().zip(&origins) {
        for (name, v) in [("zh", &s.zh), ("en", &s.en), ("department", &s.department)] {
            if v.trim().is_empty() {
                push(file, format!("{field}.{name}"), "missing name".into());
            }
        }
        let mut prerequisites = Vec::new();
        for (j, p) in s.prerequisites.iter().enumerate() {
            match index.get(p) {
                Some(&k) if p == &s.id => {
                    let _ = k;
                    push(
                        file,
                        format!("{field}.prerequisites[{j}]"),
                        "a service cannot be its own prerequisite".into(),
                    );
                }
                Some(&k) => prerequisites.push(k),
                None => push(file, format!("{field}.prerequisites[{j}]"), format!("unknown service id {p:?}")),
            }
        }
        if !(0.0..=50.0).contains(&s.noise) {
            push(file, format!("{field}.noise"), format!("expected 0 to 50 uses per year, got {}", s.noise));
        }
        for (j, m) in s.materials.iter().enumerate() {
            if m.zh.trim().is_empty() || m.en.trim().is_empty() {
                push(file, format!("{field}.materials[{j}]"), "missing name".into());
            }
        }
        match &s.deadline {
            Some(Deadline::YearlyWindow { from, to, share }) => {
                for (n, v) in [("from", from), ("to", to)] {
                    if !month_day(v) {
                        push(file, format!("{field}.deadline.{n}"), format!("expected MM-DD, got {v:?}"));
                    }
                }
                if !(0.0..=1.0).contains(share) {
                    push(file, format!("{field}.deadline.share"), "expected a share in [0, 1]".into());
                }
            }
            Some(Deadline::BeforeExpiry { validity_years, holders, .. }) => {
                if *validity_years == 0 {
                    push(file, format!("{field}.deadline.validity_years"), "expected at least 1".into());
                }
                if !(0.0..=1.0).contains(holders) {
                    push(file, format!("{field}.deadline.holders"), "expected a share in [0, 1]".into());
                }
            }
            Some(Deadline::AfterEvent { .. }) | None => {}
        }
        out.push(Service {
            id: s.id.clone(),
            zh: s.zh.clone(),
            en: s.en.clone(),
            department: s.department.clone(),
            department_en: s.department_en.clone(),
            audience: s.audience,
            item_type: s.item_type,
            category: s.category,
            online: s.online,
            granted_without_applying: s.granted_without_applying,
            time_limit_days: s.time_limit_days,
            repeatable: s.repeatable,
            prerequisites,
            noise: s.noise,
            materials: s.materials.clone(),
            deadline: s.deadline.clone(),
            in_bundles: Vec::new(),
        });
    }
    // Prerequisite cycles: iterative three-colour DFS, reporting each cycle once.
    let mut colour = vec![0u8; out.len()];
    for start in 0..out.len() {
        if colour[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        colour[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&child) = out[node].prerequisites.get(*next) {
                *next += 1;
                let child = child as usize;
                match colour[child] {
                    0 => {
                        colour[child] = 1;
                        stack.push((child, 0));
                    }
                    1 => {
                        let pos = stack.iter().position(|&(n, _)| n == child).unwrap_or(0);
                        let mut ids: Vec<&str> = stack[pos..].iter().map(|&(n, _)| out[n].id.as_str()).collect();
                        ids.push(&out[child].id);
                        let (file, field) = &origins[child];
                        push(file, format!("{field}.prerequisites"), format!("dependency cycle: {}", ids.join(" -> ")));
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    // Bundles.
    let mut bundles = Vec::new();
    let mut bundle_seen: HashMap<String, String> = HashMap::new();
    for (file, f) in &raw {
        for (i, b) in f.bundle.iter().enumerate() {
            let field = format!("bundle[{i}] (id {:?})", b.id);
            if !valid_id(&b.id) {
                push(file, format!("{field}.id"), "ids use only a-z, 0-9, '.' and '_' (1-64 chars)".into());
            }
            if let Some(prev) = bundle_seen.get(&b.id) {
                push(file, format!("{field}.id"), format!("duplicate bundle id, first defined in {prev}"));
                continue;
            }
            bundle_seen.insert(b.id.clone(), file.clone());
            for (name, v) in [("zh", &b.zh), ("en", &b.en)] {
                if v.trim().is_empty() {
                    push(file, format!("{field}.{name}"), "missing name".into());
                }
            }
            if b.step.is_empty() {
                push(file, format!("{field}.step"), "a bundle needs at least one step".into());
            }
            let mut steps: Vec<Step> = Vec::new();
            let mut ok = true;
            for (j, st) in b.step.iter().enumerate() {
                let sf = format!("{field}.step[{j}]");
                let Some(&svc) = index.get(&st.service) else {
                    push(file, format!("{sf}.service"), format!("unknown service id {:?}", st.service));
                    ok = false;
                    continue;
                };
                if steps.iter().any(|s| s.service == svc) {
                    push(file, format!("{sf}.service"), format!("duplicate step {:?}", st.service));
                }
                let mut after = Vec::new();
                for (k, a) in st.after.iter().enumerate() {
                    match b.step[..j].iter().position(|p| &p.service == a) {
                        Some(pos) => after.push(pos as u16),
                        None => push(
                            file,
                            format!("{sf}.after[{k}]"),
                            format!("{a:?} is not an earlier step of this bundle"),
                        ),
                    }
                }
                let [lo, hi] = st.delay_days;
                if !(lo >= 0.0 && hi >= lo && hi <= 3650.0) {
                    push(file, format!("{sf}.delay_days"), format!("expected 0 <= lo <= hi <= 3650, got [{lo}, {hi}]"));
                }
                if !(0.0..=1.0).contains(&st.observed) {
                    push(file, format!("{sf}.observed"), "expected a probability in [0, 1]".into());
                }
                steps.push(Step { service: svc, after, delay_days: (lo, hi), observed: st.observed });
            }
            if ok {
                let bi = bundles.len() as u32;
                for (pos, st) in steps.iter().enumerate() {
                    out[st.service as usize].in_bundles.push((bi, pos as u16));
                }
                bundles.push(Bundle {
                    id: b.id.clone(),
                    zh: b.zh.clone(),
                    en: b.en.clone(),
                    stage: b.stage,
                    audience: b.audience,
                    life_event: b.life_event,
                    sensitive: b.sensitive,
                    steps,
                });
            }
        }
    }
    Catalogue { services: out, bundles, index, fingerprint }
}

/// Counts for `tongban catalogue check`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub services: usize,
    pub bundles: usize,
    pub person_services: usize,
    pub enterprise_services: usize,
    pub services_per_stage: Vec<(String, usize)>,
    pub bundles_per_stage: Vec<(String, usize)>,
    pub fingerprint: String,
}

impl Catalogue {
    pub fn summary(&self) -> Summary {
        let per = |f: &dyn Fn(Stage) -> usize| {
            Stage::ALL.iter().map(|&s| (s.as_str().to_owned(), f(s))).filter(|(_, n)| *n > 0).collect()
        };
        Summary {
            services: self.services.len(),
            bundles: self.bundles.len(),
            person_services: self.services.iter().filter(|s| s.audience != Audience::Enterprise).count(),
            enterprise_services: self.services.iter().filter(|s| s.audience != Audience::Person).count(),
            services_per_stage: per(&|st| self.services.iter().filter(|s| s.category == st).count()),
            bundles_per_stage: per(&|st| self.bundles.iter().filter(|b| b.stage == st).count()),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(id: &str, prereq: &[&str]) -> String {
        format!(
            "[[service]]\nid = \"{id}\"\nzh = \"事项\"\nen = \"Item\"\ndepartment = \"部门\"\naudience = \"person\"\nitem_type = \"other\"\ncategory = \"daily\"\nonline = true\ntime_limit_days = 1\nprerequisites = [{}]\n\n",
            prereq.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(",")
        )
    }

    #[test]
    fn a_broken_catalogue_names_every_problem() {
        let text = [svc("p.a", &["p.b"]), svc("p.b", &["p.a"]), svc("p.c", &["p.nowhere"]), svc("p.c", &[])].concat();
        let Err(CatalogueError::Invalid(problems)) = Catalogue::from_sources(&[("bad.toml".into(), text)]) else {
            panic!("expected invalid");
        };
        let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str| all.iter().any(|p| p.contains(needle));
        assert!(has("dependency cycle: p.a -> p.b -> p.a"), "{all:?}");
        assert!(has("unknown service id \"p.nowhere\""), "{all:?}");
        assert!(has("duplicate service id"), "{all:?}");
        assert!(all.iter().all(|p| p.starts_with("bad.toml: service[")), "{all:?}");
    }

    #[test]
    fn a_bundle_step_after_a_later_step_is_rejected() {
        let text = [
            svc("p.a", &[]),
            svc("p.b", &[]),
            "[[bundle]]\nid = \"b.x\"\nzh = \"一件事\"\nen = \"X\"\nstage = \"daily\"\naudience = \"person\"\nlife_event = \"move\"\n\
             [[bundle.step]]\nservice = \"p.a\"\nafter = [\"p.b\"]\ndelay_days = [0, 1]\n\
             [[bundle.step]]\nservice = \"p.b\"\ndelay_days = [2, 1]\n"
                .to_string(),
        ]
        .concat();
        let Err(CatalogueError::Invalid(problems)) = Catalogue::from_sources(&[("b.toml".into(), text)]) else {
            panic!("expected invalid");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].field, "bundle[0] (id \"b.x\").step[0].after[0]");
        assert_eq!(problems[1].field, "bundle[0] (id \"b.x\").step[1].delay_days");
    }

    #[test]
    fn missing_names_and_syntax_errors_are_reported_with_their_file() {
        let text = svc("p.a", &[]).replace("zh = \"事项\"\n", "");
        let Err(CatalogueError::Invalid(p)) =
            Catalogue::from_sources(&[("a.toml".into(), text), ("b.toml".into(), "[[service]\nid=".into())])
        else {
            panic!("expected invalid");
        };
        assert_eq!(p[0].file, "b.toml");
        assert_eq!(p[0].field, "(syntax)");
        assert_eq!(p[1].field, "service[0] (id \"p.a\").zh");
    }

    #[test]
    fn the_long_tail_grows_the_catalogue_to_the_requested_size() {
        let cat = Catalogue::from_sources(&[("a.toml".into(), svc("p.a", &[]))]).unwrap();
        let fp = cat.fingerprint().to_owned();
        let big = cat.with_long_tail(2000);
        assert_eq!(big.services().len(), 2000);
        assert_eq!(big.lookup("x.tail.0001"), Some(1));
        assert_ne!(big.fingerprint(), fp);
    }
}
