//! llama-server's own metrics, re-exported: each scrape of our `/metrics` reads the backend's
//! (llama-server runs with `--metrics`, see [`crate::backend::launch`]) with a short timeout and
//! re-emits its counters and gauges under one prefix, [`PREFIX`].
//!
//! llama-server's names (`llamacpp:prompt_tokens_total`) are made `promtool`-clean: the
//! `llamacpp:` namespace becomes the prefix (a colon is reserved for recording rules), any
//! other character outside `[a-zA-Z0-9_]` becomes `_`, and a "counter" whose name does not end
//! in `_total` (`llamacpp:n_tokens_max`, a high-water mark) is re-exported as the gauge it is.
//! Histograms and summaries (llama-server has none) are left out.

use crate::supervisor::state::BackendInfo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::collections::HashMap;

/// Every re-exported name starts with this.
pub(crate) const PREFIX: &str = "sentinel_backend_llamacpp_";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScrapeError {
    #[error("cannot read llama-server's metrics at {url}: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("llama-server's metrics at {url} answered {status} (it serves them only when started with --metrics)")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
}

/// Reads and renames the backend's metrics (the client carries the timeout).
pub(crate) async fn scrape(
    client: &reqwest::Client,
    backend: &BackendInfo,
) -> Result<Families, ScrapeError> {
    let url = format!("{}/metrics", backend.base_url);
    let request = |source| ScrapeError::Request {
        url: url.clone(),
        source,
    };
    let resp = client
        .get(&url)
        .bearer_auth(backend.api_key.expose())
        .header(reqwest::header::CONNECTION, "close")
        .send()
        .await
        .map_err(request)?;
    if !resp.status().is_success() {
        return Err(ScrapeError::Status {
            url: url.clone(),
            status: resp.status(),
        });
    }
    let text = resp.text().await.map_err(request)?;
    Ok(parse(&text))
}

/// A sample's labels, as `(name, value)` pairs.
type Labels = Vec<(String, String)>;

/// One re-exported metric: the name as written before the encoder's `_total` of a counter.
#[derive(Clone, Debug, PartialEq)]
struct Family {
    name: String,
    help: String,
    /// `Counter` or `Gauge`.
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

/// The renamed metrics of one scrape, written by the registry of that scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Families(Vec<Family>);

impl Families {
    /// The names as they will be exposed.
    #[cfg(test)]
    pub(crate) fn exposed_names(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|f| {
                if f.kind == MetricType::Counter {
                    format!("{}_total", f.name)
                } else {
                    f.name.clone()
                }
            })
            .collect()
    }
}

/// The exposed name of llama-server's `name` and how it is re-exported (`None`: left out).
fn rename(name: &str, declared: &str) -> Option<(String, MetricType)> {
    let base = name.rsplit(':').next().unwrap_or(name);
    let base: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let base = base.trim_matches('_');
    if base.is_empty() {
        return None;
    }
    match declared {
        "counter" => Some(match base.strip_suffix("_total") {
            Some(stem) => (format!("{PREFIX}{stem}"), MetricType::Counter),
            None => (format!("{PREFIX}{base}"), MetricType::Gauge),
        }),
        "gauge" | "untyped" => Some((format!("{PREFIX}{base}"), MetricType::Gauge)),
        _ => None,
    }
}

/// Undoes the text format's escapes (`\\`, `\"`, `\n`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Splits a sample line into its name, labels and value (`None` for a line it cannot read).
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, rest) = line.split_at(name_end);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None => (Vec::new(), rest),
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Reads `key="value", ...}` (the opening brace already taken) into labels, and returns what
/// follows the closing brace.
fn parse_labels(mut rest: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let end = closing_quote(after)?;
        labels.push((key.trim().to_string(), unescape(&after[..end])));
        rest = &after[end + 1..];
    }
}

/// Where a label value ends: the first quote not escaped by a backslash.
fn closing_quote(value: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, '"') => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// The declared type of the family a sample belongs to: its own `# TYPE`, that of the
/// histogram or summary whose `_bucket`, `_sum` or `_count` it is, or `untyped`.
fn declared_kind<'a>(kinds: &HashMap<&str, &'a str>, sample: &str) -> &'a str {
    if let Some(kind) = kinds.get(sample) {
        return kind;
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| sample.strip_suffix(suffix))
        .filter_map(|family| kinds.get(family).copied())
        .find(|kind| matches!(*kind, "histogram" | "summary"))
        .unwrap_or("untyped")
}

/// Reads a text exposition and renames what it re-exports.
pub(crate) fn parse(text: &str) -> Families {
    let mut help: HashMap<&str, String> = HashMap::new();
    let mut kinds: HashMap<&str, &str> = HashMap::new();
    let mut samples: Vec<(&str, Labels, f64)> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), text) => {
                    help.insert(name, unescape(text.unwrap_or("")));
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    kinds.insert(name, kind.trim());
                }
                _ => {}
            }
        } else if let Some(sample) = parse_sample(line) {
            samples.push(sample);
        } else {
            tracing::debug!(line, "unreadable line in llama-server's metrics");
        }
    }
    let mut families: Vec<Family> = Vec::new();
    let mut index: HashMap<&str, Option<usize>> = HashMap::new();
    for (name, labels, value) in samples {
        let slot = *index.entry(name).or_insert_with(|| {
            let declared = declared_kind(&kinds, name);
            let (exposed, kind) = rename(name, declared)?;
            if families.iter().any(|f| f.name == exposed) {
                tracing::debug!(
                    name,
                    exposed,
                    "two llama-server metrics share one name; keeping the first"
                );
                return None;
            }
            families.push(Family {
                name: exposed,
                help: help
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| format!("llama-server's {name}")),
                kind,
                samples: Vec::new(),
            });
            Some(families.len() - 1)
        });
        if let Some(i) = slot {
            families[i].samples.push((labels, value));
        }
    }
    Families(families)
}

impl Collector for Families {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        for family in &self.0 {
            let mut metric =
                enc.encode_descriptor(&family.name, &family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                if family.kind == MetricType::Counter {
                    ConstCounter::new(*value).encode(sample)?;
                } else {
                    ConstGauge::new(*value).encode(sample)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Part of llama-server's `/metrics` (b8194), as it wrote it.
    const LLAMA: &str = "\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 30
# HELP llamacpp:prompt_seconds_total Total time spent processing prompts
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 0.72711
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 29
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 41.2592
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
";

    fn encode(families: Families) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(families));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn renames_under_the_prefix_with_promtool_clean_names() {
        let families = parse(LLAMA);
        assert_eq!(
            families.exposed_names(),
            [
                "sentinel_backend_llamacpp_prompt_tokens_total",
                "sentinel_backend_llamacpp_prompt_seconds_total",
                "sentinel_backend_llamacpp_n_tokens_max",
                "sentinel_backend_llamacpp_prompt_tokens_seconds",
                "sentinel_backend_llamacpp_requests_processing",
            ]
        );
        let text = encode(families);
        for want in [
            "# TYPE sentinel_backend_llamacpp_prompt_tokens_total counter\n",
            "sentinel_backend_llamacpp_prompt_tokens_total 30",
            "# HELP sentinel_backend_llamacpp_prompt_seconds_total Total time spent processing prompts\n",
            "# TYPE sentinel_backend_llamacpp_n_tokens_max gauge\n",
            "sentinel_backend_llamacpp_n_tokens_max 29",
            "sentinel_backend_llamacpp_prompt_tokens_seconds 41.2592\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert!(!text.contains(':'), "{text}");
        assert!(!text.contains("_total_total"), "{text}");
    }

    #[test]
    fn labels_escapes_and_odd_lines() {
        let text = "\
# TYPE x:requests_total counter
x:requests_total{slot=\"0\",note=\"a \\\"quoted\\\" \\\\ value\"} 3 1700000000000
x:requests_total{slot=\"1\"} 4
# TYPE x:latency histogram
x:latency_bucket{le=\"1\"} 1
x:latency_sum 0.5
x:latency_count 1
undeclared-name 2
garbage line here
# a comment
";
        let families = parse(text);
        assert_eq!(
            families.exposed_names(),
            [
                "sentinel_backend_llamacpp_requests_total",
                "sentinel_backend_llamacpp_undeclared_name"
            ]
        );
        let out = encode(families);
        assert!(
            out.contains(
                "sentinel_backend_llamacpp_requests_total{slot=\"0\",note=\"a \\\"quoted\\\" \\\\ value\"} 3"
            ),
            "{out}"
        );
        assert!(out.contains("sentinel_backend_llamacpp_requests_total{slot=\"1\"} 4"));
        assert!(!out.contains("latency"), "histograms are left out: {out}");
    }

    #[test]
    fn empty_or_foreign_text_yields_nothing() {
        assert_eq!(parse(""), Families::default());
        assert_eq!(
            parse("<html>no</html>\n").exposed_names(),
            Vec::<String>::new()
        );
    }
}
