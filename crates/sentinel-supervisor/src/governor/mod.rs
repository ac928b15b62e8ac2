//! CPU control of the backend: thread sizing, the SIGSTOP/SIGCONT duty cycle, kernel caps and
//! scheduling priority.
//!
//! # One budget, in cores
//! A profile's `cpus` is a number of cores, like Docker's `--cpus`: 1.0 = one full core, which on
//! a 2-core machine is 50 % of the machine.
//! - From `cpulimit -l L`: `cpus = L / 100` (`-l 50` = 0.5 cores, `-l 100` = 1.0).
//! - From a share of the whole machine, `P` % of system CPU: `cpus = P / 100 * ncpus`
//!   (25 % of a 2-core machine = 0.5 cores; 25 % of an 8-core machine = 2.0 cores).
//!
//! # Pieces
//! - [`threads_for_budget`] sizes llama-server's threads from the budget (the flags that stop
//!   idle spinning in the child are in [`crate::backend::launch`]);
//! - [`priority`] sets the scheduling class at spawn;
//! - [`Governor::start`] enforces the budget with [`duty_cycle`] (duty cycle, gated by
//!   [`Activity`]) or [`cgroup`] (kernel cap), see [`handle`] for how `auto` picks;
//! - [`snapshot`] publishes what the governor does, over its own window, for `/status`.

pub(crate) mod activity;
pub(crate) mod adaptive;
pub mod cgroup;
pub(crate) mod controller;
pub(crate) mod duty_cycle;
pub(crate) mod handle;
pub(crate) mod pinned;
pub(crate) mod priority;
pub(crate) mod settings;
pub(crate) mod snapshot;
pub(crate) mod threads;
pub(crate) mod usage;

pub(crate) use activity::{Activity, ActivityGuard};
pub(crate) use duty_cycle::StoppedTime;
pub(crate) use handle::{Governor, GovernorError, GovernorHandle, Prepared};
pub(crate) use priority::apply_to_current_process;
pub use priority::Priority;
pub use settings::Method;
pub(crate) use settings::{GovernorConfig, GovernorSettings};
pub(crate) use snapshot::SnapshotSender;
pub use snapshot::{GovernorSnapshot, GovernorState};

/// Threads for llama-server under a budget of `cpus` cores: one per started core (1.0 -> 1,
/// 1.5 -> 2), never more than the CPUs the process may use, at least 1. `None` (unlimited) uses
/// every allowed CPU. More threads than the budget only spin at ggml's barriers while throttled.
pub fn threads_for_budget(cpus: Option<f64>, allowed_cpus: usize) -> usize {
    let allowed = allowed_cpus.max(1);
    match cpus {
        Some(c) if c.is_finite() && c > 0.0 => {
            // A hair of tolerance so 1.0000001 (from a percent conversion) stays 1 thread.
            let n = (c - 1e-6).ceil().max(1.0);
            (n as usize).min(allowed)
        }
        _ => allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_follow_the_budget() {
        assert_eq!(threads_for_budget(Some(1.0), 2), 1);
        assert_eq!(threads_for_budget(Some(0.5), 2), 1);
        assert_eq!(threads_for_budget(Some(0.01), 8), 1);
        assert_eq!(threads_for_budget(Some(1.5), 8), 2);
        assert_eq!(threads_for_budget(Some(2.0), 8), 2);
        assert_eq!(threads_for_budget(Some(1.0000001), 8), 1);
        assert_eq!(threads_for_budget(Some(6.0), 4), 4);
        assert_eq!(threads_for_budget(None, 4), 4);
        assert_eq!(threads_for_budget(Some(1.0), 0), 1);
        assert_eq!(threads_for_budget(Some(f64::NAN), 3), 3);
    }
}
