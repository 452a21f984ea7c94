//! End-to-end tests of the `tongban` binary: catalogue check, generate, bad rows.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

mod common;
use common::tongban;

fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_real_catalogue_is_valid_and_large_enough() {
    let out = tongban(&["catalogue", "check", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = stdout_json(&out);
    assert_eq!(v["valid"], true);
    assert!(v["summary"]["services"].as_u64().unwrap() >= 250, "{v}");
    assert!(v["summary"]["bundles"].as_u64().unwrap() >= 20, "{v}");
    let stages: Vec<&str> =
        v["summary"]["bundles_per_stage"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap()).collect();
    for stage in [
        "birth",
        "education",
        "employment",
        "marriage",
        "housing",
        "travel",
        "medical",
        "assistance",
        "old_age",
        "after_death",
        "market_entry",
        "hiring",
        "tax",
        "operation",
        "construction",
        "exit",
    ] {
        assert!(stages.contains(&stage), "no bundle for stage {stage}: {stages:?}");
    }
}

#[test]
fn a_catalogue_with_a_cycle_an_unknown_prerequisite_and_a_duplicate_is_rejected_naming_all_three() {
    let dir = tempfile::tempdir().unwrap();
    let svc = |id: &str, pre: &str| {
        format!(
            "[[service]]\nid = \"{id}\"\nzh = \"事项\"\nen = \"Item\"\ndepartment = \"部门\"\naudience = \"person\"\nitem_type = \"other\"\ncategory = \"daily\"\nonline = true\ntime_limit_days = 1\nprerequisites = [{pre}]\n\n"
        )
    };
    let text = [svc("p.a", "\"p.b\""), svc("p.b", "\"p.a\""), svc("p.c", "\"p.ghost\""), svc("p.a", "")].concat();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, text).unwrap();
    let out = tongban(&["catalogue", "check", "--json", "--catalogue", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["valid"], false);
    let msgs: Vec<String> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{} {} {}", p["file"], p["field"], p["message"]))
        .collect();
    let has = |s: &str| msgs.iter().any(|m| m.contains(s) && m.contains("broken.toml"));
    assert!(has("dependency cycle"), "{msgs:?}");
    assert!(has("unknown service id \\\"p.ghost\\\""), "{msgs:?}");
    assert!(has("duplicate service id"), "{msgs:?}");
}

fn sha(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn generate(out: &Path, seed: &str) -> serde_json::Value {
    let o = tongban(&[
        "generate",
        "--persons",
        "2000",
        "--enterprises",
        "200",
        "--years",
        "3",
        "--seed",
        seed,
        "--truth-samples",
        "40",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stdout_json(&o)
}

#[test]
fn generating_twice_with_one_seed_gives_byte_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b): (PathBuf, PathBuf) = (dir.path().join("a"), dir.path().join("b"));
    let summary = generate(&a, "7");
    generate(&b, "7");
    for f in ["events.csv", "future.csv", "subjects.csv", "truth.jsonl", "manifest.json"] {
        assert_eq!(sha(&a.join(f)), sha(&b.join(f)), "{f} differs");
    }
    let m = &summary["manifest"];
    assert_eq!(m["seed"], 7);
    assert_eq!(m["persons"], 2000);
    assert!(m["events"].as_u64().unwrap() > 20_000, "{m}");
    // The manifest on disk is the one reported.
    let on_disk: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(&on_disk, m);
    // Truth: one line per subject with a future start, probabilities summing to 1.
    let truth = std::fs::read_to_string(a.join("truth.jsonl")).unwrap();
    assert_eq!(truth.lines().count() as u64, m["truth_subjects"].as_u64().unwrap());
    for line in truth.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let s: f64 = v["next"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).sum();
        assert!((s - 1.0).abs() < 1e-6, "{line}");
    }
    // The generated log reads back without a bad row.
    let o = tongban(&["inspect", "--events", a.join("events.csv").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = stdout_json(&o);
    assert_eq!(v["events"], m["events"]);
    assert_eq!(v["skipped"], 0);
}

#[test]
fn a_malformed_row_fails_with_its_line_and_skip_reports_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hand.csv");
    std::fs::write(
        &file,
        "event_id,subject,service,kind,rating,at,channel\n\
         e1,u1,p.a,applied,,2025-01-02T03:04:05Z,web\n\
         e2,u1,p.b,applied,,not-a-time,web\n\
         e3,u2,p.a,rated,7,2025-01-02T03:04:05Z,app\n\
         e4,u2,p.c,completed,,2025-01-03T03:04:05+08:00,office\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = tongban(&["inspect", "--events", path]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hand.csv:3: field `at`"), "{err}");

    let out = tongban(&["inspect", "--events", path, "--on-bad-row", "skip", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = stdout_json(&out);
    assert_eq!(v["skipped"], 2);
    assert_eq!(v["events"], 2);
    assert_eq!(v["first_skipped"][1]["line"], 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped 2 bad rows of 4"));
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let out = tongban(&["generate", "--out", "/tmp/never", "--cutoff", "2026-02-30"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cutoff \"2026-02-30\": expected YYYY-MM-DD"));
    let out = tongban(&["catalogue", "check", "--catalogue", "/nonexistent/cat.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cat.toml"));
}

#[test]
fn version_names_the_crate_version_and_the_commit() {
    let out = tongban(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = format!("tongban {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected), "{text}");
    let commit = text.trim().trim_start_matches(&expected).trim_end_matches(')');
    assert!(commit == "unknown" || commit.trim_end_matches("-dirty").chars().all(|c| c.is_ascii_hexdigit()), "{text}");
}

#[test]
fn a_config_file_sets_defaults_that_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tongban.toml");
    std::fs::write(&cfg, "catalogue = \"/nonexistent/from-config\"\n").unwrap();
    let out = tongban(&["--config", cfg.to_str().unwrap(), "catalogue", "check"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/from-config"));
    let out = tongban(&["--config", cfg.to_str().unwrap(), "catalogue", "check", "--catalogue", "catalogue"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&cfg, "catalogue = [\n").unwrap();
    let out = tongban(&["--config", cfg.to_str().unwrap(), "catalogue", "check"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid TOML"));
    // A faulty line that holds a secret is located, never quoted.
    std::fs::write(&cfg, "addr = \"127.0.0.1:8080\"\nwebhook_secret = \"s3cr3t-0123456789abcdef\n").unwrap();
    let out = tongban(&["--config", cfg.to_str().unwrap(), "catalogue", "check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("tongban.toml:2:") && err.contains("not valid TOML"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[test]
fn serve_takes_one_place_for_its_state() {
    // Checked before anything is loaded: the model need not exist.
    let base = ["serve", "--model", "/nonexistent/x.model"];
    let out = tongban(&[&base[..], &["--data", "/tmp/tb-data", "--redis", "redis://127.0.0.1:1/"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data /tmp/tb-data and --redis: choose one"), "{err}");
    let out = tongban(&[&base[..], &["--data", "/tmp/tb-data", "--memory"]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data /tmp/tb-data and --memory: choose one"));
    // The config file's key for it is `data_dir`.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tongban.toml");
    std::fs::write(&cfg, "data_dir = \"/tmp/tb-from-config\"\nredis_url = \"redis://127.0.0.1:1/\"\n").unwrap();
    let out = tongban(&["--config", cfg.to_str().unwrap(), "serve", "--model", "/nonexistent/x.model"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data /tmp/tb-from-config and --redis: choose one"), "{err}");
    let help = tongban(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--data <DIR>") && help.contains("everything is lost on exit"), "{help}");
}

#[test]
fn the_generated_files_do_not_depend_on_the_number_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &Path, threads: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_tongban"))
            .args(["generate", "--persons", "1500", "--enterprises", "100", "--truth-samples", "20", "--out"])
            .arg(out)
            .env("RAYON_NUM_THREADS", threads)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (one, three) = (dir.path().join("one"), dir.path().join("three"));
    run(&one, "1");
    run(&three, "3");
    for f in ["events.csv", "future.csv", "subjects.csv", "truth.jsonl", "manifest.json"] {
        assert_eq!(sha(&one.join(f)), sha(&three.join(f)), "{f} differs");
    }
}

#[test]
fn an_empty_negatives_file_is_an_error_not_a_perfect_score() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("lines.txt");
    let lines: String = (0..30).map(|u| format!("u{u} a{} b{} c{}\n", u % 5, u % 7, u % 3)).collect();
    std::fs::write(&events, lines).unwrap();
    let empty = dir.path().join("negatives.txt");
    std::fs::write(&empty, "").unwrap();
    let (e, n) = (events.to_str().unwrap(), empty.to_str().unwrap());
    let args = ["eval", "--events", e, "--format", "lines", "--protocol", "loo-sampled", "--negatives-file", n];
    let out = tongban(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an empty negatives file must fail: {err}");
    assert!(err.contains("no negatives"), "{err}");
}

#[test]
fn the_catalogue_is_built_in_with_the_fingerprint_of_its_folder() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tongban"))
        .args(["catalogue", "check", "--json"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "outside the repository: {}", String::from_utf8_lossy(&out.stderr));
    let builtin = stdout_json(&out);
    let folder = stdout_json(&tongban(&["catalogue", "check", "--json", "--catalogue", "catalogue"]));
    assert_eq!(builtin["summary"]["fingerprint"], folder["summary"]["fingerprint"]);
    assert!(builtin["summary"]["services"].as_u64().unwrap() >= 250);
}

/// Every subcommand, as typed after `tongban`.
const SUBCOMMANDS: [&[&str]; 13] = [
    &["catalogue", "check"],
    &["generate"],
    &["inspect"],
    &["profile"],
    &["train"],
    &["eval"],
    &["tune"],
    &["serve"],
    &["demo"],
    &["worker"],
    &["scan"],
    &["report"],
    &["completions"],
];

#[test]
fn the_bash_completion_script_names_every_subcommand_and_a_bad_shell_is_a_usage_error() {
    let out = tongban(&["completions", "bash"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("_tongban()") && script.contains("complete -F _tongban"), "{script}");
    // Each subcommand is a case of the word after its parent.
    for sub in SUBCOMMANDS {
        assert!(script.contains(&format!("tongban,{})", sub[0])), "no completion of {sub:?}");
    }
    assert!(script.contains("__catalogue,check)"), "no completion of catalogue check");
    // Flags and closed sets of values complete too.
    assert!(script.contains("--metrics-addr") && script.contains("loo-full-repeat"), "flags and values");
    let out = tongban(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for shell in ["bash", "elvish", "fish", "powershell", "zsh"] {
        assert!(err.contains(shell), "{err}");
    }
}

#[test]
fn an_unknown_config_key_is_rejected_with_its_file_line_and_the_known_keys_never_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tongban.toml");
    std::fs::write(
        &cfg,
        "addr = \"0.0.0.0:8080\"\nredis_url = \"redis://:pw@127.0.0.1:1/\"\n\nmx_body_bytes = \"s3cr3t-0123456789abcdef\"\n",
    )
    .unwrap();
    let out = tongban(&["--config", cfg.to_str().unwrap(), "catalogue", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tongban.toml:4: unknown key \"mx_body_bytes\" (did you mean \"max_body_bytes\"?)"), "{err}");
    // The known keys: every flag's variable in any subcommand, the environment-only secrets,
    // `data_dir` for --data; not `config` itself.
    let known = err.split("known keys: ").nth(1).expect("the known keys are listed").trim();
    let known: Vec<&str> = known.split(", ").collect();
    for key in ["addr", "data_dir", "redis_url", "max_body_bytes", "metrics_addr", "portal_keys", "webhook_secret"] {
        assert!(known.contains(&key), "{key} missing from {known:?}");
    }
    assert!(!known.contains(&"config") && !known.contains(&"data"), "{known:?}");
    assert!(!err.contains("s3cr3t") && !err.contains(":pw@"), "a value was shown: {err}");
    // The same file through TONGBAN_CONFIG, for `serve`.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tongban"))
        .args(["serve", "--model", "/nonexistent/x.model"])
        .env("TONGBAN_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("tongban.toml:4: unknown key"), "{out:?}");
}

#[test]
fn every_subcommand_help_shows_examples_whose_flags_and_values_parse() {
    for sub in SUBCOMMANDS {
        let out = tongban(&[sub, &["--help"]].concat());
        assert!(out.status.success(), "{sub:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let examples: Vec<&str> = help
            .split_once("\nExamples:\n")
            .unwrap_or_else(|| panic!("{sub:?} --help shows no examples:\n{help}"))
            .1
            .lines()
            .filter_map(|l| l.strip_prefix("  tongban "))
            .collect();
        assert!(!examples.is_empty(), "{sub:?}: no example line");
        for example in examples {
            // The command line up to a redirection or pipe, then --help: clap checks every
            // flag name and value up to there, and prints the help of the command named.
            let mut args: Vec<&str> = example.split_whitespace().take_while(|w| *w != ">" && *w != "|").collect();
            assert!(args.starts_with(sub), "an example of {sub:?} runs another command: {example}");
            args.push("--help");
            let out = tongban(&args);
            assert!(
                out.status.success(),
                "`tongban {example}` does not parse: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let usage = format!("Usage: tongban {}", sub.join(" "));
            assert!(String::from_utf8_lossy(&out.stdout).contains(&usage), "{example}");
        }
    }
    // The worker's health address is --metrics-addr, with the old name kept as an alias.
    let help = String::from_utf8(tongban(&["worker", "--help"]).stdout).unwrap();
    assert!(help.contains("--metrics-addr <HOST:PORT>") && help.contains("[alias: --health-addr]"), "{help}");
    assert!(tongban(&["worker", "--health-addr", "127.0.0.1:9100", "--help"]).status.success());
}

/// A sequence log of 300 users over 25 items, enough to train and evaluate in a second or two.
fn small_lines_log(dir: &Path) -> PathBuf {
    let file = dir.join("lines.txt");
    let lines: String = (0..300u32)
        .map(|u| {
            let (n, start, step) = (3 + u % 6, u % 10, 1 + u % 3);
            let items: Vec<String> = (0..n).map(|k| format!("i{}", (start + k * step) % 25)).collect();
            format!("u{u} {}\n", items.join(" "))
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    file
}

/// What a progress bar or spinner leaves in a stream: carriage returns, cursor escapes, the bar.
fn has_bar_characters(s: &str) -> bool {
    s.contains('\r') || s.contains("\x1b[") || s.contains("[==") || s.contains("=>") || s.contains("(epochs)")
}

#[test]
fn eval_json_is_pure_json_on_stdout_and_no_bar_reaches_a_stderr_that_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_lines_log(dir.path());
    let args = ["eval", "--events", log.to_str().unwrap(), "--format", "lines", "--protocol", "loo-full", "--k", "1,5"];
    let out = tongban(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = stdout_json(&out);
    assert!(v["report"]["scorers"].as_array().is_some_and(|s| !s.is_empty()), "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!has_bar_characters(&err), "bar characters on a stderr that is a pipe: {err:?}");
    // Nor without --json: a pipe is not a terminal.
    let out = tongban(&args);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!has_bar_characters(&err), "{err:?}");
}

/// Runs the binary under a pseudo-terminal (util-linux `script`): what a person at a terminal
/// sees, stdout and stderr together, escapes included.
fn on_a_terminal(args: &[&str]) -> String {
    let line = std::iter::once(env!("CARGO_BIN_EXE_tongban")).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("util-linux `script` runs (Debian: bsdutils)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn on_a_terminal_reading_training_and_evaluation_show_bars_and_json_silences_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_lines_log(dir.path());
    let args = ["eval", "--events", log.to_str().unwrap(), "--format", "lines", "--protocol", "loo-full", "--k", "1,5"];
    let seen = on_a_terminal(&args);
    for step in ["reading ", "sequence model (epochs)", "ranker: fitting", "evaluating (cases"] {
        assert!(seen.contains(step), "no progress for {step:?} on a terminal: {seen:?}");
    }
    let seen = on_a_terminal(&[&args[..], &["--json"]].concat());
    for step in ["reading ", "sequence model (epochs)", "ranker: fitting", "evaluating (cases"] {
        assert!(!seen.contains(step), "progress for {step:?} under --json: {seen:?}");
    }
    assert!(seen.contains("\"scorers\""), "{seen:?}");
}
