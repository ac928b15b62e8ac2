//! The bench crate's integration tests: `sentinel-bench` against the real `sentinel-supervisor`
//! (with the fake backend, and with the real llama-server and default model), and the fake
//! backend itself.

mod support;

mod bench;
mod fake_backend;
