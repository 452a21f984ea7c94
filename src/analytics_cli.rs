//! `tongban report journeys|ratings|approvals`: the console's analytics from a log, written as
//! `report.html` and `report.md` (the same renderer as the console's pages).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use tongban_features::analytics::Analytics;
use tongban_features::io::{BadRowPolicy, EventLog, LogFormat};
use tongban_server::console::analytics::{self, Which};
use tongban_server::locale::Locale;

use crate::CatalogueArgs;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// Life-event bundles: funnel of steps, waits between steps, stalls.
    Journeys,
    /// 好差评 per service and department, monthly trend, push feedback.
    Ratings,
    /// Approval time against the legal limit in working days, timed and untimed parts.
    Approvals,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    #[value(name = "zh-CN")]
    ZhCn,
    En,
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Which analytics to write.
    #[arg(value_enum)]
    which: ReportKind,
    /// The event log: native CSV or JSONL (`tongban generate` writes one), services from the
    /// catalogue.
    #[arg(long)]
    events: PathBuf,
    #[command(flatten)]
    catalogue: CatalogueArgs,
    /// Folder for report.html and report.md (created if absent).
    #[arg(long)]
    report: PathBuf,
    /// Language of the report.
    #[arg(long, value_enum, default_value_t = Lang::ZhCn)]
    lang: Lang,
    /// Also print the figures as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ReportArgs) -> Result<std::process::ExitCode> {
    let cat = args.catalogue.load()?;
    let started = Instant::now();
    let Some(format) = LogFormat::from_name("native", &args.events) else {
        bail!("{}: expected a native log (.csv or .jsonl)", args.events.display());
    };
    let (log, _) =
        crate::read_log_with_progress(&args.events, format, BadRowPolicy::Fail, EventLog::for_catalogue(&cat))?;
    let read = started.elapsed();
    if log.events.is_empty() {
        bail!("{}: the log holds no events: nothing to report", args.events.display());
    }
    let folding = Instant::now();
    let mut acc = Analytics::new(&cat);
    for ev in &log.events {
        acc.apply(ev, &cat);
    }
    let folded = folding.elapsed();
    let reporting = Instant::now();
    let reports = acc.reports(&cat, None);
    let reported = reporting.elapsed();
    let (which, empty) = match args.which {
        ReportKind::Ratings => (Which::Ratings, reports.ratings.n == 0),
        ReportKind::Approvals => (Which::Approvals, reports.approvals.applications == 0),
        ReportKind::Journeys => (Which::Journeys, reports.journeys.bundles.is_empty()),
    };
    if empty {
        bail!(
            "{}: {} events, but none that the {} report counts (ratings need `rated` events, approvals `applied` then `completed` or `rejected`, journeys the first step of a catalogue bundle)",
            args.events.display(),
            log.events.len(),
            which.key()
        );
    }
    let l = match args.lang {
        Lang::ZhCn => Locale::ZhCn,
        Lang::En => Locale::En,
    };
    let source = args.events.display().to_string();
    std::fs::create_dir_all(&args.report).with_context(|| format!("creating {}", args.report.display()))?;
    for (file, text) in [
        ("report.html", analytics::report_document(&reports, which, l, &source)),
        ("report.md", analytics::markdown(&reports, which, l, &source)),
    ] {
        let path = args.report.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "{} report of {} events of {} subjects written to {} in {:.1} s (reading {:.1} s, counting {:.2} s, tables {:.3} s)",
        which.key(),
        log.events.len(),
        log.subjects.len(),
        args.report.display(),
        started.elapsed().as_secs_f64(),
        read.as_secs_f64(),
        folded.as_secs_f64(),
        reported.as_secs_f64()
    );
    if args.json {
        let value = match which {
            Which::Ratings => serde_json::to_value(&reports.ratings),
            Which::Approvals => serde_json::to_value(&reports.approvals),
            Which::Journeys => serde_json::to_value(&reports.journeys),
        }?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
