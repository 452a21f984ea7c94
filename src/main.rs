//! `tongban`: the command line. Wiring only: parse flags, call the crates, print results.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use indicatif::ProgressBar;
use serde::Serialize;

use tongban_features::catalogue::{Catalogue, CatalogueError};
use tongban_features::io::{read_log_into, BadRowPolicy, LogFormat};
use tongban_features::synth::{self, GenParams, GenSink, GenSummary, GENERATOR_VERSION};
use tongban_features::time::Date;

mod analytics_cli;
mod config_file;
mod examples;
mod model_cli;
mod profile;
mod progress;
mod report;
mod serve;

use progress::eprintln;

// mimalloc: the push and HTTP paths allocate many small strings; glibc malloc took about a
// tenth of their CPU time (perf, BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "tongban",
    version = tongban_server::VERSION_LINE,
    about = "Recommendation and proactive push engine for one-stop government portals"
)]
struct Cli {
    /// A TOML file of settings (`addr = "0.0.0.0:8080"`, `redis_url = "redis://..."`, ...): each key
    /// stands for its `TONGBAN_*` variable. Flags override the environment, which overrides it.
    #[arg(long, global = true, env = "TONGBAN_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines on stderr: text (for people; colour only on a terminal) or json (one object
    /// per line, for log shippers). `RUST_LOG` sets the levels.
    #[arg(long, global = true, env = "TONGBAN_LOG_FORMAT", value_enum, default_value_t = LogStyle::Text)]
    log_format: LogStyle,
    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogStyle {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect the service catalogue.
    #[command(after_help = examples::CATALOGUE)]
    Catalogue {
        #[command(subcommand)]
        command: CatalogueCommand,
    },
    /// Simulate service histories of a Dalian population (events, future, truth, subjects).
    #[command(after_help = examples::GENERATE)]
    Generate(GenerateArgs),
    /// Read an event log and report what it holds (rows, events, skipped rows).
    #[command(after_help = examples::INSPECT)]
    Inspect(InspectArgs),
    /// Show one subject's profile: recent events, bundle progress and top candidate features.
    #[command(after_help = examples::PROFILE)]
    Profile(ProfileArgs),
    /// Train a model on an event log and write the model file.
    #[command(after_help = examples::TRAIN)]
    Train(model_cli::TrainArgs),
    /// Evaluate the model beside the baselines (popularity, Markov, item-kNN) and the oracle.
    #[command(after_help = examples::EVAL)]
    Eval(model_cli::EvalArgs),
    /// Random search of model parameters on the validation split; writes the best and the log.
    #[command(after_help = examples::TUNE)]
    Tune(model_cli::TuneArgs),
    /// Serve the HTTP API (the durable embedded store in --data, Redis with --redis, or the
    /// volatile --memory for tests).
    #[command(after_help = examples::SERVE)]
    Serve(serve::ServeArgs),
    /// Generate a small history if absent, train, and serve it on 127.0.0.1:8080 (durable store
    /// in DIR/state, with the push worker in process).
    #[command(after_help = examples::DEMO)]
    Demo(serve::DemoArgs),
    /// Deliver queued pushes from Redis (inbox, log, webhook) and run the periodic deadline scan.
    #[command(after_help = examples::WORKER)]
    Worker(serve::WorkerArgs),
    /// Scan every profile in Redis once for deadlines and renewals coming due; enqueue pushes.
    #[command(after_help = examples::SCAN)]
    Scan(serve::ScanArgs),
    /// Operators' analytics from a log (journeys, ratings or approvals): report.html and report.md.
    #[command(after_help = examples::REPORT)]
    Report(analytics_cli::ReportArgs),
    /// Print a shell completion script on stdout.
    #[command(after_help = examples::COMPLETIONS)]
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Whether the command was asked for JSON on stdout (then no progress bar is drawn).
    fn json(&self) -> bool {
        match self {
            Command::Catalogue { command: CatalogueCommand::Check { json, .. } } => *json,
            Command::Generate(a) => a.json,
            Command::Inspect(a) => a.json,
            Command::Profile(a) => a.json,
            Command::Train(a) => a.json,
            Command::Eval(a) => a.json,
            Command::Report(a) => a.json,
            // `scan` prints its counts as JSON on stdout whatever happens; its spinner is on
            // stderr, for the person at the terminal.
            Command::Tune(_)
            | Command::Serve(_)
            | Command::Demo(_)
            | Command::Worker(_)
            | Command::Scan(_)
            | Command::Completions { .. } => false,
        }
    }
}

#[derive(Subcommand, Debug)]
enum CatalogueCommand {
    /// Validate the catalogue; print counts, or every problem with its file and field.
    #[command(after_help = examples::CATALOGUE)]
    Check {
        #[command(flatten)]
        catalogue: CatalogueArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct CatalogueArgs {
    /// Catalogue file or folder of *.toml files [default: the built-in Dalian catalogue].
    #[arg(long, env = "TONGBAN_CATALOGUE")]
    catalogue: Option<PathBuf>,
    /// Extend the catalogue with generated long-tail services up to this many (scale tests).
    #[arg(long)]
    long_tail: Option<usize>,
}

impl CatalogueArgs {
    pub fn load(&self) -> Result<Catalogue> {
        let cat = load_catalogue(self.catalogue.as_deref())?;
        Ok(match self.long_tail {
            Some(n) => cat.with_long_tail(n),
            None => cat,
        })
    }
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// Persons to simulate (residents of Dalian, hukou local or not).
    #[arg(long, default_value_t = 10_000)]
    persons: u64,
    /// Enterprises to simulate.
    #[arg(long, default_value_t = 500)]
    enterprises: u64,
    /// Years of history before the cut-off.
    #[arg(long, default_value_t = 3)]
    years: u32,
    /// Seed: the same seed and arguments give byte-identical files.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Cut-off date (YYYY-MM-DD, Asia/Shanghai): events.csv ends, future.csv begins.
    #[arg(long, default_value = "2026-01-01")]
    cutoff: String,
    /// Days of future after the cut-off.
    #[arg(long, default_value_t = 90)]
    horizon_days: u32,
    /// Monte Carlo draws per subject for truth.jsonl.
    #[arg(long, default_value_t = 200)]
    truth_samples: u32,
    /// Output format of events.csv / future.csv (jsonl writes .jsonl files).
    #[arg(long, value_enum, default_value_t = OutFormat::Csv)]
    format: OutFormat,
    /// Output folder (created if absent).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    catalogue: CatalogueArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OutFormat {
    Csv,
    Jsonl,
}

/// The formats an event log is read in.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFormat {
    Native,
    Csv,
    Jsonl,
    Pairs,
    Lines,
    Tsv,
}

impl InFormat {
    pub fn name(self) -> &'static str {
        match self {
            InFormat::Native => "native",
            InFormat::Csv => "csv",
            InFormat::Jsonl => "jsonl",
            InFormat::Pairs => "pairs",
            InFormat::Lines => "lines",
            InFormat::Tsv => "tsv",
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnBadRow {
    Fail,
    Skip,
}

#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Event log file.
    #[arg(long)]
    events: PathBuf,
    /// native (CSV or JSONL by extension), pairs (`user item`), lines (`user item1 item2 ...`),
    /// tsv (`user item rating timestamp` with a header).
    #[arg(long, value_enum, default_value_t = InFormat::Native)]
    format: InFormat,
    /// What to do with a row that cannot be read: fail (default) or skip and count it.
    #[arg(long, value_enum, default_value_t = OnBadRow::Fail)]
    on_bad_row: OnBadRow,
}

impl LogArgs {
    fn policy(&self) -> BadRowPolicy {
        match self.on_bad_row {
            OnBadRow::Fail => BadRowPolicy::Fail,
            OnBadRow::Skip => BadRowPolicy::Skip,
        }
    }

    fn read(&self) -> Result<(tongban_features::io::EventLog, tongban_features::io::ReadReport)> {
        self.read_into(tongban_features::io::EventLog::default())
    }

    fn read_into(
        &self,
        base: tongban_features::io::EventLog,
    ) -> Result<(tongban_features::io::EventLog, tongban_features::io::ReadReport)> {
        let format = LogFormat::from_name(self.format.name(), &self.events).expect("every InFormat is a format");
        let (log, report) = read_log_with_progress(&self.events, format, self.policy(), base)?;
        if report.skipped > 0 {
            eprintln!(
                "warning: skipped {} bad rows of {} in {} (first: line {}: {})",
                report.skipped,
                report.rows,
                self.events.display(),
                report.first_skipped[0].line,
                report.first_skipped[0].reason
            );
        }
        Ok((log, report))
    }
}

#[derive(clap::Args, Debug)]
struct ProfileArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Catalogue file or folder; without it, domain features (bundles, deadlines) are absent.
    #[arg(long)]
    catalogue: Option<PathBuf>,
    /// subjects.csv from `tongban generate`, for segments.
    #[arg(long)]
    subjects: Option<PathBuf>,
    /// The subject id.
    #[arg(long)]
    user: String,
    /// The time to compute features at (RFC 3339); default: just after the log's last event.
    #[arg(long)]
    at: Option<String>,
    /// Candidates to show.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    if let Err(e) = config_file::apply(&Cli::command()) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    // Bars only for people: on a terminal, and never when the output is JSON for a program.
    progress::init(std::io::stderr().is_terminal() && !cli.command.json());
    // Warnings, progress of long steps (training epochs) and the server's lines (start-up, one
    // access line per request: target `tongban_server::access`) on stderr; RUST_LOG overrides
    // the levels (`RUST_LOG=warn` turns the access log off). The lines are written with the
    // bars suspended.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,tongban_model=info,tongban_server=info".into());
    // The services (serve, worker) write their lines from a thread of their own, batched
    // (`progress::BufferedLog`); never dropped: a full queue makes the caller wait. The guard
    // flushes what is left when `main` returns.
    let service = matches!(cli.command, Command::Serve(_) | Command::Worker(_));
    let (writer, _flush_at_exit) = if service {
        let (w, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("tongban-log")
            .finish(progress::BufferedLog::default());
        (tracing_subscriber::fmt::writer::BoxMakeWriter::new(w), Some(guard))
    } else {
        (tracing_subscriber::fmt::writer::BoxMakeWriter::new(progress::LogWriter), None)
    };
    let logs = tracing_subscriber::fmt().with_writer(writer).with_env_filter(filter);
    match cli.log_format {
        LogStyle::Text => {
            use std::io::IsTerminal;
            logs.with_ansi(std::io::stderr().is_terminal()).init();
        }
        LogStyle::Json => logs.json().with_current_span(false).init(),
    }
    let result = match cli.command {
        Command::Catalogue { command: CatalogueCommand::Check { catalogue, json } } => {
            catalogue_check(&catalogue, json)
        }
        Command::Generate(args) => generate(&args),
        Command::Inspect(args) => inspect(&args),
        Command::Profile(args) => profile::run(&args),
        Command::Train(args) => model_cli::train(&args),
        Command::Eval(args) => model_cli::eval(&args),
        Command::Tune(args) => model_cli::tune(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Demo(args) => serve::demo(&args),
        Command::Worker(args) => serve::worker(&args),
        Command::Scan(args) => serve::scan(&args),
        Command::Report(args) => analytics_cli::run(&args),
        Command::Completions { shell } => completions(shell),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The completion script for `shell` on stdout. Written whole from a buffer, so that a closed
/// pipe (`| head`) is an ordinary end rather than clap_complete's panic on a failed write.
fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tongban", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing the completion script")),
    }
}

/// Reads a log with a spinner naming the file.
pub fn read_log_with_progress(
    path: &std::path::Path,
    format: LogFormat,
    policy: BadRowPolicy,
    base: tongban_features::io::EventLog,
) -> Result<(tongban_features::io::EventLog, tongban_features::io::ReadReport)> {
    let bar = progress::spinner(format!("reading {}", path.display()));
    let read = read_log_into(path, format, policy, base);
    bar.finish_and_clear();
    Ok(read?)
}

pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A catalogue from a file or folder, or the built-in one.
pub fn load_catalogue(path: Option<&std::path::Path>) -> Result<Catalogue> {
    match path {
        Some(p) => {
            Catalogue::load(p).with_context(|| format!("loading the catalogue from {} (set --catalogue)", p.display()))
        }
        None => Ok(Catalogue::builtin()),
    }
}

fn catalogue_check(args: &CatalogueArgs, json: bool) -> Result<ExitCode> {
    let name = args.catalogue.as_ref().map_or("(built in)".to_owned(), |p| p.display().to_string());
    let loaded = match &args.catalogue {
        Some(p) => Catalogue::load(p),
        None => Ok(Catalogue::builtin()),
    };
    match loaded {
        Ok(cat) => {
            let cat = match args.long_tail {
                Some(n) => cat.with_long_tail(n),
                None => cat,
            };
            let s = cat.summary();
            if json {
                print_json(&serde_json::json!({ "valid": true, "summary": s }))?;
            } else {
                println!("catalogue {name} is valid (fingerprint {})", s.fingerprint);
                println!(
                    "  services: {} ({} for persons, {} for enterprises)",
                    s.services, s.person_services, s.enterprise_services
                );
                println!("  bundles:  {}", s.bundles);
                println!("  {:<14} {:>8} {:>8}", "stage", "services", "bundles");
                for (stage, n) in &s.services_per_stage {
                    let b = s.bundles_per_stage.iter().find(|x| &x.0 == stage).map_or(0, |x| x.1);
                    println!("  {stage:<14} {n:>8} {b:>8}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(CatalogueError::Invalid(problems)) => {
            if json {
                print_json(&serde_json::json!({ "valid": false, "problems": problems }))?;
            } else {
                eprintln!("catalogue {name} is invalid ({} problems):", problems.len());
                for p in &problems {
                    eprintln!("  {p}");
                }
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// Files of one generation run, written as the chunks arrive.
struct DirSink {
    events: BufWriter<File>,
    future: BufWriter<File>,
    subjects: BufWriter<File>,
    truth: BufWriter<File>,
    bar: ProgressBar,
}

impl GenSink for DirSink {
    fn events(&mut self, text: &str) -> std::io::Result<()> {
        self.events.write_all(text.as_bytes())
    }
    fn future(&mut self, text: &str) -> std::io::Result<()> {
        self.future.write_all(text.as_bytes())
    }
    fn subjects(&mut self, text: &str) -> std::io::Result<()> {
        self.subjects.write_all(text.as_bytes())
    }
    fn truth(&mut self, text: &str) -> std::io::Result<()> {
        self.truth.write_all(text.as_bytes())
    }
    fn progress(&mut self, done: u64, _total: u64) {
        self.bar.set_position(done);
    }
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

#[derive(Serialize)]
struct Manifest<'a> {
    generator_version: u32,
    seed: u64,
    years: u32,
    horizon_days: u32,
    truth_samples: u32,
    format: &'a str,
    catalogue_fingerprint: &'a str,
    catalogue_services: usize,
    #[serde(flatten)]
    summary: &'a GenSummary,
    files: [&'a str; 5],
}

fn generate(args: &GenerateArgs) -> Result<ExitCode> {
    let cat = args.catalogue.load()?;
    let cutoff =
        Date::parse(&args.cutoff).with_context(|| format!("--cutoff {:?}: expected YYYY-MM-DD", args.cutoff))?;
    if args.years == 0 || args.years > 50 {
        bail!("--years {}: expected 1 to 50", args.years);
    }
    if args.persons + args.enterprises == 0 {
        bail!("nothing to simulate: --persons and --enterprises are both 0");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let ext = match args.format {
        OutFormat::Csv => "csv",
        OutFormat::Jsonl => "jsonl",
    };
    let params = GenParams {
        persons: args.persons,
        enterprises: args.enterprises,
        years: args.years,
        seed: args.seed,
        cutoff,
        horizon_days: args.horizon_days,
        truth_samples: args.truth_samples,
        jsonl: args.format == OutFormat::Jsonl,
    };
    let total = args.persons + args.enterprises;
    let bar = progress::bar(total, "simulating", "subjects");
    let events_name = format!("events.{ext}");
    let future_name = format!("future.{ext}");
    let mut sink = DirSink {
        events: create(&args.out.join(&events_name))?,
        future: create(&args.out.join(&future_name))?,
        subjects: create(&args.out.join("subjects.csv"))?,
        truth: create(&args.out.join("truth.jsonl"))?,
        bar,
    };
    let started = std::time::Instant::now();
    let summary = synth::generate(&cat, &params, &mut sink).context("writing the generated files")?;
    for w in [&mut sink.events, &mut sink.future, &mut sink.subjects, &mut sink.truth] {
        w.flush().context("flushing the generated files")?;
    }
    sink.bar.finish_and_clear();
    let manifest = Manifest {
        generator_version: GENERATOR_VERSION,
        seed: args.seed,
        years: args.years,
        horizon_days: args.horizon_days,
        truth_samples: args.truth_samples,
        format: ext,
        catalogue_fingerprint: cat.fingerprint(),
        catalogue_services: cat.services().len(),
        summary: &summary,
        files: [&events_name, &future_name, "subjects.csv", "truth.jsonl", "manifest.json"],
    };
    let mut m = create(&args.out.join("manifest.json"))?;
    serde_json::to_writer_pretty(&mut m, &manifest)?;
    m.write_all(b"\n")?;
    m.flush()?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        print_json(&serde_json::json!({
            "out": args.out,
            "manifest": manifest,
            "seconds": secs,
            "subjects_per_second": total as f64 / secs,
            "events_per_second": (summary.events + summary.future_events) as f64 / secs,
        }))?;
    } else {
        eprintln!(
            "generated {} subjects, {} events before {} and {} after, {} truth lines, in {:.1} s -> {}",
            total,
            summary.events,
            summary.cutoff,
            summary.future_events,
            summary.truth_subjects,
            secs,
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(args: &InspectArgs) -> Result<ExitCode> {
    let (log, report) = args.log.read()?;
    let out = serde_json::json!({
        "file": args.log.events,
        "rows": report.rows,
        "events": report.events,
        "skipped": report.skipped,
        "first_skipped": report.first_skipped,
        "subjects": log.subjects.len(),
        "services": log.services.len(),
    });
    if args.json {
        print_json(&out)?;
    } else {
        println!(
            "{}: {} rows, {} events, {} skipped; {} subjects, {} services",
            args.log.events.display(),
            report.rows,
            report.events,
            report.skipped,
            log.subjects.len(),
            log.services.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
