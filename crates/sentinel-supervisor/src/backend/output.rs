//! The backend's output: each line llama-server prints is kept in a short tail for error
//! reports and forwarded to the log (target `backend`) at the level the line itself says
//! (llama-server's `E`/`W` markers, or the words "error"/"warning"), everything else at debug.
//! Forwarding is rate-limited by a token bucket shared by stdout and stderr, so a crashing
//! child printing thousands of lines a second yields a bounded number of log lines plus a
//! "suppressed N lines" line; the tail always keeps the newest lines, suppressed or not.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::time::Instant;
use tracing::Level;

/// How many of the child's last output lines are kept for error reports.
pub(crate) const TAIL_LINES: usize = 40;

/// How many of the child's first output lines are kept.
pub(crate) const HEAD_LINES: usize = 40;

/// How often, at most, a "suppressed N lines" line is written while lines are being dropped.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The first and the last lines the child printed (the first say how it started: which CPU
/// variant ggml loaded, for one).
#[derive(Clone, Default, Debug)]
pub(crate) struct LogTail(Arc<Mutex<Lines>>);

#[derive(Default, Debug)]
struct Lines {
    head: Vec<String>,
    tail: VecDeque<String>,
    pushed: usize,
}

impl LogTail {
    fn lines(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn push(&self, line: String) {
        let mut lines = self.lines();
        lines.pushed += 1;
        if lines.head.len() < HEAD_LINES {
            lines.head.push(line.clone());
        }
        if lines.tail.len() == TAIL_LINES {
            lines.tail.pop_front();
        }
        lines.tail.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub(crate) fn last(&self, n: usize) -> Vec<String> {
        let lines = self.lines();
        let q = &lines.tail;
        q.iter().skip(q.len().saturating_sub(n)).cloned().collect()
    }

    /// Every line kept, in order: the first [`HEAD_LINES`], then the last [`TAIL_LINES`]
    /// (each line once where the two overlap).
    pub(crate) fn kept(&self) -> Vec<String> {
        let lines = self.lines();
        let overlap = (lines.head.len() + lines.tail.len()).saturating_sub(lines.pushed);
        lines
            .head
            .iter()
            .chain(lines.tail.iter().skip(overlap))
            .cloned()
            .collect()
    }

    /// The last lines that look like errors, or else the last lines.
    pub(crate) fn errors(&self, n: usize) -> Vec<String> {
        let all = self.last(TAIL_LINES);
        let errs: Vec<String> = all
            .iter()
            .filter(|l| classify(l) == Level::ERROR || mentions(l, &["error", "fail", "abort"]))
            .cloned()
            .collect();
        let pick = if errs.is_empty() { all } else { errs };
        pick[pick.len().saturating_sub(n)..].to_vec()
    }
}

/// How many backend lines may reach the log: `burst` at once, then `lines_per_sec`
/// (`[supervisor] backend_log_burst` and `backend_log_lines_per_sec`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OutputLimit {
    pub burst: u32,
    pub lines_per_sec: f64,
}

/// The level a backend line is logged at: error, warn or debug. llama-server writes
/// `0.03.208.633 W load: ...` (elapsed time, then one of `D`/`I`/`W`/`E`); lines without that
/// shape (its argument errors, other programs) count as errors when they say
/// "error"/"fatal"/"abort" and as warnings when they say "warn".
pub(crate) fn classify(line: &str) -> Level {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or("");
    let marker = if is_timestamp(first) {
        words.next()
    } else {
        Some(first)
    };
    match marker {
        Some("E") => return Level::ERROR,
        Some("W") => return Level::WARN,
        Some("I" | "D" | "T") if is_timestamp(first) => return Level::DEBUG,
        _ => {}
    }
    if mentions(line, &["error", "fatal", "abort", "panic"]) {
        Level::ERROR
    } else if mentions(line, &["warn"]) {
        Level::WARN
    } else {
        Level::DEBUG
    }
}

/// Whether `line` says one of `words` (given in lower case), in any case.
fn mentions(line: &str, words: &[&str]) -> bool {
    let lower = line.to_ascii_lowercase();
    words.iter().any(|w| lower.contains(w))
}

/// `0.03.208.633`: digits and dots, starting with a digit.
fn is_timestamp(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_digit())
        && word.contains('.')
        && word.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// A token bucket over forwarded lines, counting what it drops.
#[derive(Debug)]
pub(crate) struct Bucket {
    limit: OutputLimit,
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
    /// When the oldest unreported suppression happened.
    suppressed_since: Option<Instant>,
}

impl Bucket {
    pub(crate) fn new(limit: OutputLimit, now: Instant) -> Bucket {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            refilled: now,
            suppressed: 0,
            suppressed_since: None,
        }
    }

    /// Whether one more line may be forwarded now; a refused line is counted.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.limit.lines_per_sec).min(f64::from(self.limit.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppressed += 1;
            self.suppressed_since.get_or_insert(now);
            false
        }
    }

    /// The count of lines dropped since the last report, once a report is due (or at once when
    /// `force`, e.g. when the stream ends). Taking it resets the count.
    pub(crate) fn take_report(&mut self, now: Instant, force: bool) -> Option<u64> {
        let since = self.suppressed_since?;
        if !force && now.saturating_duration_since(since) < REPORT_EVERY {
            return None;
        }
        self.suppressed_since = None;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// When the pending report falls due, if lines are being dropped.
    pub(crate) fn report_due(&self) -> Option<Instant> {
        self.suppressed_since.map(|since| since + REPORT_EVERY)
    }
}

/// One bucket per child, shared by its stdout and stderr forwarders.
#[derive(Debug, Clone)]
pub(crate) struct Limiter(Arc<Mutex<Bucket>>);

impl Limiter {
    pub(crate) fn new(limit: OutputLimit) -> Limiter {
        Limiter(Arc::new(Mutex::new(Bucket::new(limit, Instant::now()))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Bucket) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Forwards `stream` line by line until it closes: every line to `tail`, and to the log as
/// far as `limiter` allows, with a "suppressed N lines" line at most once a second while it
/// drops lines and once more at the end.
pub(crate) async fn forward(
    stream: impl AsyncRead + Unpin,
    pid: i32,
    stream_name: &'static str,
    tail: LogTail,
    limiter: Limiter,
) {
    let mut lines = BufReader::new(stream).lines();
    loop {
        let next = match limiter.with(|b| b.report_due()) {
            // `next_line` is cancel-safe: a partly read line stays buffered.
            Some(due) => tokio::select! {
                line = lines.next_line() => Some(line),
                _ = tokio::time::sleep_until(due) => None,
            },
            None => Some(lines.next_line().await),
        };
        let line = match next {
            None => {
                report(pid, limiter.with(|b| b.take_report(Instant::now(), false)));
                continue;
            }
            Some(Ok(Some(line))) => line,
            Some(Ok(None) | Err(_)) => break,
        };
        let level = classify(&line);
        if enabled(level) {
            let now = Instant::now();
            let (admitted, pending) = limiter.with(|b| (b.admit(now), b.take_report(now, false)));
            report(pid, pending);
            if admitted {
                emit(level, pid, stream_name, &line);
            }
        }
        tail.push(line);
    }
    report(pid, limiter.with(|b| b.take_report(Instant::now(), true)));
}

/// Whether a line at `level` would be written at all (lines the filter hides use no tokens).
fn enabled(level: Level) -> bool {
    match level {
        Level::ERROR => tracing::enabled!(target: "backend", Level::ERROR),
        Level::WARN => tracing::enabled!(target: "backend", Level::WARN),
        _ => tracing::enabled!(target: "backend", Level::DEBUG),
    }
}

fn emit(level: Level, pid: i32, stream: &'static str, line: &str) {
    match level {
        Level::ERROR => tracing::error!(target: "backend", pid, stream, "{line}"),
        Level::WARN => tracing::warn!(target: "backend", pid, stream, "{line}"),
        _ => tracing::debug!(target: "backend", pid, stream, "{line}"),
    }
}

fn report(pid: i32, suppressed: Option<u64>) {
    if let Some(n) = suppressed.filter(|&n| n > 0) {
        tracing::warn!(
            target: "backend",
            pid,
            suppressed = n,
            "backend output rate-limited: suppressed {n} lines (the last {TAIL_LINES} are kept \
             for error reports; raise [supervisor] backend_log_lines_per_sec to see more)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_and_last_lines_are_kept_once_each() {
        let t = LogTail::default();
        for i in 0..3 {
            t.push(format!("line {i}"));
        }
        assert_eq!(t.kept(), ["line 0", "line 1", "line 2"]);
        for i in 3..200 {
            t.push(format!("line {i}"));
        }
        let kept = t.kept();
        assert_eq!(kept.len(), HEAD_LINES + TAIL_LINES);
        assert_eq!(kept[0], "line 0");
        assert_eq!(kept[HEAD_LINES - 1], format!("line {}", HEAD_LINES - 1));
        assert_eq!(kept.last().unwrap(), "line 199");
    }

    #[test]
    fn tail_keeps_last_lines_and_prefers_errors() {
        let t = LogTail::default();
        for i in 0..50 {
            t.push(format!("line {i}"));
        }
        assert_eq!(t.last(2), vec!["line 48", "line 49"]);
        assert_eq!(t.last(100).len(), TAIL_LINES);
        assert_eq!(t.errors(1), vec!["line 49"]);
        t.push("error: failed to load model".into());
        t.push("main: exiting".into());
        assert_eq!(t.errors(3), vec!["error: failed to load model"]);
        t.push("0.00.005.480 E gguf_init_from_reader: invalid magic characters".into());
        assert_eq!(
            t.errors(1),
            vec!["0.00.005.480 E gguf_init_from_reader: invalid magic characters"]
        );
    }

    #[test]
    fn llama_server_markers_decide_the_level() {
        // Lines as the pinned llama-server prints them.
        for (line, want) in [
            (
                "0.00.001.575 I srv  llama_server: initializing ...",
                Level::DEBUG,
            ),
            (
                "0.03.208.633 W load: control-looking token:    212 '</s>' was not control-type",
                Level::WARN,
            ),
            (
                "0.00.031.825 E gguf_init_from_file: failed to open GGUF file '/x.gguf'",
                Level::ERROR,
            ),
            // An info line mentioning an error is still info.
            (
                "0.12.659.989 I slot print_timing: id  3 | error rate 0",
                Level::DEBUG,
            ),
            ("error: invalid argument: --bogus", Level::ERROR),
            ("warning: no usable GPU found", Level::WARN),
            ("main: exiting due to model loading error", Level::ERROR),
            ("fake: listening on 127.0.0.1:1234", Level::DEBUG),
            ("", Level::DEBUG),
        ] {
            assert_eq!(classify(line), want, "{line:?}");
        }
    }

    fn limit() -> OutputLimit {
        OutputLimit {
            burst: 50,
            lines_per_sec: 20.0,
        }
    }

    #[test]
    fn a_flood_gets_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = Bucket::new(limit(), start);
        // 10 000 lines within the same instant: only the burst passes.
        let passed = (0..10_000).filter(|_| b.admit(start)).count();
        assert_eq!(passed, 50);
        assert_eq!(b.take_report(start, false), None, "reports wait a second");
        // Two seconds of flood at 1000 lines/s: 40 more pass.
        let mut passed = 0;
        for ms in 1..=2000u64 {
            if b.admit(start + Duration::from_millis(ms)) {
                passed += 1;
            }
        }
        assert!((39..=41).contains(&passed), "{passed}");
        let later = start + Duration::from_millis(2000);
        assert_eq!(
            b.take_report(later, false),
            Some(10_000 - 50 + 2000 - passed)
        );
        assert_eq!(b.take_report(later, true), None, "the count was taken");
    }

    #[test]
    fn a_quiet_child_loses_nothing_and_the_bucket_refills() {
        let start = Instant::now();
        let mut b = Bucket::new(limit(), start);
        for i in 0..600u64 {
            // 10 lines a second, under the rate.
            assert!(b.admit(start + Duration::from_millis(i * 100)), "line {i}");
        }
        assert_eq!(b.report_due(), None);
        assert_eq!(b.take_report(start + Duration::from_secs(60), true), None);
    }

    /// Log lines written while `f` runs, captured by a subscriber on this thread.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_flood_is_bounded_counted_and_the_tail_keeps_the_newest_lines() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("backend=debug")
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let mut text: String = (0..5000).map(|i| format!("flood line {i}\n")).collect();
        text.push_str("0.00.031.825 E srv load_model: failed to load model\n");
        let tail = LogTail::default();
        let limiter = Limiter::new(OutputLimit {
            burst: 5,
            lines_per_sec: 1.0,
        });
        forward(text.as_bytes(), 7, "stderr", tail.clone(), limiter).await;

        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let forwarded = log.lines().filter(|l| l.contains("flood line")).count();
        // The burst, plus at most one token refilled while reading.
        assert!(
            (5..=6).contains(&forwarded),
            "{forwarded} lines forwarded:\n{log}"
        );
        let reported: u64 = log
            .lines()
            .filter_map(|l| l.split("suppressed=").nth(1))
            .map(|n| n.split_whitespace().next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(reported, 5001 - forwarded as u64, "{log}");
        assert!(log.contains("suppressed "), "{log}");
        // The error at the end was dropped from the log but is the first thing the tail reports.
        assert_eq!(
            tail.errors(1),
            vec!["0.00.031.825 E srv load_model: failed to load model"]
        );
        assert_eq!(tail.last(2)[0], "flood line 4999");
    }
}
