//! The integration tests: the real binary, started on port 0, against a fake backend for
//! fault injection and against the real llama-server with the default model.

// Test-support code (helpers outside `#[test]` fns) may unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used)]
mod central;
mod support;

mod bench;
mod bundle;
mod check_config;
mod e2e;
mod faults;
mod governor;
mod ladder;
mod lifecycle;
mod load;
mod logs;
mod memory;
mod metrics;
mod notify;
mod poison;
mod profiles;
mod properties;
mod proxy;
mod setup;
mod situation;
mod spill;
mod status_command;
mod supervisor;
mod trust;
mod warmup;
