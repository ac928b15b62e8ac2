//! What the bench's tests share: the binaries, the real backend from `setup`, and a lock for
//! the tests that measure CPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

#[path = "../../../sentinel-supervisor/tests/integration/sibling.rs"]
mod sibling;

/// The harness under test.
pub const BENCH: &str = env!("CARGO_BIN_EXE_sentinel-bench");
/// The fake llama-server.
pub const FAKE: &str = env!("CARGO_BIN_EXE_fake-backend");

/// The product's binary, beside `sentinel-bench` (where the harness looks for it first).
pub fn supervisor() -> String {
    sibling::sibling_bin(BENCH, "sentinel-supervisor", "sentinel-supervisor")
}

/// The llama-server rung and default model `sentinel-supervisor setup` prepared.
pub struct Real {
    pub model: PathBuf,
}

/// Runs `setup` once (it builds llama-server and fetches the model on a fresh cache).
pub fn real_backend() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let out = Command::new(supervisor())
            .arg("setup")
            .stderr(Stdio::inherit())
            .output()
            .expect("run sentinel-supervisor setup");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "setup failed: {stdout}");
        let model = stdout
            .lines()
            .find_map(|l| l.strip_prefix("model:"))
            .map(|p| Path::new(p.trim()).to_path_buf())
            .unwrap_or_else(|| panic!("setup printed no `model:` line: {stdout}"));
        Real { model }
    })
}

/// Serialises tests that measure CPU or run the real model, so they do not disturb each other
/// on a 2-core machine.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
