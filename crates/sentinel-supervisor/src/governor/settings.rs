//! What the governor is told: the `[governor]` config section (how to limit) and the per-launch
//! settings resolved from a profile (how much).

use super::controller::Feedback;
use super::priority::Priority;
use crate::units::{Cores, Share};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the CPU budget is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A kernel cgroup cap when a writable cgroup exists, the duty cycle otherwise (and the duty
    /// cycle whenever the adaptive mode is on, since it changes the budget every second).
    Auto,
    /// SIGSTOP/SIGCONT duty cycle (every platform; throttles only while requests are in flight).
    Signals,
    /// Kernel cap (cgroup v2 `cpu.max` or v1 CFS quota); fails when no writable cgroup exists.
    Cgroup,
    /// No limiting (thread sizing and priority still apply).
    Off,
}

/// The serde name (`auto`, `signals`, ...).
impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.serialize(f)
    }
}

/// The `[governor]` section of `config.toml`. Its defaults are the shipped file's (the user's
/// file is merged over it key by key), so every field is always present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorConfig {
    /// The method of profiles without their own `method`.
    pub method: Method,
    /// Duty-cycle period of the signal limiter (10-20 ms), for profiles without their own
    /// `period`.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// CFS period of the cgroup cap.
    #[serde(with = "humantime_serde")]
    pub cgroup_period: Duration,
    /// Wall time over which measured CPU is averaged for one feedback step.
    #[serde(with = "humantime_serde")]
    pub feedback_window: Duration,
    /// Integral gain of the feedback (per window, per unit of relative error).
    pub feedback_gain: f64,
    /// Bound of the feedback correction, as a share of the feed-forward (0.3 = +-30 %).
    pub max_correction: f64,
    /// Correction at start; negative starts below the budget.
    pub initial_correction: f64,
    /// Adaptive mode: lowest budget, as a share of the profile's budget.
    pub adaptive_floor: f64,
    /// Adaptive mode: how fast the budget grows back once the machine is quiet, in cores/s.
    pub adaptive_recover_per_sec: f64,
}

impl GovernorConfig {
    /// The feedback tuning of the duty controller.
    pub(crate) fn feedback(&self) -> Feedback {
        Feedback {
            window: self.feedback_window,
            gain: self.feedback_gain,
            max_correction: self.max_correction,
            initial_correction: self.initial_correction,
        }
    }

    /// Checks ranges; the message names the key to fix.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !period_in_range(self.period) {
            return Err("governor.period must be between 1ms and 1s (20ms is a good value)".into());
        }
        if !period_in_range(self.cgroup_period) {
            return Err(
                "governor.cgroup_period must be between 1ms and 1s (10ms is a good value)".into(),
            );
        }
        if self.feedback_window < self.period * 5 {
            return Err(
                "governor.feedback_window must be at least 5 periods (1s is a good value)".into(),
            );
        }
        if !(0.0..=2.0).contains(&self.feedback_gain) {
            return Err(
                "governor.feedback_gain must be between 0 and 2 (0.5 is a good value)".into(),
            );
        }
        if !(0.0..=0.9).contains(&self.max_correction)
            || self.initial_correction.abs() > self.max_correction
        {
            return Err(
                "governor.max_correction must be in 0..0.9 and |initial_correction| <= max_correction"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&self.adaptive_floor) || self.adaptive_recover_per_sec <= 0.0 {
            return Err(
                "governor.adaptive_floor must be in 0..1 and adaptive_recover_per_sec above 0"
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks a profile's own duty-cycle period (`profiles.NAME.period`): within 1 ms..1 s and
    /// at most a fifth of `governor.feedback_window`. The message says what to write; the
    /// caller names the key and the file.
    pub(crate) fn check_profile_period(&self, period: Duration) -> Result<(), String> {
        if !period_in_range(period) {
            return Err(format!(
                "{period:?} is out of range; use 1ms to 1s (2ms-20ms are good values)"
            ));
        }
        if self.feedback_window < period * 5 {
            return Err(format!(
                "{period:?} is longer than a fifth of governor.feedback_window ({:?}); use a \
                 shorter period or a longer window",
                self.feedback_window
            ));
        }
        Ok(())
    }
}

/// The range every period (duty cycle, cgroup) must be in: 1 ms..=1 s.
fn period_in_range(period: Duration) -> bool {
    (Duration::from_millis(1)..=Duration::from_secs(1)).contains(&period)
}

/// What one launch of the backend asks of the governor (resolved from the profile).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GovernorSettings {
    /// The budget in cores; `None` = unlimited.
    pub cpus: Option<Cores>,
    /// Threads the child keeps busy (llama-server's `--threads`); `None` follows the child's
    /// thread count (for `limit` on a program we know nothing about).
    pub threads: Option<usize>,
    /// The scheduling class set at spawn (reported in `/status`; applied by the spawner through
    /// [`super::priority::apply_to_current_process`]).
    pub priority: Priority,
    /// Adaptive mode: keep total CPU under this share (0.0..=1.0) of the cores this process may
    /// use (see [`super::adaptive::AdaptiveParams::target`]).
    pub adaptive: Option<Share>,
    /// The host the profile was resolved against (detected once by the command).
    pub host: crate::host::Host,
    /// How the budget is enforced: the profile's `method`, else `governor.method` (see
    /// [`crate::profile::Resolved::method`]). The governor reads it here, never from
    /// [`GovernorConfig::method`].
    pub method: Method,
    /// The duty-cycle period of the signal limiter: the profile's `period`, else
    /// `governor.period`.
    pub period: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    fn with_user(text: &str) -> Result<GovernorConfig, ConfigError> {
        Ok(Config::from_layers(Some((Path::new("mine.toml"), text)))?.governor)
    }

    #[test]
    fn shipped_section_is_valid() {
        let shipped = Config::builtin().unwrap().governor;
        shipped.validate().unwrap();
        assert_eq!(shipped.method, Method::Auto);
        assert_eq!(shipped.feedback().window, Duration::from_secs(1));
    }

    #[test]
    fn partial_section_keeps_the_shipped_values() {
        let c = with_user("[governor]\nmethod = \"signals\"\nperiod = \"10ms\"").unwrap();
        assert_eq!(c.method, Method::Signals);
        assert_eq!(c.period, Duration::from_millis(10));
        assert_eq!(
            c.cgroup_period,
            Config::builtin().unwrap().governor.cgroup_period
        );
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let err = with_user("[governor]\nperod = \"10ms\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field") && err.contains("mine.toml"),
            "{err}"
        );
        let err = with_user("[governor]\nmethod = \"fast\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant") && err.contains("governor.method"),
            "{err}"
        );
        let err = with_user("[governor]\nperiod = \"5s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("governor.period"), "{err}");
        let err = with_user("[governor]\nmax_correction = 0.05")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_correction"), "{err}");
    }
}
