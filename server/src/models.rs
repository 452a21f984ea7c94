//! Loaded models: the active one swapped atomically (arc-swap) under live traffic, and the
//! ones before it for roll-back. A file that fails validation never replaces the active model.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::value::RawValue;
use tongban_features::catalogue::Catalogue;
use tongban_model::artifact::{self, ArtifactError, Header};
use tongban_model::Model;

use crate::render::{self, Locale};
use crate::templates::Templates;

/// A model being served.
#[derive(Debug)]
pub struct Served {
    /// Created-at time and the first characters of the data fingerprint.
    pub version: String,
    pub model: Model,
    pub header: Header,
    pub path: PathBuf,
    /// Per service, its guidance JSON in zh-CN and en, built on first use.
    guidance: OnceLock<Vec<[Box<RawValue>; 2]>>,
}

/// Memory for the served model's per-subject states (`Model::with_seq_cache`): a quarter for
/// the sequence-model states (about 800 bytes per subject at width 64), the rest for the
/// gathered candidates (about 8 KB per subject): some 24,000 recently active subjects. A state
/// is recomputed on a subject's first request after its history changes, so the cache needs to
/// hold the subjects active within minutes, not the whole population.
pub const SEQ_CACHE_BYTES: u64 = 256 << 20;

impl Served {
    pub fn new(model: Model, header: Header, path: PathBuf) -> Served {
        let fp: String = header.data.fingerprint.chars().take(8).collect();
        let model = model.with_seq_cache(SEQ_CACHE_BYTES);
        Served { version: format!("{}-{fp}", header.created_at), model, header, path, guidance: OnceLock::new() }
    }

    /// The serialised guidance of a service in a locale. Every suggestion repeats the same few
    /// hundred services, so rendering them once per model takes most of the JSON work off the
    /// request path. `portal` and `templates` are fixed for a server's lifetime.
    pub fn guidance(&self, service: u32, locale: Locale, portal: &str, templates: &Templates) -> Option<&RawValue> {
        let cat = self.model.catalogue()?;
        let all = self.guidance.get_or_init(|| {
            (0..cat.services().len() as u32)
                .map(|s| {
                    [Locale::ZhCn, Locale::En].map(|l| {
                        serde_json::value::to_raw_value(&render::service(cat, templates, s, l, portal))
                            .expect("guidance serialises")
                    })
                })
                .collect()
        });
        let i = usize::from(locale == Locale::En);
        all.get(service as usize).map(|g| &*g[i])
    }
}

/// Activations kept: the active model and the ones a roll-back can return to (each holds a
/// model in memory, so the list is bounded; the oldest goes first).
pub const MODEL_HISTORY: usize = 8;

/// The active model and the history of activations.
#[derive(Debug)]
pub struct Models {
    active: ArcSwap<Served>,
    history: Mutex<Vec<Arc<Served>>>,
    catalogue: Option<Arc<Catalogue>>,
}

impl Models {
    pub fn new(first: Served, catalogue: Option<Arc<Catalogue>>) -> Models {
        let first = Arc::new(first);
        Models { active: ArcSwap::new(first.clone()), history: Mutex::new(vec![first]), catalogue }
    }

    pub fn active(&self) -> Arc<Served> {
        self.active.load_full()
    }

    /// The serving catalogue, if any.
    pub fn catalogue(&self) -> Option<Arc<Catalogue>> {
        self.catalogue.clone()
    }

    /// Loads and validates a model file with the serving catalogue, then activates it.
    pub fn load_and_activate(&self, path: &Path) -> Result<String, ArtifactError> {
        let (model, header) = artifact::load(path, self.catalogue.clone())?;
        let served = Arc::new(Served::new(model, header, path.to_owned()));
        let version = served.version.clone();
        let mut h = self.history.lock().expect("no panics while holding the lock");
        h.push(served.clone());
        if h.len() > MODEL_HISTORY {
            h.remove(0);
        }
        let before = self.active.swap(served);
        // The model that stops serving keeps its weights (for a roll-back), not its states.
        before.model.clear_seq_cache();
        Ok(version)
    }

    /// Re-activates the model before the active one; `None` if there is none.
    pub fn rollback(&self) -> Option<String> {
        let mut h = self.history.lock().expect("no panics while holding the lock");
        if h.len() < 2 {
            return None;
        }
        h.pop();
        let prev = h.last().expect("at least one").clone();
        let version = prev.version.clone();
        self.active.swap(prev).model.clear_seq_cache();
        Some(version)
    }

    /// The activations, oldest first, and which one serves.
    pub fn list(&self) -> ModelList {
        let active = self.active();
        let h = self.history.lock().expect("no panics while holding the lock");
        let models = h
            .iter()
            .map(|s| ModelEntry {
                version: s.version.clone(),
                // One activation is active, even when a file was activated several times.
                active: Arc::ptr_eq(s, &active),
                path: s.path.display().to_string(),
                created_at: s.header.created_at.clone(),
                schema_version: s.header.schema_version,
                catalogue: s.header.catalogue_fingerprint.clone(),
                data: DataOut {
                    source: s.header.data.source.clone(),
                    fingerprint: s.header.data.fingerprint.clone(),
                    events: s.header.data.events,
                    subjects: s.header.data.subjects,
                    services: s.header.data.services,
                },
                metrics: s.header.metrics.clone(),
            })
            .collect();
        ModelList { active: active.version.clone(), models }
    }
}

/// The models a server has activated (`GET /admin/models`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// The version serving now.
    pub active: String,
    /// The activations, oldest first (bounded).
    pub models: Vec<ModelEntry>,
}

/// One activation of a model file.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelEntry {
    pub version: String,
    pub active: bool,
    pub path: String,
    /// When it was trained (RFC 3339).
    pub created_at: String,
    pub schema_version: u32,
    /// The fingerprint of the catalogue it was trained with.
    pub catalogue: Option<String>,
    pub data: DataOut,
    /// Evaluation figures recorded in the file (`tongban eval --record`), free-form.
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<serde_json::Value>,
}

/// What a model was trained on.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DataOut {
    pub source: String,
    /// SHA-256 of the training file, hex.
    pub fingerprint: String,
    pub events: u64,
    pub subjects: u64,
    pub services: u64,
}
