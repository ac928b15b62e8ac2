//! Progress of the long setup steps (download, verify, extract, tools, configure, build, model).
//! On a terminal each step is an `indicatif` bar or spinner; otherwise (a log file, the journal,
//! a CI log) a step prints one plain line when it starts, one every 10 s while it runs
//! (`build: 143/380 objects (40 s)`), and one when it ends, so the log shows where setup is
//! without a flood of redraws.

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How often a step prints its plain line when stderr is not a terminal.
pub(crate) const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// What a bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Bytes, shown as `12.3 MiB`.
    Bytes,
    /// Items with a name (`objects`, `parts`).
    Count(&'static str),
}

/// Where plain lines go (stderr, or a test's buffer).
pub(crate) type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// How a step reports: drawn bars, or plain lines to a sink every `interval`.
#[derive(Clone)]
pub(crate) enum Mode {
    Terminal,
    Plain { interval: Duration, sink: Sink },
}

impl Mode {
    /// Bars when stderr is a terminal, else plain lines on stderr every [`PLAIN_INTERVAL`].
    pub(crate) fn detect() -> Mode {
        if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain {
                interval: PLAIN_INTERVAL,
                sink: Arc::new(|line| eprintln!("{line}")),
            }
        }
    }
}

/// One running step. Dropped without [`Step::finish`] (an error), it clears its bar silently.
pub(crate) struct Step {
    label: &'static str,
    unit: Option<Unit>,
    bar: ProgressBar,
    mode: Mode,
    started: Instant,
    /// Plain mode's thread printing the periodic line, stopped by dropping its sender.
    ticker: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Step {
    /// A step with a known amount of work (`len` may be set later with [`Step::set_length`]).
    pub(crate) fn bar(label: &'static str, len: u64, unit: Unit) -> Step {
        Step::start(label, Some(unit), len, String::new(), Mode::detect())
    }

    /// A step whose amount of work is unknown; `message` says what it is doing.
    pub(crate) fn spinner(label: &'static str, message: impl Into<String>) -> Step {
        Step::start(label, None, 0, message.into(), Mode::detect())
    }

    /// [`Step::bar`] or [`Step::spinner`] (`unit` is `None`) in an explicit mode.
    pub(crate) fn start(
        label: &'static str,
        unit: Option<Unit>,
        len: u64,
        message: String,
        mode: Mode,
    ) -> Step {
        let target = match &mode {
            Mode::Terminal => ProgressDrawTarget::stderr(),
            Mode::Plain { .. } => ProgressDrawTarget::hidden(),
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        bar.set_message(message);
        let mut step = Step {
            label,
            unit,
            bar,
            mode,
            started: Instant::now(),
            ticker: None,
        };
        if let Mode::Plain { interval, sink } = step.mode.clone() {
            sink(&step.line());
            let (stop, stopped) = mpsc::channel::<()>();
            let (bar, started) = (step.bar.clone(), step.started);
            let ticker = std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    sink(&plain_line(label, unit, &bar, started));
                }
            });
            step.ticker = Some((stop, ticker));
        } else {
            step.bar.set_style(style(label, unit));
            step.bar.enable_steady_tick(Duration::from_millis(120));
        }
        step
    }

    /// The plain line for the current state.
    pub(crate) fn line(&self) -> String {
        plain_line(self.label, self.unit, &self.bar, self.started)
    }

    pub(crate) fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    pub(crate) fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    pub(crate) fn set_message(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
    }

    /// Wraps a reader so that every byte read advances the bar, read no faster than the
    /// setup's CPU cap lets this thread work ([`super::runner::paced`]): a step's own work
    /// (extracting, hashing) keeps to the cap as the programs setup starts do.
    pub(crate) fn wrap_read<R: std::io::Read>(&self, reader: R) -> impl std::io::Read {
        super::runner::paced(self.bar.wrap_read(reader))
    }

    /// Ends the step with a closing line: `extract: done in 3.2s`.
    pub(crate) fn finish(mut self, outcome: impl AsRef<str>) {
        let line = format!(
            "{}: {} ({:.1?})",
            self.label,
            outcome.as_ref(),
            self.started.elapsed()
        );
        self.stop_ticker();
        match &self.mode {
            Mode::Terminal => {
                self.bar.finish_and_clear();
                eprintln!("{line}");
            }
            Mode::Plain { sink, .. } => sink(&line),
        }
    }

    fn stop_ticker(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            drop(stop);
            let _ = handle.join();
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        self.stop_ticker();
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

fn style(label: &str, unit: Option<Unit>) -> ProgressStyle {
    let template = match unit {
        None => format!("{{spinner}} {label}: {{wide_msg}} {{elapsed}}"),
        Some(Unit::Bytes) => format!(
            "{label}: [{{bar:30}}] {{bytes}}/{{total_bytes}} {{msg}} {{elapsed}} (eta {{eta}})"
        ),
        Some(Unit::Count(what)) => {
            format!("{label}: [{{bar:30}}] {{pos}}/{{len}} {what} {{msg}} {{elapsed}}")
        }
    };
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-")
}

fn plain_line(label: &str, unit: Option<Unit>, bar: &ProgressBar, started: Instant) -> String {
    let secs = started.elapsed().as_secs();
    let msg = bar.message();
    let pos = bar.position();
    let len = bar.length().unwrap_or(0);
    let mut line = match unit {
        None => format!("{label}: {msg}"),
        Some(Unit::Bytes) if len > 0 => {
            format!("{label}: {}/{}", HumanBytes(pos), HumanBytes(len))
        }
        Some(Unit::Bytes) => format!("{label}: {}", HumanBytes(pos)),
        Some(Unit::Count(what)) if len > 0 => format!("{label}: {pos}/{len} {what}"),
        Some(Unit::Count(what)) => format!("{label}: {pos} {what}"),
    };
    if unit.is_some() && !msg.is_empty() {
        line.push_str(&format!(" {msg}"));
    }
    if secs > 0 {
        line.push_str(&format!(" ({secs} s)"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn collecting(interval: Duration) -> (Mode, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let sink: Sink = Arc::new(move |s| l.lock().unwrap().push(s.to_string()));
        (Mode::Plain { interval, sink }, lines)
    }

    #[test]
    fn plain_mode_prints_start_periodic_and_end_lines() {
        let (mode, lines) = collecting(Duration::from_millis(40));
        let step = Step::start(
            "build",
            Some(Unit::Count("objects")),
            0,
            String::new(),
            mode,
        );
        step.set_length(380);
        step.set_position(143);
        std::thread::sleep(Duration::from_millis(150));
        step.finish("built llama-server");
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines[0], "build: 0 objects", "{lines:?}");
        let periodic: Vec<_> = lines[1..lines.len() - 1].to_vec();
        assert!(periodic.len() >= 2, "{lines:?}");
        assert!(
            periodic.iter().all(|l| l == "build: 143/380 objects"),
            "{lines:?}"
        );
        let last = lines.last().unwrap();
        assert!(last.starts_with("build: built llama-server ("), "{last}");
    }

    #[test]
    fn plain_mode_is_quiet_between_intervals_and_after_drop() {
        let (mode, lines) = collecting(Duration::from_secs(3600));
        let step = Step::start("download", None, 0, "llama-cpp-python==0.3.36".into(), mode);
        for i in 0..1000 {
            step.set_message(format!("line {i}"));
        }
        drop(step);
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines, vec!["download: llama-cpp-python==0.3.36"]);
    }

    #[test]
    fn byte_lines_are_human_readable() {
        let (mode, lines) = collecting(Duration::from_secs(3600));
        let step = Step::start("extract", Some(Unit::Bytes), 3 << 20, String::new(), mode);
        let mut sink = Vec::new();
        std::io::copy(&mut step.wrap_read(&vec![0u8; 1 << 20][..]), &mut sink).unwrap();
        assert_eq!(step.line(), "extract: 1.00 MiB/3.00 MiB");
        step.finish("done");
        assert_eq!(lines.lock().unwrap()[0], "extract: 0 B/3.00 MiB");
    }
}
