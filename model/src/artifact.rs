//! The model artifact: one self-describing, versioned, checksummed file.
//!
//! Layout (little-endian):
//! ```text
//! b"TONGBAN-MODEL\n"            magic (14 bytes)
//! u32                           format version (FORMAT_VERSION)
//! u64, header                   JSON metadata: schema version and hash, catalogue fingerprint,
//!                               parameters, data fingerprint, metrics, created_at
//! u64, body                     postcard: service ids, item statistics, ranker, parameters
//! [u8; 32]                      SHA-256 of everything before it
//! ```
//! Loading checks, in order: magic, format version, lengths (truncation), checksum, feature
//! schema, catalogue fingerprint; only then decodes the body. Each refusal says what to do.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tongban_features::catalogue::Catalogue;
use tongban_features::stats::ItemStats;
use tongban_features::vector::{schema_hash, SCHEMA_VERSION};

use crate::knn::ItemSims;
use crate::ranker::Ranker;
use crate::recommend::{Model, ModelParams};
use crate::seq::SeqModel;

pub const MAGIC: &[u8; 14] = b"TONGBAN-MODEL\n";
/// 2: item similarities and the sequence model in the body, ranker rows of model features.
/// 3: the sequence model records its architecture (filter or SASRec blocks) and kept epoch.
pub const FORMAT_VERSION: u32 = 3;

/// Self-describing metadata, readable without decoding the body (`tongban models show`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format_version: u32,
    pub tongban_version: String,
    pub schema_version: u32,
    /// Hex of [`schema_hash`].
    pub schema_hash: String,
    pub catalogue_fingerprint: Option<String>,
    pub params: ModelParams,
    pub data: DataInfo,
    /// Evaluation figures recorded by the trainer (free-form JSON), if any.
    pub metrics: Option<serde_json::Value>,
    /// RFC 3339, passed in by the caller (the model crate never reads the clock).
    pub created_at: String,
}

/// What the model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub source: String,
    /// SHA-256 of the training file, hex.
    pub fingerprint: String,
    pub events: u64,
    pub subjects: u64,
    pub services: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Body {
    services: Vec<String>,
    stats: ItemStats,
    sims: ItemSims,
    seq: Option<SeqModel>,
    ranker: Ranker,
}

/// Why a model file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not a tongban model file (bad magic bytes)")]
    NotAModel { path: String },
    #[error("{path} has model format version {found}; this build reads version {FORMAT_VERSION}: retrain with `tongban train`")]
    Version { path: String, found: u32 },
    #[error("{path} is truncated or corrupt: {what}")]
    Corrupt { path: String, what: String },
    #[error("{path} was built for feature schema v{found_version} ({found_hash}); this build uses v{SCHEMA_VERSION} ({expected_hash}): retrain with `tongban train`")]
    Schema { path: String, found_version: u32, found_hash: String, expected_hash: String },
    #[error("{path} was trained with catalogue {model}, but the catalogue given is {given}: pass the same catalogue or retrain")]
    Catalogue { path: String, model: String, given: String },
    #[error("{path} was trained with catalogue {model}: pass --catalogue")]
    NeedsCatalogue { path: String, model: String },
    #[error("{path} was trained without a catalogue, but one was given")]
    UnexpectedCatalogue { path: String },
}

/// The header describing `model` (fill in `data`, `metrics`, `created_at`).
pub fn header_for(model: &Model, data: DataInfo, metrics: Option<serde_json::Value>, created_at: String) -> Header {
    Header {
        format_version: FORMAT_VERSION,
        tongban_version: env!("CARGO_PKG_VERSION").to_owned(),
        schema_version: SCHEMA_VERSION,
        schema_hash: format!("{:016x}", schema_hash()),
        catalogue_fingerprint: model.catalogue().map(|c| c.fingerprint().to_owned()),
        params: *model.params(),
        data,
        metrics,
        created_at,
    }
}

/// Serialises a model and its header.
pub fn to_bytes(model: &Model, header: &Header) -> Vec<u8> {
    let head = serde_json::to_vec(header).expect("headers serialise");
    let body = postcard::to_allocvec(&Body {
        services: model.services().to_vec(),
        stats: model.stats().clone(),
        sims: model.sims().clone(),
        seq: model.seq().cloned(),
        ranker: model.ranker().clone(),
    })
    .expect("models serialise");
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Writes the file atomically (temporary file, then rename), so a reader never sees half.
pub fn save(path: &Path, model: &Model, header: &Header) -> Result<(), ArtifactError> {
    let bytes = to_bytes(model, header);
    let tmp = path.with_extension("tmp");
    let err = |source| ArtifactError::Write { path: path.display().to_string(), source };
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reads the header only (after checking magic, version, lengths and checksum).
pub fn read_header(path: &Path) -> Result<Header, ArtifactError> {
    let bytes =
        std::fs::read(path).map_err(|source| ArtifactError::Read { path: path.display().to_string(), source })?;
    Ok(split(&bytes, &path.display().to_string())?.0)
}

fn split<'b>(bytes: &'b [u8], path: &str) -> Result<(Header, &'b [u8]), ArtifactError> {
    let corrupt = |what: &str| ArtifactError::Corrupt { path: path.to_owned(), what: what.to_owned() };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(ArtifactError::NotAModel { path: path.to_owned() });
    }
    let mut at = MAGIC.len();
    let mut take = |n: usize| -> Result<&'b [u8], ArtifactError> {
        let end = at.checked_add(n).filter(|&e| e <= bytes.len()).ok_or_else(|| corrupt("the file ends early"))?;
        let s = &bytes[at..end];
        at = end;
        Ok(s)
    };
    let version = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(ArtifactError::Version { path: path.to_owned(), found: version });
    }
    let hlen = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
    let head = take(usize::try_from(hlen).map_err(|_| corrupt("header length"))?)?;
    let blen = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
    let body = take(usize::try_from(blen).map_err(|_| corrupt("body length"))?)?;
    let sum = take(32)?;
    if at != bytes.len() {
        return Err(corrupt("trailing bytes after the checksum"));
    }
    if Sha256::digest(&bytes[..bytes.len() - 32]).as_slice() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let header: Header = serde_json::from_slice(head).map_err(|e| corrupt(&format!("header: {e}")))?;
    // The header repeats the format version for `tongban models show`; a file whose two copies
    // disagree was not written by `save` (found by the `model_artifact` fuzz target).
    if header.format_version != version {
        return Err(corrupt(&format!("the header says format version {}, the file {version}", header.format_version)));
    }
    Ok((header, body))
}

/// Loads a model, refusing incompatible or corrupt files. `catalogue` must be the catalogue the
/// model was trained with (checked by fingerprint), or `None` for a model trained without one.
pub fn from_bytes(
    bytes: &[u8],
    path: &str,
    catalogue: Option<Arc<Catalogue>>,
) -> Result<(Model, Header), ArtifactError> {
    let (header, body) = split(bytes, path)?;
    let expected_hash = format!("{:016x}", schema_hash());
    if header.schema_version != SCHEMA_VERSION || header.schema_hash != expected_hash {
        return Err(ArtifactError::Schema {
            path: path.to_owned(),
            found_version: header.schema_version,
            found_hash: header.schema_hash.clone(),
            expected_hash,
        });
    }
    match (&header.catalogue_fingerprint, &catalogue) {
        (Some(m), Some(c)) if m != c.fingerprint() => {
            return Err(ArtifactError::Catalogue {
                path: path.to_owned(),
                model: m.clone(),
                given: c.fingerprint().to_owned(),
            })
        }
        (Some(m), None) => return Err(ArtifactError::NeedsCatalogue { path: path.to_owned(), model: m.clone() }),
        (None, Some(_)) => return Err(ArtifactError::UnexpectedCatalogue { path: path.to_owned() }),
        _ => {}
    }
    let body: Body = postcard::from_bytes(body)
        .map_err(|e| ArtifactError::Corrupt { path: path.to_owned(), what: format!("body: {e}") })?;
    let n = body.services.len();
    let seq_ok = body.seq.as_ref().is_none_or(|m| m.consistent() && m.items == n);
    if body.stats.services() != n
        || body.sims.services() != n
        || !seq_ok
        || !body.ranker.forest.as_ref().is_none_or(|f| f.consistent())
        || body.ranker.weights.len() != crate::ranker::INPUT
    {
        return Err(ArtifactError::Corrupt { path: path.to_owned(), what: "inconsistent sizes".into() });
    }
    let seq = body.seq.map(Arc::new);
    let model = Model::from_parts(body.stats, body.sims, seq, catalogue, body.ranker, body.services, header.params);
    Ok((model, header))
}

/// [`from_bytes`] of a file.
pub fn load(path: &Path, catalogue: Option<Arc<Catalogue>>) -> Result<(Model, Header), ArtifactError> {
    let bytes =
        std::fs::read(path).map_err(|source| ArtifactError::Read { path: path.display().to_string(), source })?;
    from_bytes(&bytes, &path.display().to_string(), catalogue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tongban_features::io::{read_log_from, BadRowPolicy, LogFormat};

    fn model() -> Model {
        let text = "1 a b c\n2 a b\n3 b c a\n4 c a b\n";
        let (log, _) =
            read_log_from(text.as_bytes(), Path::new("t"), LogFormat::Lines, BadRowPolicy::Fail).expect("reads");
        Model::build(&log, &[], None, &ModelParams::default(), 100, None, Ranker::uniform(&[0, 3])).expect("builds")
    }

    fn header(m: &Model) -> Header {
        let data = DataInfo { source: "t".into(), fingerprint: "00".into(), events: 11, subjects: 4, services: 3 };
        header_for(m, data, None, "2026-11-27T00:00:00Z".into())
    }

    #[test]
    fn a_saved_model_loads_back_and_scores_the_same() {
        let m = model();
        let bytes = to_bytes(&m, &header(&m));
        let (back, h) = from_bytes(&bytes, "m", None).unwrap();
        assert_eq!(h, header(&m));
        assert_eq!(back.ranker(), m.ranker());
        assert_eq!(back.services(), m.services());
        let p = &m.profiles(
            &read_log_from("9 a\n".as_bytes(), Path::new("t"), LogFormat::Lines, BadRowPolicy::Fail).unwrap().0,
            &[],
        )[0];
        let (mut s1, mut s2) = (m.scratch(), back.scratch());
        let req = crate::Request::default();
        assert_eq!(m.recommend(p, &req, 100, &mut s1), back.recommend(p, &req, 100, &mut s2));
    }

    #[test]
    fn a_model_with_a_sequence_model_loads_back_and_scores_the_same() {
        let text = "1 a b c\n2 a b\n3 b c a\n4 c a b\n5 a b c a\n";
        let (log, _) =
            read_log_from(text.as_bytes(), Path::new("t"), LogFormat::Lines, BadRowPolicy::Fail).expect("reads");
        for arch in [crate::seq::SeqArch::Filter, crate::seq::SeqArch::Sasrec] {
            let p = crate::seq::SeqParams { arch, dim: 8, window: 4, epochs: 2, ..crate::seq::SeqParams::default() };
            let seq = SeqModel::train(&crate::eval::sequences(&log), log.services.len(), &p).unwrap();
            assert!(seq.consistent());
            let m = Model::build(
                &log,
                &[],
                None,
                &ModelParams::default(),
                100,
                Some(Arc::new(seq)),
                Ranker::uniform(&[0, 19]),
            )
            .unwrap();
            let (back, _) = from_bytes(&to_bytes(&m, &header(&m)), "m", None).unwrap();
            assert_eq!(back.seq(), m.seq());
            let profiles = m.profiles(&log, &[]);
            let (mut s1, mut s2) = (m.scratch(), back.scratch());
            let req = crate::Request::default();
            for p in &profiles {
                assert_eq!(m.recommend(p, &req, 100, &mut s1), back.recommend(p, &req, 100, &mut s2));
            }
            // Served from the state cache: the same answers, computed once per key.
            let cached = back.clone().with_seq_cache(1 << 20);
            let mut s3 = cached.scratch();
            let day = 86_400;
            for now in [100, 100 + 40 * day, 100 + 400 * day] {
                for p in &profiles {
                    for at in [now, now, now + 1] {
                        assert_eq!(cached.recommend(p, &req, at, &mut s3), m.recommend(p, &req, at, &mut s1), "{at}");
                    }
                }
            }
            let (entries, bytes) = cached.seq_cache_usage();
            // One sequence state and one gathered candidate set per subject and time bucket.
            assert!(entries >= 2 && entries <= 6 * profiles.len() && bytes > 0, "{entries} {bytes}");
            assert_eq!(m.seq_cache_usage(), (0, 0));
        }
    }

    #[test]
    fn truncated_corrupt_or_foreign_files_are_refused_with_a_reason() {
        let m = model();
        let bytes = to_bytes(&m, &header(&m));
        for cut in [0, 5, 20, bytes.len() / 2, bytes.len() - 1] {
            let err = from_bytes(&bytes[..cut], "m", None).unwrap_err().to_string();
            assert!(err.contains("not a tongban model") || err.contains("truncated or corrupt"), "{cut}: {err}");
        }
        let mut flipped = bytes.clone();
        let mid = bytes.len() / 2;
        flipped[mid] ^= 1;
        assert!(from_bytes(&flipped, "m", None).unwrap_err().to_string().contains("checksum mismatch"));
        let mut v2 = bytes.clone();
        v2[MAGIC.len()] = 9;
        assert!(matches!(from_bytes(&v2, "m", None), Err(ArtifactError::Version { found: 9, .. })));
        // Files of the previous formats (1: no sequence model, no similarities; 2: a sequence
        // model without its architecture) say to retrain.
        for old in [1u32, 2] {
            let mut v = bytes.clone();
            v[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&old.to_le_bytes());
            let err = from_bytes(&v, "old.model", None).unwrap_err().to_string();
            assert!(
                err.contains(&format!("format version {old}")) && err.contains("retrain with `tongban train`"),
                "{err}"
            );
        }
    }

    /// Regression (fuzz/fuzz_targets/model_artifact.rs, a resealed file whose header JSON said
    /// `"format_version":1`): a well-sealed file whose header contradicts its version field.
    #[test]
    fn a_header_that_contradicts_the_format_version_is_refused() {
        let m = model();
        let mut h = header(&m);
        h.format_version = 1;
        let err = from_bytes(&to_bytes(&m, &h), "m", None).unwrap_err().to_string();
        assert!(err.contains("truncated or corrupt") && err.contains("format version 1"), "{err}");
    }

    #[test]
    fn a_model_of_another_feature_schema_is_refused() {
        let m = model();
        let mut h = header(&m);
        h.schema_hash = "0123456789abcdef".into();
        let bytes = to_bytes(&m, &h);
        let err = from_bytes(&bytes, "m", None).unwrap_err().to_string();
        assert!(err.contains("feature schema") && err.contains("retrain"), "{err}");
    }
}
