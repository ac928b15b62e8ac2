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
//! - [`threads_for_budget`] sizes llama-server's threads from the budget;
//! - [`child_env`] and [`child_args`] stop idle spinning in the child;
//! - [`priority`] sets the scheduling class at spawn;
//! - [`Governor::start`] enforces the budget with [`signals`] (duty cycle, gated by
//!   [`Activity`]) or [`cgroup`] (kernel cap), see [`handle`] for how `auto` picks;
//! - [`snapshot`] publishes what the governor does, over its own window, for `/status`.

pub mod activity;
pub mod adaptive;
pub mod cgroup;
pub mod duty;
pub mod handle;
pub mod limit;
pub mod priority;
pub mod settings;
pub mod signals;
pub mod snapshot;
pub mod target;
pub mod usage;

pub use activity::{Activity, ActivityGuard};
pub use handle::{Governor, GovernorError, GovernorHandle};
pub use priority::{apply_to_current_process, Priority};
pub use settings::{GovernorConfig, GovernorSettings, Method};
pub use snapshot::{GovernorSnapshot, GovernorState, SnapshotSender};

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

/// Environment for the child so its worker threads sleep instead of spinning when idle:
/// GNU OpenMP (`GOMP_SPINCOUNT`), LLVM/Intel OpenMP (`KMP_BLOCKTIME`) and the OpenMP standard
/// (`OMP_WAIT_POLICY`). Harmless for builds without OpenMP.
pub fn child_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("OMP_WAIT_POLICY", "passive"),
        ("GOMP_SPINCOUNT", "0"),
        ("KMP_BLOCKTIME", "0"),
    ]
}

/// llama-server flags that turn off busy-polling of its thread pool between work items
/// (`--poll` and `--poll-batch` are 0-100 levels; 0 = no polling).
pub fn child_args() -> [&'static str; 4] {
    ["--poll", "0", "--poll-batch", "0"]
}

/// HTTP worker threads for a llama-server with `slots` slots: one per slot plus one for the
/// supervisor's probes (the proxy never lets more than `slots` requests through at once).
/// llama-server's default is several more; every thread costs CPU under the duty cycle, since
/// each SIGSTOP and SIGCONT wakes all of them (measured here: an idle llama-server under
/// `limit --cpus 0.5` used 1.8 % of a core with 10 threads, 1.2 % with 7).
pub fn http_threads(slots: usize) -> usize {
    slots.max(1) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_http_thread_per_slot_and_one_for_probes() {
        assert_eq!(http_threads(1), 2);
        assert_eq!(http_threads(4), 5);
        assert_eq!(http_threads(0), 2);
    }

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

    #[test]
    fn child_flags_disable_polling() {
        assert_eq!(child_args(), ["--poll", "0", "--poll-batch", "0"]);
        let env = child_env();
        assert!(env.contains(&("GOMP_SPINCOUNT", "0")));
        assert!(env.contains(&("OMP_WAIT_POLICY", "passive")));
    }
}
