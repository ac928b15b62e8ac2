//! Everything about llama-server: building it from the pin, the model, spawning and signalling.

pub mod setup;
