//! Everything about llama-server: the pinned source and its build (with the build tools it
//! needs and the progress it shows), the model, the command line and environment, and the
//! child process itself.

pub mod build;
pub mod bundle;
pub mod fetch;
pub(crate) mod gguf;
pub(crate) mod ladder;
pub mod launch;
pub(crate) mod lock;
pub(crate) mod memory;
pub mod model;
pub(crate) mod output;
pub mod pin;
pub mod process;
pub(crate) mod progress;
pub mod runner;
pub(crate) mod setup;
pub(crate) mod smoke;
pub mod tools;
pub(crate) mod verdict;
