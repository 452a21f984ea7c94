//! `--config FILE` (or `TONGBAN_CONFIG`): a TOML file of settings, lowest precedence. Each key
//! `some_key = value` becomes the variable `TONGBAN_SOME_KEY` unless the environment already has
//! it, and flags override both: flags > environment > file > defaults.
//!
//! The known keys are read from the command line's own definition (every flag with a
//! `TONGBAN_*` variable, in any subcommand) plus the variables read from the environment only
//! (keys and secrets), so that a new flag is a new key without a second list to keep. A key
//! outside that set is an error naming the file, the line and the known keys: a misspelt
//! `mx_body_bytes` silently ignored would leave the default in force. Values are never shown:
//! a config file holds secrets (issue 12).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// Variables read from the environment only (no flag: `ps` shows flags), allowed in the file.
const ENV_ONLY: [&str; 5] = [
    "TONGBAN_PORTAL_KEYS",
    "TONGBAN_INGEST_KEYS",
    "TONGBAN_OPERATOR_KEYS",
    "TONGBAN_PUSH_ID_KEY",
    "TONGBAN_WEBHOOK_SECRET",
];

/// The config key of a variable: `TONGBAN_MAX_BATCH` -> `max_batch`. `TONGBAN_CONFIG` has none.
fn key_of(var: &str) -> Option<String> {
    match var {
        "TONGBAN_CONFIG" => None,
        // The one key whose variable is not its name: `data_dir` reads better in a file,
        // `--data` / `TONGBAN_DATA` on a command line.
        "TONGBAN_DATA" => Some("data_dir".to_owned()),
        v => v.strip_prefix("TONGBAN_").map(str::to_lowercase),
    }
}

/// Every key a config file may hold, with its variable, from `cmd` and its subcommands.
pub fn known_keys(cmd: &clap::Command) -> BTreeMap<String, String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeMap<String, String>) {
        for arg in cmd.get_arguments() {
            if let Some(var) = arg.get_env().and_then(|v| v.to_str()) {
                if let Some(key) = key_of(var) {
                    out.insert(key, var.to_owned());
                }
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(cmd, &mut out);
    for var in ENV_ONLY {
        if let Some(key) = key_of(var) {
            out.insert(key, var.to_owned());
        }
    }
    out
}

/// The config file named by `--config FILE`, `--config=FILE` or `TONGBAN_CONFIG`. Read before
/// clap parses (the file feeds clap's `env` fallbacks), hence by hand.
fn config_path() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--config=").map(str::to_owned)))
        .or_else(|| std::env::var("TONGBAN_CONFIG").ok())
}

/// 1-based line of a byte offset.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text[..at].matches('\n').count() + 1
}

/// Reads the config file, if one is named, into `TONGBAN_*` variables not already set.
pub fn apply(cmd: &clap::Command) -> Result<()> {
    let Some(path) = config_path() else { return Ok(()) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the config file {path}"))?;
    for (var, value) in parse(&path, &text, &known_keys(cmd))? {
        if std::env::var_os(&var).is_none() {
            // Single-threaded here: nothing else reads the environment yet.
            std::env::set_var(&var, value);
        }
    }
    Ok(())
}

/// The (variable, value) pairs of a config file's text; `path` names it in errors.
pub fn parse(path: &str, text: &str, known: &BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
    // toml's own message quotes the faulty line, and a config file holds secrets (a webhook
    // secret, a Redis password): say where and what, never the text.
    let table: BTreeMap<toml::Spanned<String>, toml::Value> = toml::from_str(text).map_err(|e: toml::de::Error| {
        let at = e.span().map_or(0, |s| s.start).min(text.len());
        let line = line_of(text, at);
        let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        anyhow::anyhow!(
            "{path}:{line}:{column}: not valid TOML: {} (the line is not shown: config files hold secrets)",
            e.message().trim()
        )
    })?;
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in table {
        let line = line_of(text, key.span().start);
        let name = key.get_ref().replace('-', "_");
        let Some(var) = known.get(&name) else {
            let names: Vec<&str> = known.keys().map(String::as_str).collect();
            let hint = closest(&name, &names).map_or_else(String::new, |k| format!(" (did you mean \"{k}\"?)"));
            bail!("{path}:{line}: unknown key {:?}{hint}; known keys: {}", key.get_ref(), names.join(", "));
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) => {
                a.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect::<Vec<_>>().join(",")
            }
            _ => bail!("{path}:{line}: key {:?}: expected a string, number, boolean or list", key.get_ref()),
        };
        out.push((var.clone(), value));
    }
    Ok(out)
}

/// The known key nearest to `key` by edit distance, when it is near enough to be a typo.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known.iter().map(|k| (distance(key, k), *k)).filter(|(d, _)| *d <= 2).min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diag + usize::from(ca != *cb));
            diag = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeMap<String, String> {
        [("addr", "TONGBAN_ADDR"), ("max_body_bytes", "TONGBAN_MAX_BODY_BYTES"), ("data_dir", "TONGBAN_DATA")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn an_unknown_key_names_its_line_the_nearest_key_and_never_a_value() {
        let text = "addr = \"0.0.0.0:8080\"\n\n# comment\nmx_body_bytes = \"s3cr3t\"\n";
        let err = parse("tongban.toml", text, &known()).unwrap_err().to_string();
        assert!(err.starts_with("tongban.toml:4: unknown key \"mx_body_bytes\""), "{err}");
        assert!(err.contains("did you mean \"max_body_bytes\"?"), "{err}");
        assert!(err.ends_with("known keys: addr, data_dir, max_body_bytes"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn known_keys_become_their_variables() {
        let got = parse("c.toml", "data_dir = \"/d\"\nmax-body-bytes = 10\n", &known()).unwrap();
        assert_eq!(got, [("TONGBAN_DATA".into(), "/d".into()), ("TONGBAN_MAX_BODY_BYTES".into(), "10".into())]);
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
        assert_eq!(closest("adr", &["addr", "now"]), Some("addr"));
        assert_eq!(closest("zzzzzz", &["addr", "now"]), None);
    }
}
