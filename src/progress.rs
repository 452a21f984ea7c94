//! Progress bars on stderr (indicatif), only when stderr is a terminal and the command was not
//! asked for `--json`: a pipe, a log file or a machine reading JSON gets no bar characters.
//!
//! One [`MultiProgress`] for the process, chosen once by [`init`]; every bar is added to it, and
//! log lines (tracing, see [`LogWriter`]) and notes ([`eprintln`]) are written with the bars
//! suspended so that they never cut through one. [`Bars`] is the model crate's
//! [`tongban_model::Progress`] drawn as bars.

use std::io::Write;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The bars of the process: `None` when they are not shown.
static MULTI: OnceLock<Option<MultiProgress>> = OnceLock::new();

/// Chooses once whether bars are drawn: `show` when stderr is a terminal and the command was not
/// asked for JSON. Before `init`, and after `init(false)`, every bar is hidden.
pub fn init(show: bool) {
    let _ = MULTI.set(show.then(MultiProgress::new));
}

fn multi() -> Option<&'static MultiProgress> {
    MULTI.get().and_then(Option::as_ref)
}

/// Whether bars are drawn.
pub fn shown() -> bool {
    multi().is_some()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ")
}

/// A bar of `total` units (`unit` names them: "subjects", "profiles"), hidden unless shown.
pub fn bar(total: u64, what: &str, unit: &str) -> ProgressBar {
    let Some(m) = multi() else { return ProgressBar::hidden() };
    let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
    let template = format!("{{spinner}} {{msg}} [{{bar:40}}] {{pos}}/{{len}}{unit} ({{elapsed}}, eta {{eta}})");
    let b = m.add(ProgressBar::new(total).with_style(style(&template)));
    b.set_message(what.to_owned());
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

/// A spinner naming a step of unknown length, hidden unless shown.
pub fn spinner(what: String) -> ProgressBar {
    let Some(m) = multi() else { return ProgressBar::hidden() };
    let b = m.add(ProgressBar::new_spinner().with_style(style("{spinner} {msg} ({elapsed})")));
    b.set_message(what);
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

/// Runs `f` (which writes to stderr) with the bars out of its way.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match multi() {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

/// `eprintln!` with the bars suspended.
macro_rules! eprintln {
    ($($t:tt)*) => {
        $crate::progress::suspend(|| ::std::eprintln!($($t)*))
    };
}
pub(crate) use eprintln;

/// The writer of the log lines (tracing-subscriber's `MakeWriter`): stderr, bars suspended.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The services' log writer, behind `tracing_appender::non_blocking`: its thread appends the
/// lines here and flushes once the queue is empty, so that under load many lines leave in one
/// write (an access line per request would otherwise be a system call per request). Flushed
/// past 64 KiB too, with the bars suspended.
#[derive(Debug, Default)]
pub struct BufferedLog {
    buf: Vec<u8>,
}

impl Write for BufferedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let r = suspend(|| std::io::stderr().write_all(&self.buf));
            self.buf.clear();
            r?;
        }
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// The model's long steps as bars: one bar per step (a spinner when its length is unknown),
/// replaced by the next step's, cleared at the end.
#[derive(Debug, Default)]
pub struct Bars {
    /// The current step's bar and name. A read lock per `advance` (evaluation calls it from
    /// every rayon thread, once per case): uncontended unless a step starts or ends.
    current: RwLock<Option<(ProgressBar, String)>>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars::default()
    }

    fn replace(&self, next: Option<(ProgressBar, String)>) {
        let old = std::mem::replace(&mut *self.current.write().unwrap_or_else(PoisonError::into_inner), next);
        if let Some((b, _)) = old {
            b.finish_and_clear();
        }
    }
}

impl tongban_model::Progress for Bars {
    fn start(&self, step: &str, total: u64) {
        if !shown() {
            return;
        }
        let b = if total == 0 { spinner(step.to_owned()) } else { bar(total, step, "") };
        self.replace(Some((b, step.to_owned())));
    }
    fn advance(&self, n: u64) {
        if let Some((b, _)) = self.current.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            b.inc(n);
        }
    }
    fn note(&self, text: &str) {
        if let Some((b, step)) = self.current.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            b.set_message(format!("{step}: {text}"));
        }
    }
    fn finish(&self) {
        self.replace(None);
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.replace(None);
    }
}
