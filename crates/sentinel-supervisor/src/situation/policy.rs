//! The budget in force, decided from the situation (BOINC's rules): on battery the profile's
//! `cpus_on_battery` applies (0 pauses), else with the user idle `cpus_when_idle`, else the
//! profile's `cpus`; on battery wins over idle; thermal pressure halves whichever applies.
//! Hysteresis: once the budget has changed, it changes again no sooner than `state_hold` later
//! (the situation is read again then, so a state that came and went in between changes
//! nothing). A new profile (a reload) applies at once.

use crate::profile::Resolved;
use crate::units::Cores;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// A budget: a number of cores, no limit, or paused (requests wait in the queue).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Budget {
    Unlimited,
    Cores(Cores),
    Paused,
}

impl Budget {
    fn from_cores(cores: Option<Cores>) -> Budget {
        cores.map_or(Budget::Unlimited, Budget::Cores)
    }

    /// Half of it; no limit halves to half the cores this process may use.
    fn halved(self, allowed_cores: f64) -> Budget {
        let half = |c: f64| Cores::new(c / 2.0).map_or(Budget::Paused, Budget::Cores);
        match self {
            Budget::Unlimited => half(allowed_cores),
            Budget::Cores(c) => half(c.get()),
            Budget::Paused => Budget::Paused,
        }
    }

    /// In cores (`None`: no limit, or paused).
    pub(crate) fn cores(self) -> Option<f64> {
        match self {
            Budget::Cores(c) => Some(c.get()),
            _ => None,
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Unlimited => f.write_str("unlimited"),
            Budget::Cores(c) => write!(f, "{:.2} cores", c.get()),
            Budget::Paused => f.write_str("paused"),
        }
    }
}

/// A profile's budget in each state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Budgets {
    pub active: Budget,
    pub on_battery: Budget,
    pub when_idle: Budget,
    /// The cores this process may use (what "no limit" halves from).
    pub allowed_cores: f64,
}

impl Budgets {
    /// The resolved profile's budgets.
    pub(crate) fn for_profile(profile: &Resolved, allowed_cores: f64) -> Budgets {
        Budgets {
            active: Budget::from_cores(profile.cpus),
            on_battery: profile.cpus_on_battery.map_or(Budget::Unlimited, |c| {
                Cores::new(c).map_or(Budget::Paused, Budget::Cores)
            }),
            when_idle: Budget::from_cores(profile.cpus_when_idle),
            allowed_cores,
        }
    }
}

/// The machine's situation, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Conditions {
    pub on_battery: bool,
    pub user_idle: bool,
    pub thermal_pressure: bool,
}

/// Which of the profile's budgets applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// On mains with the user at the keyboard: the profile's `cpus`.
    Active,
    /// On mains, no input for `idle_after`: `cpus_when_idle`.
    Idle,
    /// On battery: `cpus_on_battery` (whatever the user does).
    OnBattery,
}

/// The budget in force and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decision {
    pub budget: Budget,
    pub state: State,
    /// Halved for thermal pressure.
    pub thermal: bool,
    /// What the governor holds instead of the plan's budget (`Some(None)`: no limit); `None`:
    /// the plan's own (the user active on mains without heat, so a reload's new budget applies
    /// as it is). While paused, what it held before (requests in flight finish as they would
    /// have; new ones wait).
    pub governor: Option<Option<Cores>>,
}

impl Decision {
    /// `"on battery"`, `"user idle, thermal pressure (halved)"`, ...
    pub(crate) fn reason(&self) -> String {
        let state = match self.state {
            State::Active => "user active on mains",
            State::Idle => "user idle",
            State::OnBattery => "on battery",
        };
        if self.thermal {
            format!("{state}, thermal pressure (halved)")
        } else {
            state.to_string()
        }
    }

    /// Whether new requests wait.
    pub(crate) fn paused(&self) -> bool {
        self.budget == Budget::Paused
    }
}

fn decide(budgets: &Budgets, c: Conditions, previous: Option<&Decision>) -> Decision {
    let (state, base) = if c.on_battery {
        (State::OnBattery, budgets.on_battery)
    } else if c.user_idle {
        (State::Idle, budgets.when_idle)
    } else {
        (State::Active, budgets.active)
    };
    let budget = if c.thermal_pressure {
        base.halved(budgets.allowed_cores)
    } else {
        base
    };
    let governor = match budget {
        _ if state == State::Active && !c.thermal_pressure => None,
        Budget::Cores(c) => Some(Some(c)),
        Budget::Unlimited => Some(None),
        Budget::Paused => previous.and_then(|p| p.governor),
    };
    Decision {
        budget,
        state,
        thermal: c.thermal_pressure,
        governor,
    }
}

/// The state machine: the decision in force, changed at most once per `hold`.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    hold: Duration,
    budgets: Budgets,
    in_force: Decision,
    changed_at: Instant,
}

impl Policy {
    /// Starts with the decision for the situation now (no hold before the first).
    pub(crate) fn new(
        hold: Duration,
        budgets: Budgets,
        conditions: Conditions,
        now: Instant,
    ) -> Policy {
        Policy {
            hold,
            budgets,
            in_force: decide(&budgets, conditions, None),
            changed_at: now,
        }
    }

    pub(crate) fn in_force(&self) -> Decision {
        self.in_force
    }

    /// When the hold since the last change ends (a change before then waits).
    pub(crate) fn hold_ends(&self) -> Instant {
        self.changed_at + self.hold
    }

    /// Reads the situation again; `Some` with the new decision when the budget in force
    /// changes now.
    pub(crate) fn update(
        &mut self,
        budgets: Budgets,
        conditions: Conditions,
        now: Instant,
    ) -> Option<Decision> {
        let reloaded = budgets != self.budgets;
        self.budgets = budgets;
        let wanted = decide(&budgets, conditions, Some(&self.in_force));
        if wanted == self.in_force || (!reloaded && now < self.hold_ends()) {
            return None;
        }
        self.in_force = wanted;
        self.changed_at = now;
        Some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores(c: f64) -> Budget {
        Budget::Cores(Cores::new(c).unwrap())
    }

    fn budgets() -> Budgets {
        Budgets {
            active: cores(1.0),
            on_battery: cores(0.5),
            when_idle: cores(2.0),
            allowed_cores: 2.0,
        }
    }

    const MAINS: Conditions = Conditions {
        on_battery: false,
        user_idle: false,
        thermal_pressure: false,
    };
    const IDLE: Conditions = Conditions {
        user_idle: true,
        ..MAINS
    };
    const BATTERY: Conditions = Conditions {
        on_battery: true,
        ..MAINS
    };
    const HOLD: Duration = Duration::from_secs(20);

    #[test]
    fn each_state_takes_its_budget_battery_wins_heat_halves() {
        let b = budgets();
        assert_eq!(decide(&b, MAINS, None).budget, cores(1.0));
        assert_eq!(decide(&b, IDLE, None).budget, cores(2.0));
        let both = Conditions {
            on_battery: true,
            user_idle: true,
            thermal_pressure: false,
        };
        let d = decide(&b, both, None);
        assert_eq!((d.budget, d.state), (cores(0.5), State::OnBattery));
        let hot = Conditions {
            thermal_pressure: true,
            ..IDLE
        };
        let d = decide(&b, hot, None);
        assert_eq!(d.budget, cores(1.0));
        assert_eq!(d.reason(), "user idle, thermal pressure (halved)");
        let unlimited = Budgets {
            active: Budget::Unlimited,
            ..b
        };
        assert_eq!(
            decide(
                &unlimited,
                Conditions {
                    thermal_pressure: true,
                    ..MAINS
                },
                None
            )
            .budget,
            cores(1.0)
        );
    }

    #[test]
    fn a_pause_keeps_the_governor_where_it_was() {
        let b = Budgets {
            on_battery: Budget::Paused,
            ..budgets()
        };
        let idle = decide(&b, IDLE, None);
        let paused = decide(&b, BATTERY, Some(&idle));
        assert!(paused.paused());
        assert_eq!(paused.governor, Some(Cores::new(2.0).ok()));
        // The user active on mains: the plan's own budget, whatever it is after a reload.
        assert_eq!(decide(&b, MAINS, None).governor, None);
        // Paused from the start: the plan's own budget for what is in flight.
        assert_eq!(decide(&b, BATTERY, None).governor, None);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_wait_for_the_hold_and_a_blip_changes_nothing() {
        let b = budgets();
        let start = Instant::now();
        let mut policy = Policy::new(HOLD, b, MAINS, start);
        assert_eq!(policy.in_force().budget, cores(1.0));
        // Unplugged 5 s in: held until 20 s.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(policy.update(b, BATTERY, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(14)).await;
        assert_eq!(policy.update(b, BATTERY, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = policy.update(b, BATTERY, Instant::now()).unwrap();
        assert_eq!((d.budget, d.state), (cores(0.5), State::OnBattery));
        assert_eq!(policy.hold_ends(), start + Duration::from_secs(40));
        // Plugged in and out again within the hold: nothing changes at all.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(policy.update(b, MAINS, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(17)).await;
        assert_eq!(policy.update(b, BATTERY, Instant::now()), None);
        assert_eq!(policy.in_force().budget, cores(0.5));
        // Plugged in for good: the change comes at once, the hold having passed.
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = policy.update(b, IDLE, Instant::now()).unwrap();
        assert_eq!((d.budget, d.state), (cores(2.0), State::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_profile_applies_at_once() {
        let b = budgets();
        let mut policy = Policy::new(HOLD, b, MAINS, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        let reloaded = Budgets {
            active: cores(0.75),
            ..b
        };
        let d = policy.update(reloaded, MAINS, Instant::now()).unwrap();
        assert_eq!(d.budget, cores(0.75));
    }
}
