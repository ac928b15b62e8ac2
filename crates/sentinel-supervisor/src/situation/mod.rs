//! The machine's situation, for a laptop (BOINC's behaviour): where the power comes from, whether
//! someone is at the keyboard, and heat. One task reads them every `poll_interval` ([`Sensors`]),
//! decides the budget in force ([`policy`]: on battery, user idle, user active; thermal pressure
//! halves; at most one change per `state_hold`), and publishes it twice: the [`Decision`] on a
//! `watch` the lifecycle follows (it restarts the governor on the same child, the live path of a
//! reload, see [`Follow`]) and the [`SituationReport`] `/status` and `/metrics` show. A pause
//! (`cpus_on_battery = 0`) holds new requests in the admission queue.
//!
//! Readers: Linux `power` (`/sys/class/power_supply`), `presence` (logind, else the input
//! devices' interrupts, else always active), `thermal` (`/sys/class/thermal`), all under
//! `situation.root` (a fake tree for tests); macOS `power_macos` (IOKit power sources),
//! `presence_macos` (`HIDIdleTime`), `thermal_macos` (the process info's thermal state).

pub(crate) mod policy;
#[cfg(target_os = "linux")]
mod power;
#[cfg(target_os = "macos")]
mod power_macos;
#[cfg(target_os = "linux")]
mod presence;
#[cfg(target_os = "macos")]
mod presence_macos;
#[cfg(target_os = "linux")]
mod thermal;
#[cfg(target_os = "macos")]
mod thermal_macos;

pub(crate) use policy::{Budgets, Conditions, Decision, Policy, State};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `[situation]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SituationConfig {
    /// Follow the situation; `false`: the profile's `cpus` always.
    pub enabled: bool,
    /// No keyboard or mouse input for this long: the user is idle.
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// The budget in force changes at most once per this long.
    #[serde(with = "humantime_serde")]
    pub state_hold: Duration,
    /// How often the situation is read.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Where `sys/` and `proc/` are read from (Linux); a fake tree for tests. Not `/`: logind
    /// is not asked.
    pub root: PathBuf,
}

/// Where the power comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerSource {
    Mains,
    Battery,
}

/// How presence is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceSource {
    /// logind's idle hint (Linux, a graphical session).
    Logind,
    /// The input devices' interrupt counts (Linux).
    Interrupts,
    /// IOKit's `HIDIdleTime` (macOS).
    HidIdleTime,
    /// Nothing tells: the user counts as active.
    AlwaysActive,
}

/// Whether someone is at the keyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Active,
    Idle,
}

/// Heat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Thermal {
    Normal,
    Pressure,
}

/// The situation in `/status` (`situation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SituationReport {
    pub power: PowerSource,
    pub presence: Presence,
    pub presence_source: PresenceSource,
    /// Seconds since the last input (`null` where not known).
    pub idle_for_s: Option<f64>,
    pub thermal: Thermal,
    /// What reports the pressure (`null` without pressure).
    pub thermal_detail: Option<String>,
    /// The budget in force, cores (`null`: no limit, or paused).
    pub budget_cpus: Option<f64>,
    /// New requests wait in the queue.
    pub paused: bool,
    /// Which of the profile's budgets applies.
    pub state: State,
    /// Why, in words: `on battery`, `user idle, thermal pressure (halved)`.
    pub reason: String,
    /// Seconds since the budget in force last changed (or since start), to a tenth.
    pub since_s: f64,
}

/// One reading of the sensors.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    power: PowerSource,
    /// Since the last input; `None`: not known (active).
    idle_for: Option<Duration>,
    /// What tells the presence (the same in every reading).
    presence_source: PresenceSource,
    /// What reports thermal pressure; `None`: none.
    thermal: Option<String>,
}

impl Reading {
    fn conditions(&self, idle_after: Duration) -> Conditions {
        Conditions {
            on_battery: self.power == PowerSource::Battery,
            user_idle: self.idle_for.is_some_and(|d| d >= idle_after),
            thermal_pressure: self.thermal.is_some(),
        }
    }
}

/// The platform's readers.
struct Sensors {
    #[cfg(target_os = "linux")]
    power: power::Sysfs,
    #[cfg(target_os = "linux")]
    presence: presence::Presence,
    #[cfg(target_os = "linux")]
    thermal: thermal::Sysfs,
}

impl Sensors {
    #[cfg(target_os = "linux")]
    async fn open(config: &SituationConfig) -> Sensors {
        Sensors {
            power: power::Sysfs::new(&config.root),
            presence: presence::Presence::open(&config.root).await,
            thermal: thermal::Sysfs::new(&config.root),
        }
    }

    #[cfg(not(target_os = "linux"))]
    async fn open(_config: &SituationConfig) -> Sensors {
        Sensors {}
    }

    #[cfg(target_os = "linux")]
    async fn read(&mut self) -> Reading {
        Reading {
            power: self.power.read(),
            idle_for: self.presence.idle_for().await,
            presence_source: self.presence.source(),
            thermal: self.thermal.pressure(),
        }
    }

    #[cfg(target_os = "macos")]
    async fn read(&mut self) -> Reading {
        Reading {
            power: power_macos::read(),
            idle_for: presence_macos::idle_for(),
            presence_source: PresenceSource::HidIdleTime,
            thermal: thermal_macos::pressure(),
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    async fn read(&mut self) -> Reading {
        Reading {
            power: PowerSource::Mains,
            idle_for: None,
            presence_source: PresenceSource::AlwaysActive,
            thermal: None,
        }
    }
}

/// What the lifecycle follows: the budget the governor holds instead of the plan's (see
/// [`Decision::governor`]).
#[derive(Debug, Clone)]
pub(crate) struct Follow {
    decision: watch::Receiver<Option<Decision>>,
    /// The override last handed to a governor by [`Follow::settings`] (shared by the clones).
    applied: Arc<std::sync::Mutex<Override>>,
}

/// `None`: the plan's budget; `Some(None)`: no limit; `Some(Some(c))`: `c` cores.
type Override = Option<Option<crate::units::Cores>>;

fn lock(applied: &std::sync::Mutex<Override>) -> std::sync::MutexGuard<'_, Override> {
    applied
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Follow {
    fn new(decision: watch::Receiver<Option<Decision>>) -> Follow {
        let applied = decision.borrow().and_then(|d| d.governor);
        Follow {
            decision,
            applied: Arc::new(std::sync::Mutex::new(applied)),
        }
    }

    /// Not following: the plan's budget always.
    pub(crate) fn off() -> Follow {
        Follow::new(watch::Sender::new(None).subscribe())
    }

    /// `settings` with the budget in force (remembered as the one applied).
    pub(crate) fn settings(
        &self,
        mut settings: crate::governor::GovernorSettings,
    ) -> crate::governor::GovernorSettings {
        let wanted = self.decision.borrow().and_then(|d| d.governor);
        if let Some(cpus) = wanted {
            settings.cpus = cpus;
        }
        *lock(&self.applied) = wanted;
        settings
    }

    /// Resolves when the budget in force differs from the one last applied (the caller then
    /// restarts the governor through [`Follow::settings`]); never while not following or once
    /// the situation task has ended. Cancel-safe: it compares values, not notifications.
    pub(crate) async fn changed(&mut self) {
        let applied = Arc::clone(&self.applied);
        let differs = |d: &Option<Decision>| d.and_then(|d| d.governor) != *lock(&applied);
        let closed = self.decision.wait_for(differs).await.is_err();
        if closed {
            std::future::pending::<()>().await;
        }
    }
}

/// The situation, read once at start; [`Situation::run`] follows it.
pub(crate) struct Situation {
    config: SituationConfig,
    sensors: Sensors,
    reading: Reading,
    policy: Policy,
    decision: watch::Sender<Option<Decision>>,
    report: watch::Sender<Option<SituationReport>>,
}

impl Situation {
    /// Reads the sensors once and decides the first budget (`None` when `enabled = false`).
    pub(crate) async fn start(
        config: &SituationConfig,
        profile: &crate::profile::Resolved,
        host: &crate::host::Host,
    ) -> Option<Situation> {
        if !config.enabled {
            return None;
        }
        let mut sensors = Sensors::open(config).await;
        let reading = sensors.read().await;
        let budgets = Budgets::for_profile(profile, host.allowed_cores());
        let policy = Policy::new(
            config.state_hold,
            budgets,
            reading.conditions(config.idle_after),
            Instant::now(),
        );
        let decision = policy.in_force();
        tracing::info!(
            power = ?reading.power,
            presence_source = ?reading.presence_source,
            thermal = reading.thermal.as_deref().unwrap_or("normal"),
            budget = %decision.budget,
            reason = %decision.reason(),
            idle_after = ?config.idle_after,
            state_hold = ?config.state_hold,
            "following the machine's situation"
        );
        let situation = Situation {
            config: config.clone(),
            sensors,
            reading,
            policy,
            decision: watch::Sender::new(Some(decision)),
            report: watch::Sender::new(None),
        };
        situation.publish(Instant::now());
        Some(situation)
    }

    /// What the lifecycle follows.
    pub(crate) fn follow(&self) -> Follow {
        Follow::new(self.decision.subscribe())
    }

    /// What `/status` shows.
    pub(crate) fn reports(&self) -> watch::Receiver<Option<SituationReport>> {
        self.report.subscribe()
    }

    fn publish(&self, now: Instant) {
        let d = self.policy.in_force();
        let changed_at = self.policy.hold_ends() - self.config.state_hold;
        let idle = self.reading.conditions(self.config.idle_after).user_idle;
        self.report.send_replace(Some(SituationReport {
            power: self.reading.power,
            presence: if idle {
                Presence::Idle
            } else {
                Presence::Active
            },
            presence_source: self.reading.presence_source,
            idle_for_s: self.reading.idle_for.map(|d| d.as_secs_f64().round()),
            thermal: if self.reading.thermal.is_some() {
                Thermal::Pressure
            } else {
                Thermal::Normal
            },
            thermal_detail: self.reading.thermal.clone(),
            budget_cpus: d.budget.cores(),
            paused: d.paused(),
            state: d.state,
            reason: d.reason(),
            since_s: now
                .saturating_duration_since(changed_at)
                .as_secs_f64()
                .round(),
        }));
    }

    /// Reads the situation every `poll_interval` until `cancel`; the profile comes from the
    /// proxy's live settings (a reload may change it), the pause goes to its admission.
    pub(crate) async fn run(
        mut self,
        shared: Arc<crate::proxy::Shared>,
        host: crate::host::Host,
        cancel: CancellationToken,
    ) {
        shared.admission.set_paused(self.policy.in_force().paused());
        let mut ticker = tokio::time::interval(self.config.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let reading = self.sensors.read().await;
            self.log_changes(&reading);
            self.reading = reading;
            let budgets = Budgets::for_profile(&shared.live().info.profile, host.allowed_cores());
            let now = Instant::now();
            let conditions = self.reading.conditions(self.config.idle_after);
            if let Some(d) = self.policy.update(budgets, conditions, now) {
                tracing::info!(
                    budget = %d.budget,
                    reason = %d.reason(),
                    governor = ?d.governor.map(|c| c.map(crate::units::Cores::get)),
                    "budget in force changed"
                );
                shared.admission.set_paused(d.paused());
                self.decision.send_replace(Some(d));
            }
            self.publish(now);
        }
    }

    /// Logs each change of a reading once.
    fn log_changes(&self, new: &Reading) {
        let old = &self.reading;
        if new.power != old.power {
            tracing::info!(from = ?old.power, to = ?new.power, "power source changed");
        }
        let was = old.conditions(self.config.idle_after).user_idle;
        let is = new.conditions(self.config.idle_after).user_idle;
        if was != is {
            tracing::info!(
                idle = is,
                idle_for = ?new.idle_for,
                source = ?new.presence_source,
                "user presence changed"
            );
        }
        if new.thermal.is_some() != old.thermal.is_some() {
            tracing::info!(pressure = ?new.thermal, "thermal state changed");
        }
    }
}

/// Writes fake sysfs files (`(name, text)`) into `dir`, for the Linux readers' tests.
#[cfg(test)]
#[cfg(target_os = "linux")]
fn write_fake_files(dir: &std::path::Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("a test's temp dir takes a directory");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("a test's temp dir takes a file");
    }
}

/// The devices of one device class of sysfs under a root (`<root>/sys/class/<name>`: the power
/// supplies, the thermal zones and cooling devices), sorted by path; none when the class is
/// missing. The root is `/` but for tests.
#[cfg(target_os = "linux")]
fn sys_class(root: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join("sys/class").join(name)) else {
        return Vec::new();
    };
    let mut dirs: Vec<std::path::PathBuf> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    dirs
}
