//! CPU control of the backend: thread sizing, the SIGSTOP/SIGCONT duty cycle, kernel caps and
//! scheduling priority.

pub mod activity;
pub mod limit;
pub mod priority;

pub use activity::{Activity, ActivityGuard};

/// The `[governor]` section (temporary: replaced by the governor branch).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorConfig {}

/// llama-server arguments that stop idle spinning (temporary: replaced by the governor branch).
pub fn child_args() -> [&'static str; 4] {
    ["--poll", "0", "--poll-batch", "0"]
}

/// Child environment that stops OpenMP idle spinning (temporary: see above).
pub fn child_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GOMP_SPINCOUNT", "0"),
        ("OMP_WAIT_POLICY", "passive"),
        ("KMP_BLOCKTIME", "0"),
    ]
}

/// What the supervisor needs to start a governor for each launch (temporary glue until the
/// governor branch lands).
#[derive(Debug, Clone, Default)]
pub struct GovernorLaunch {
    pub config: GovernorConfig,
    pub cpus: Option<f64>,
    pub threads: usize,
    pub adaptive: Option<f64>,
}

impl GovernorLaunch {
    /// Starts governing `pid`; the returned handle stops governing (and continues the child)
    /// when dropped.
    pub fn start(&self, pid: i32, activity: &Activity) -> Option<()> {
        let _ = (pid, activity);
        None
    }
}
