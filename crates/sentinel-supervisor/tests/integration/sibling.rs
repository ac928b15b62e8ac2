//! The binaries of the workspace's other package: the product's tests start the bench crate's
//! `fake-backend` and `cpu-burner`, the bench's tests start `sentinel-supervisor`. Cargo gives a
//! test only its own package's binaries (`CARGO_BIN_EXE_*`), so these are looked up in the same
//! target directory and, when the tests run under cargo, built first with `$CARGO build -p
//! PACKAGE --bins`: once per test process (a `OnceLock`; cargo's own lock on the target
//! directory serialises test processes), a no-op when they are fresh, so `cargo test` alone
//! works and a stale fake is never used. Included by both test crates (`#[path]`).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// `name`, a binary of `package`, beside `own` (a binary of the package under test).
pub(super) fn sibling_bin(own: &str, package: &str, name: &str) -> String {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = Path::new(own)
        .parent()
        .unwrap_or_else(|| panic!("{own} has no directory"));
    if let Err(err) = BUILT.get_or_init(|| build(dir, package)) {
        panic!("{err}");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {package} --bins`",
        path.display()
    );
    path.display().to_string()
}

/// Builds `package`'s binaries into `dir` (a cargo profile directory) when cargo runs us.
fn build(dir: &Path, package: &str) -> Result<(), String> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        // Not run by cargo: the binaries are used as they are.
        return Ok(());
    };
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(name) => name,
    };
    let status = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            package,
            "--bins",
            "--profile",
            profile,
        ])
        .status()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo build -p {package} --bins --profile {profile}` failed ({status}); see above"
        ))
    }
}
