//! Everything about llama-server: the pinned source and its build, the model, the command
//! line and environment, and the child process itself.

pub mod build;
pub mod fetch;
pub mod gguf;
pub mod launch;
pub mod lock;
pub mod memory;
pub mod model;
pub mod pin;
pub mod process;
pub mod setup;
