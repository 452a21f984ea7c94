//! The examples at the end of each subcommand's `--help`. Every line that starts with
//! `  tongban ` is a real invocation: `tests/cli.rs` runs each of them with `--help` appended
//! (clap checks every flag and value up to it) so that they stay true.

pub const CATALOGUE: &str = "Examples:
  tongban catalogue check
  tongban catalogue check --catalogue catalogue/ --json";

pub const GENERATE: &str = "Examples:
  tongban generate --persons 20000 --enterprises 1000 --years 3 --seed 7 --out data
  tongban generate --persons 2000 --enterprises 200 --format jsonl --truth-samples 0 --out /tmp/small";

pub const INSPECT: &str = "Examples:
  tongban inspect --events data/events.csv
  tongban inspect --events Beauty.txt --format lines --on-bad-row skip --json";

pub const PROFILE: &str = "Examples:
  tongban profile --events data/events.csv --user p0000001
  tongban profile --events data/events.csv --user e000042 --at 2026-01-01T10:00:00+08:00 --json";

pub const TRAIN: &str = "Examples:
  tongban train --events data/events.csv --out data/tongban.model
  tongban train --events data/events.csv --params data/params.json --out data/tuned.model --json";

pub const EVAL: &str = "Examples:
  tongban eval --events data/events.csv --protocol temporal --future data/future.csv --truth data/truth.jsonl --k 1,5,10
  tongban eval --events data/events.csv --protocol temporal --future data/future.csv --model data/tongban.model --record
  tongban eval --events Beauty.txt --format lines --protocol loo-full --k 5,10,20 --report report/beauty";

pub const TUNE: &str = "Examples:
  tongban tune --events data/events.csv --protocol temporal --trials 12 --out data/params.json
  tongban tune --events Beauty.txt --format lines --protocol loo-full --k 10 --trials 20 --seed 3 --out beauty-params.json

Train with the best parameters: `tongban train --params data/params.json ...`.";

pub const SERVE: &str = "Examples:
  tongban serve --model data/tongban.model --import data/events.csv
  tongban serve --model /srv/tongban.model --redis redis://127.0.0.1:6379/0 --addr 0.0.0.0:8080 --drain-secs 10

API keys come from TONGBAN_PORTAL_KEYS, TONGBAN_INGEST_KEYS and TONGBAN_OPERATOR_KEYS only.";

pub const DEMO: &str = "Examples:
  tongban demo
  tongban demo --dir /tmp/tongban-demo --addr 127.0.0.1:9090";

pub const WORKER: &str = "Examples:
  tongban worker --redis redis://127.0.0.1:6379/0 --metrics-addr 0.0.0.0:9100
  tongban worker --redis redis://127.0.0.1:6379/0 --webhook-url http://127.0.0.1:8081/push --scan-every-secs 0

SIGTERM or Ctrl-C: no new claims; the batch in hand finishes (within --shutdown-grace-secs), then exit 0.";

pub const SCAN: &str = "Examples:
  tongban scan --redis redis://127.0.0.1:6379/0";

pub const REPORT: &str = "Examples:
  tongban report journeys --events data/events.csv --report out/journeys
  tongban report ratings --events data/events.csv --report out/ratings --lang en";

pub const COMPLETIONS: &str = "Examples:
  tongban completions bash > ~/.local/share/bash-completion/completions/tongban
  tongban completions zsh > ~/.zfunc/_tongban
  tongban completions fish > ~/.config/fish/completions/tongban.fish";
