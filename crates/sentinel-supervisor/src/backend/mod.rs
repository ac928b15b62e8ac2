//! Everything about llama-server: the pinned source and its build (with the build tools it
//! needs and the progress it shows), the model, the command line and environment, and the
//! child process itself.

pub mod build;
pub mod bundle;
pub mod fetch;
pub mod gguf;
pub mod ladder;
pub mod launch;
pub mod lock;
pub mod memory;
pub mod model;
pub mod output;
pub mod pin;
pub mod process;
pub mod progress;
pub mod runner;
pub mod setup;
pub mod smoke;
pub mod tools;
pub mod verdict;
