//! The console's words per locale, from `labels.toml` (built in).

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::locale::Locale;

static LABELS: LazyLock<HashMap<String, [String; 2]>> = LazyLock::new(|| {
    toml::from_str(include_str!("labels.toml")).expect("console/labels.toml is valid: checked by a test")
});

/// The label `key` in locale `l`; an unknown key shows itself (a test checks every key used).
pub fn t(key: &str, l: Locale) -> &str {
    match LABELS.get(key) {
        Some(both) => &both[usize::from(l == Locale::En)],
        None => {
            debug_assert!(false, "console label {key:?} is not in labels.toml");
            key
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_label_has_both_languages_and_every_key_used_exists() {
        assert!(super::LABELS.values().all(|[zh, en]| !zh.is_empty() && !en.is_empty()));
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console");
        for f in std::fs::read_dir(dir).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("labels.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                // Calls of `t("key", ...)`: `t(` not preceded by part of another name.
                for (at, _) in text.match_indices("t(\"") {
                    if text[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    let rest = &text[at + 3..];
                    let key = &rest[..rest.find('"').unwrap()];
                    assert!(super::LABELS.contains_key(key), "{}: label {key:?} missing", path.display());
                }
            }
        }
    }
}
