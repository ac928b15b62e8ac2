//! What serde cannot check: values in range, keys that must agree, names that must exist. Each
//! section is one step; the first fault found is reported with its key and the file that set it.

use super::{Config, ConfigError};

/// A key at fault and what to do about it.
type Fault = (String, String);

/// One section's checks.
type Step = fn(&Config) -> Result<(), Fault>;

fn fault(key: impl Into<String>, message: impl Into<String>) -> Fault {
    (key.into(), message.into())
}

/// Whether `n` is at least `min` (`unit` after the minimum in the message: " tokens").
fn at_least(key: impl Into<String>, n: usize, min: usize, unit: &str) -> Result<(), Fault> {
    if n < min {
        return Err(fault(
            key,
            format!("{n} is too small; use at least {min}{unit}"),
        ));
    }
    Ok(())
}

impl Config {
    /// Runs every step in order; `file_of` names the file that last set a key.
    pub(super) fn validate(&self, file_of: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let steps: [Step; 8] = [
            top_level,
            supervisor,
            governor,
            proxy,
            labels,
            upstreams,
            slo_and_metrics,
            profiles,
        ];
        for step in steps {
            step(self).map_err(|(key, message)| ConfigError::Key {
                file: file_of(&key),
                key,
                message,
            })?;
        }
        Ok(())
    }
}

fn top_level(c: &Config) -> Result<(), Fault> {
    if !c.profiles.contains_key(&c.default_profile) {
        return Err(fault(
            "default_profile",
            format!(
                "no profile named `{}` (known: {})",
                c.default_profile,
                c.profile_names()
            ),
        ));
    }
    let ctx = c.backend.ctx_size as usize;
    at_least("backend.ctx_size", ctx, 64, " tokens")?;
    if c.api_keys.iter().any(|k| k.trim().is_empty()) {
        return Err(fault(
            "api_keys",
            "an API key is empty; remove it or give it a value",
        ));
    }
    Ok(())
}

fn supervisor(c: &Config) -> Result<(), Fault> {
    let s = &c.supervisor;
    for (key, d) in [
        ("supervisor.startup_timeout", s.startup_timeout),
        ("supervisor.ready_poll_interval", s.ready_poll_interval),
        ("supervisor.probe_interval", s.probe_interval),
        ("supervisor.probe_timeout", s.probe_timeout),
        ("supervisor.backoff_initial", s.backoff_initial),
        ("supervisor.failed_retry_interval", s.failed_retry_interval),
        ("supervisor.file_poll_interval", s.file_poll_interval),
        ("supervisor.first_token_timeout", s.first_token_timeout),
    ] {
        if d.is_zero() {
            return Err(fault(key, "must be longer than zero"));
        }
    }
    if s.backoff_max < s.backoff_initial {
        return Err(fault(
            "supervisor.backoff_max",
            "must be at least supervisor.backoff_initial",
        ));
    }
    if s.backend_log_burst == 0 {
        return Err(fault("supervisor.backend_log_burst", "must be at least 1"));
    }
    if !(s.backend_log_lines_per_sec.is_finite() && s.backend_log_lines_per_sec > 0.0) {
        return Err(fault(
            "supervisor.backend_log_lines_per_sec",
            format!(
                "{} is not a rate; use a number of lines per second above 0",
                s.backend_log_lines_per_sec
            ),
        ));
    }
    if s.liveness_failures == 0 {
        return Err(fault("supervisor.liveness_failures", "must be at least 1"));
    }
    Ok(())
}

fn governor(c: &Config) -> Result<(), Fault> {
    c.governor
        .validate()
        .map_err(|message| fault("governor", message))
}

fn proxy(c: &Config) -> Result<(), Fault> {
    let p = &c.proxy;
    if p.max_body_bytes == 0 {
        return Err(fault("proxy.max_body_bytes", "must be more than 0"));
    }
    for (key, d) in [
        ("proxy.header_read_timeout", p.header_read_timeout),
        ("proxy.body_read_timeout", p.body_read_timeout),
    ] {
        if d.is_zero() {
            return Err(fault(key, "must be longer than zero"));
        }
    }
    for (key, n, min) in [
        ("proxy.max_tokens", p.max_tokens as usize, 1),
        ("proxy.max_header_bytes", p.max_header_bytes, 1024),
        ("proxy.max_headers", p.max_headers, 8),
        ("proxy.max_connections", p.max_connections, 1),
    ] {
        at_least(key, n, min, "")?;
    }
    Ok(())
}

fn labels(c: &Config) -> Result<(), Fault> {
    for (label, value) in &c.labels {
        let valid = label
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid || label.is_empty() || label.starts_with("__") || label == "version" {
            return Err(fault(
                format!("labels.{label}"),
                "is not a usable Prometheus label name; use letters, digits and `_`, not starting with a digit or `__`, and not `version` (the supervisor adds it)",
            ));
        }
        if value.is_empty() {
            return Err(fault(
                format!("labels.{label}"),
                "is empty; give it a value or remove it",
            ));
        }
    }
    Ok(())
}

fn upstreams(c: &Config) -> Result<(), Fault> {
    crate::upstream::Upstreams::build(
        &c.upstreams,
        &c.spill,
        crate::upstream::metrics::UpstreamMetrics::default(),
    )
    .map(drop)
    .map_err(|e| fault("upstreams", e.to_string()))
}

fn slo_and_metrics(c: &Config) -> Result<(), Fault> {
    if let Some((key, message)) = c.slo.invalid() {
        return Err(fault(format!("slo.{key}"), message));
    }
    if c.metrics.textfile_interval.is_zero() {
        return Err(fault(
            "metrics.textfile_interval",
            "must be longer than zero",
        ));
    }
    Ok(())
}

fn profiles(c: &Config) -> Result<(), Fault> {
    for (name, p) in &c.profiles {
        let key = |k: &str| format!("profiles.{name}.{k}");
        for (k, v) in [
            ("threads", p.threads),
            ("threads_batch", p.threads_batch),
            ("slots", p.slots),
            ("max_tokens", p.max_tokens.map(|n| n as usize)),
        ] {
            if v == Some(0) {
                return Err(fault(key(k), "must be at least 1"));
            }
        }
        if let Some(ctx) = p.ctx_size {
            at_least(key("ctx_size"), ctx as usize, 64, " tokens")?;
        }
        if let Some(period) = p.period {
            c.governor
                .check_profile_period(period)
                .map_err(|message| fault(key("period"), message))?;
        }
    }
    Ok(())
}
