//! CPU control of the backend: thread sizing, the SIGSTOP/SIGCONT duty cycle, kernel caps and
//! scheduling priority.

pub mod activity;
pub mod limit;

pub use activity::{Activity, ActivityGuard};
