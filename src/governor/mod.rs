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
