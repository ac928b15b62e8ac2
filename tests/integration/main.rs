//! The integration tests: the real binary, started on port 0, against a fake backend for
//! fault injection and against the real llama-server with the default model.

mod support;

mod bench;
mod e2e;
mod fake_backend;
mod faults;
mod governor;
mod load;
mod memory;
mod proxy;
mod setup;
mod supervisor;
