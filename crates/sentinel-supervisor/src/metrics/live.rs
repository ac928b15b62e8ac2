//! The readings of one scrape, each taken from its one owner at scrape time (the lifecycle
//! state and admission counts from the `/status` report, the governor's snapshot, the duty
//! cycle's stopped time, CPU clocks and memory from [`crate::meter`]) and written as gauges and
//! counters, a group of related metrics per step.

use crate::governor::GovernorSnapshot;
use crate::meter;
use crate::status::StatusReport;
use crate::supervisor::state::StateName;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::time::Duration;

/// Every backend state, in the order of [`state_index`].
const STATES: [StateName; 7] = [
    StateName::Starting,
    StateName::Ready,
    StateName::Unhealthy,
    StateName::Backoff,
    StateName::Failed,
    StateName::Stopping,
    StateName::Stopped,
];

/// A state's place in [`STATES`]; being a `match`, a new state fails to compile here until it
/// is listed.
const fn state_index(state: StateName) -> usize {
    match state {
        StateName::Starting => 0,
        StateName::Ready => 1,
        StateName::Unhealthy => 2,
        StateName::Backoff => 3,
        StateName::Failed => 4,
        StateName::Stopping => 5,
        StateName::Stopped => 6,
    }
}

/// What one scrape reads: the report's part (state, admission, the governor's snapshot, the
/// situation), taken when the scrape starts; the CPU clocks and memory are read from
/// [`crate::meter`] as they are written. `None` = cannot be read now (no backend, no governor,
/// or the reading failed): the sample is left out, not faked as 0.
#[derive(Debug)]
pub(super) struct Live {
    state: StateName,
    in_flight: usize,
    queued: usize,
    governor: Option<GovernorSnapshot>,
    /// The running backend's pid.
    backend: Option<i32>,
    throttled: Duration,
    online_cpus: usize,
    /// Whether llama-server's `/metrics` answered (`None` without a backend).
    llamacpp_up: Option<bool>,
    /// The machine's situation (`None`: not followed, `situation.enabled = false`).
    situation: Option<crate::situation::SituationReport>,
}

impl Live {
    pub(super) fn read(
        report: &StatusReport,
        llamacpp_up: Option<bool>,
        online_cpus: usize,
        throttled: Duration,
    ) -> Live {
        Live {
            state: report.state.name(),
            in_flight: report.in_flight,
            queued: report.queued,
            governor: report.governor.clone(),
            backend: report.backend.as_ref().map(|b| b.pid),
            throttled,
            online_cpus,
            llamacpp_up,
            situation: report.situation.clone(),
        }
    }
}

/// Writes one unlabelled gauge; nothing for `None` (a reading that cannot be taken now).
fn gauge<N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<N>,
) -> std::fmt::Result {
    let Some(value) = value else {
        return Ok(());
    };
    let gauge = ConstGauge::new(value);
    gauge.encode(enc.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// Writes one unlabelled counter of seconds; `name` without `_total`, which the encoder adds;
/// nothing for `None`.
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<Duration>,
) -> std::fmt::Result {
    let Some(value) = value else {
        return Ok(());
    };
    let counter = ConstCounter::new(value.as_secs_f64());
    counter.encode(enc.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Live {
    /// `sentinel_backend_state`: 1 for the current state, 0 for the others.
    fn state(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = enc.encode_descriptor(
            "sentinel_backend_state",
            "The backend's lifecycle state: 1 for the current one, 0 for the others.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for state in STATES {
            let labels = [("state", state.as_str())];
            let value = i64::from(state_index(state) == state_index(self.state));
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Requests in flight and queued, and the budget in force.
    fn admission(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        gauge(
            enc,
            "sentinel_requests_in_flight",
            "Requests holding an admission slot (the number a drain waits for).",
            Some(self.in_flight as i64),
        )?;
        gauge(
            enc,
            "sentinel_requests_queued",
            "Requests waiting for an admission slot.",
            Some(self.queued as i64),
        )?;
        gauge(
            enc,
            "sentinel_governor_budget_cores",
            "The CPU budget in force for the backend, in cores.",
            self.governor.as_ref().and_then(|g| g.budget_cpus),
        )
    }

    /// The laptop's situation, when it is followed.
    fn situation(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        use crate::situation::{PowerSource, Presence, Thermal};
        let Some(s) = &self.situation else {
            return Ok(());
        };
        gauge(
            enc,
            "sentinel_power_on_battery",
            "1 while the machine runs on battery, 0 on mains.",
            Some(i64::from(s.power == PowerSource::Battery)),
        )?;
        gauge(
            enc,
            "sentinel_user_idle",
            "1 while nobody has touched the keyboard or mouse for situation.idle_after.",
            Some(i64::from(s.presence == Presence::Idle)),
        )?;
        gauge(
            enc,
            "sentinel_thermal_pressure",
            "1 while the machine reports thermal pressure (the budget is halved).",
            Some(i64::from(s.thermal == Thermal::Pressure)),
        )?;
        gauge(
            enc,
            "sentinel_budget_paused",
            "1 while the budget in force is a pause (new requests wait in the queue).",
            Some(i64::from(s.paused)),
        )
    }

    /// What the governor measured and allowed, and the time it held the backend stopped.
    fn governor(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        gauge(
            enc,
            "sentinel_governor_measured_cores",
            "The backend's CPU over the governor's last feedback window, in cores.",
            self.governor.as_ref().and_then(|g| g.measured_cpus),
        )?;
        gauge(
            enc,
            "sentinel_governor_duty_ratio",
            "Share of each duty-cycle period the backend may run.",
            self.governor.as_ref().and_then(|g| g.duty),
        )?;
        counter(
            enc,
            "sentinel_governor_throttled_seconds",
            "Time the duty cycle held the backend stopped, SIGSTOP to SIGCONT (the signals method; a kernel cap throttles inside the cgroup, see its cpu.stat).",
            Some(self.throttled),
        )
    }

    /// The backend's CPU clock and memory.
    fn backend(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        counter(
            enc,
            "sentinel_backend_cpu_seconds",
            "CPU time of the running backend process (its exact CPU clock); starts again at 0 with each launch.",
            self.backend.and_then(meter::process_cpu),
        )?;
        gauge(
            enc,
            "sentinel_backend_resident_memory_bytes",
            "Resident memory of the running backend process.",
            self.backend.and_then(meter::rss_bytes).map(|v| v as i64),
        )
    }

    /// The machine's busy time and CPUs (its busy share is their ratio).
    fn machine(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        counter(
            enc,
            "sentinel_system_cpu_busy_seconds",
            "CPU time the whole machine spent busy, summed over every CPU (cgroup v1 cpuacct root when mounted, else /proc/stat).",
            meter::system_times(self.online_cpus)
                .ok()
                .map(|t| Duration::from_nanos(t.busy)),
        )?;
        gauge(
            enc,
            "sentinel_system_cpus",
            "Online CPUs: the machine's busy share is rate(sentinel_system_cpu_busy_seconds_total) divided by this.",
            Some(self.online_cpus as i64),
        )
    }

    /// The supervisor's own CPU and memory, and whether llama-server's `/metrics` answered.
    fn supervisor(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let me = std::process::id() as i32;
        counter(
            enc,
            "sentinel_supervisor_cpu_seconds",
            "CPU time of the supervisor process itself.",
            meter::process_cpu(me),
        )?;
        gauge(
            enc,
            "sentinel_supervisor_resident_memory_bytes",
            "Resident memory of the supervisor process itself.",
            meter::rss_bytes(me).map(|v| v as i64),
        )?;
        gauge(
            enc,
            "sentinel_llamacpp_scrape_success",
            "Whether llama-server's own /metrics answered this scrape (its samples follow as sentinel_backend_llamacpp_*).",
            self.llamacpp_up.map(i64::from),
        )
    }
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        self.state(&mut enc)?;
        self.admission(&mut enc)?;
        self.situation(&mut enc)?;
        self.governor(&mut enc)?;
        self.backend(&mut enc)?;
        self.machine(&mut enc)?;
        self.supervisor(&mut enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_listed_in_index_order() {
        for (i, state) in STATES.iter().enumerate() {
            assert_eq!(state_index(*state), i, "{state}");
        }
    }
}
