//! `sentinel-supervisor status`: asks a running supervisor for its `/status` (the typed
//! [`StatusReport`]) and prints a summary a person can read, or the report itself with
//! `--json`. Exit 0 when the backend is ready, 1 when it is not (starting, unhealthy, in
//! backoff, failed), 2 when no status could be had (nothing listening, a key needed).

use crate::cli::StatusArgs;
use crate::status::StatusReport;
use crate::supervisor::state::State;
use std::process::ExitCode;
use std::time::Duration;

/// How long the supervisor may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What `status` is told: the command line over the configuration's `listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusOptions {
    /// The supervisor's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    pub json: bool,
    pub api_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusError {
    #[error("no supervisor at {url} (is it running? pass --url)")]
    NotListening { url: String },
    #[error("the supervisor at {url} did not answer within {TIMEOUT:?} (is it stopped, e.g. by SIGSTOP?)")]
    Timeout { url: String },
    #[error("the supervisor at {url} wants an API key: set SENTINEL_API_KEY or pass --api-key")]
    KeyNeeded { url: String },
    #[error("the supervisor at {url} refused the API key (check SENTINEL_API_KEY or --api-key)")]
    KeyRefused { url: String },
    #[error("cannot ask {url} for its status: {message}")]
    Request { url: String, message: String },
    #[error(
        "{url} answered {code} without a status (is it a sentinel-supervisor? pass --url): {body}"
    )]
    NotAStatus {
        url: String,
        code: u16,
        body: String,
    },
}

/// The command line over the configuration (loaded only when `--url` is not given).
pub(crate) fn options(args: &StatusArgs) -> anyhow::Result<StatusOptions> {
    let url = if let Some(url) = &args.url {
        url.trim_end_matches('/').to_string()
    } else {
        let config = super::load_config(&args.config)?;
        let health = crate::notify::health_url(config.listen);
        health.trim_end_matches("/health").to_string()
    };
    Ok(StatusOptions {
        url,
        json: args.json,
        api_key: args.key.api_key.clone().filter(|k| !k.trim().is_empty()),
    })
}

pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let options = options(&args)?;
    let report = fetch(&options).await?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(if report.state == State::Ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `GET URL/status`, typed.
pub(crate) async fn fetch(options: &StatusOptions) -> Result<StatusReport, StatusError> {
    let url = options.url.clone();
    let failed = |e: reqwest::Error| StatusError::Request {
        url: options.url.clone(),
        message: e.to_string(),
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(failed)?;
    let mut request = client.get(format!("{url}/status"));
    if let Some(key) = &options.api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| {
        if e.is_connect() {
            StatusError::NotListening { url: url.clone() }
        } else if e.is_timeout() {
            StatusError::Timeout { url: url.clone() }
        } else {
            failed(e)
        }
    })?;
    let code = response.status().as_u16();
    if code == 401 {
        return Err(match options.api_key {
            Some(_) => StatusError::KeyRefused { url },
            None => StatusError::KeyNeeded { url },
        });
    }
    let body = response.text().await.map_err(failed)?;
    serde_json::from_str(&body).map_err(|_| StatusError::NotAStatus {
        url,
        code,
        body: body.chars().take(200).collect(),
    })
}

/// The report as a few aligned lines.
pub(crate) fn summary(r: &StatusReport) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let uptime = humantime::format_duration(Duration::from_secs(r.uptime_s.max(0.0) as u64));
    let state = match &r.state {
        State::Starting { attempt } => format!("starting (attempt {attempt})"),
        State::Unhealthy { failed_probes } => {
            format!("unhealthy ({failed_probes} liveness probes failed)")
        }
        State::Backoff { delay_ms, .. } => format!("backoff (next start in {delay_ms} ms)"),
        other => other.name().to_string(),
    };
    lines.push(("state", format!("{state}, up {uptime}")));
    match &r.state {
        State::Backoff { reason, .. } => lines.push(("reason", reason.clone())),
        State::Failed {
            reason,
            next_retry_in_s,
            ..
        } => {
            lines.push(("reason", reason.clone()));
            if let Some(s) = next_retry_in_s {
                lines.push((
                    "next try",
                    format!("in {s} s (or at once when the model or config file changes)"),
                ));
            }
        }
        _ => {}
    }
    lines.push(("profile", r.resolved_profile.summary()));
    lines.push(("governor", governor_line(r)));
    if let Some(sit) = &r.situation {
        lines.extend(situation_lines(sit));
    }
    let last = r
        .last_exit
        .as_deref()
        .map_or(String::new(), |e| format!(" (last: {e})"));
    lines.push(("restarts", format!("{}{last}", r.restarts)));
    lines.push((
        "requests",
        format!("{} in flight, {} queued", r.in_flight, r.queued),
    ));
    lines.push(("model", format!("{} ({})", r.model_id, r.model)));
    if let Some(b) = &r.backend {
        lines.push((
            "backend",
            format!("pid {}, port {}, launch {}", b.pid, b.port, b.generation),
        ));
    }
    for up in &r.upstreams {
        let breaker = match (up.breaker.as_str(), up.retry_in_s) {
            ("open", Some(s)) => format!("open (probe in {s:.1} s)"),
            (state, _) => state.to_string(),
        };
        lines.push((
            "upstream",
            format!(
                "{} {}: breaker {breaker}, {} failures in a row, {}/{} in flight",
                up.name, up.url, up.consecutive_failures, up.in_flight, up.max_in_flight
            ),
        ));
    }
    let mut out = String::new();
    for (key, value) in lines {
        out.push_str(&format!("{:<10}{value}\n", format!("{key}:")));
    }
    if let State::Failed { last_lines, .. } = &r.state {
        if !last_lines.is_empty() {
            out.push_str("last lines of the backend:\n");
            for line in last_lines {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    out
}

/// `machine: battery, user idle for 240s (interrupts), thermal normal` and
/// `budget: 0.50 cores, on battery, for 31s`.
fn situation_lines(s: &crate::situation::SituationReport) -> [(&'static str, String); 2] {
    use crate::situation::{PowerSource, Presence, Thermal};
    let power = match s.power {
        PowerSource::Mains => "mains",
        PowerSource::Battery => "battery",
    };
    let source = serde_json::to_value(s.presence_source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let presence = match (s.presence, s.idle_for_s) {
        (Presence::Idle, Some(idle)) => format!("user idle for {idle:.0}s ({source})"),
        (Presence::Idle, None) => format!("user idle ({source})"),
        (Presence::Active, _) => format!("user active ({source})"),
    };
    let thermal = match (&s.thermal, &s.thermal_detail) {
        (Thermal::Pressure, Some(d)) => format!("thermal pressure: {d}"),
        (Thermal::Pressure, None) => "thermal pressure".to_string(),
        (Thermal::Normal, _) => "thermal normal".to_string(),
    };
    let budget = match (s.paused, s.budget_cpus) {
        (true, _) => "paused (new requests wait)".to_string(),
        (false, Some(c)) => format!("{c:.2} cores"),
        (false, None) => "unlimited".to_string(),
    };
    [
        ("machine", format!("{power}, {presence}, {thermal}")),
        (
            "budget",
            format!("{budget}, {}, for {:.0}s", s.reason, s.since_s),
        ),
    ]
}

fn governor_line(r: &StatusReport) -> String {
    let Some(g) = &r.governor else {
        return "not running (no backend)".to_string();
    };
    use crate::governor::cgroup::CgroupVersion;
    use crate::governor::GovernorState;
    let method = match g.cgroup {
        Some(CgroupVersion::V1) => format!("{} (cgroup v1)", g.method),
        Some(CgroupVersion::V2) => format!("{} (cgroup v2)", g.method),
        None => g.method.to_string(),
    };
    let budget = g
        .budget_cpus
        .map_or("unlimited".to_string(), |b| format!("{b:.2} cores"));
    let measured = g
        .measured_cpus
        .map_or("not measured yet".to_string(), |m| format!("{m:.2} cores"));
    let state = match g.state {
        GovernorState::Throttling => "throttling",
        GovernorState::Resting => "resting (nothing in flight)",
        GovernorState::Capped => "capped by the kernel",
        GovernorState::Off => "not limiting",
        GovernorState::Stopped => "stopped",
    };
    format!("{method}, budget {budget}, measured {measured}, {state}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_state_profile_governor_restarts_and_model() {
        let mut r = crate::status::example();
        r.state = State::Ready;
        let text = summary(&r);
        for want in [
            "state:    ready, up 12s",
            "profile:  balanced: threads 1, threads_batch 2, cpus 0.50 cores",
            "governor: signals, budget 0.50 cores, measured 0.51 cores, throttling",
            "restarts: 1 (last: llama-server exited (signal: 9 (SIGKILL)))",
            "requests: 1 in flight, 0 queued",
            "model:    m (/models/m.gguf)",
            "backend:  pid 1234, port 40000, launch 2",
            "machine:  battery, user idle for 240s (interrupts), thermal normal",
            "budget:   0.50 cores, on battery, for 31s",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }

    #[test]
    fn a_failed_backend_shows_the_reason_and_its_last_lines() {
        let r = StatusReport {
            state: State::Failed {
                reason: "crash loop: the backend failed 3 times".into(),
                last_lines: vec!["error: failed to load model".into()],
                next_retry_at: None,
                next_retry_in_s: Some(300),
            },
            backend: None,
            governor: None,
            ..crate::status::example()
        };
        let text = summary(&r);
        assert!(text.starts_with("state:    failed, up 12s\n"), "{text}");
        assert!(
            text.contains("upstream: central https://llm.example.internal/v1: breaker open (probe in 4.5 s), 3 failures in a row, 0/8 in flight"),
            "{text}"
        );
        assert!(
            text.contains("reason:   crash loop: the backend failed 3 times"),
            "{text}"
        );
        assert!(
            text.contains("governor: not running (no backend)"),
            "{text}"
        );
        assert!(
            text.ends_with("last lines of the backend:\n  error: failed to load model\n"),
            "{text}"
        );
    }

    #[test]
    fn the_default_url_is_the_configured_listen_address() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:9555\"\napi_keys = [\"k\"]\n").unwrap();
        let args = StatusArgs {
            config: crate::cli::ConfigArgs { config: Some(file) },
            url: None,
            json: false,
            key: crate::cli::ApiKeyArgs {
                api_key: Some("  ".into()),
            },
        };
        let o = options(&args).unwrap();
        assert_eq!(o.url, "http://127.0.0.1:9555");
        assert_eq!(o.api_key, None, "a blank key is no key");
        let o = options(&StatusArgs {
            url: Some("http://h:1/".into()),
            ..args
        })
        .unwrap();
        assert_eq!(o.url, "http://h:1");
    }
}
