//! `setup` errors that tell the user what to install or fix.

use crate::support::BIN;
use std::process::Command;

fn setup_with_path(path: &std::path::Path, cache: &std::path::Path) -> String {
    let cfg = cache.join("c.toml");
    std::fs::write(
        &cfg,
        format!("[backend]\ncache_dir = \"{}\"\n", cache.display()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("setup")
        .arg("--config")
        .arg(&cfg)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn missing_tools_are_named_with_the_package_to_install() {
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let e = setup_with_path(empty.path(), cache.path());
    assert!(e.contains("pip"), "{e}");
    assert!(e.contains("apt-get install python3-pip"), "{e}");

    // pip present, cmake missing.
    let bin = tempfile::tempdir().unwrap();
    let python = which("python3");
    std::os::unix::fs::symlink(&python, bin.path().join("python3")).unwrap();
    let e = setup_with_path(bin.path(), cache.path());
    assert!(e.contains("cmake is not installed"), "{e}");
    assert!(e.contains("apt-get install cmake"), "{e}");
}

fn which(program: &str) -> std::path::PathBuf {
    // Resolve pyenv-style shims to the real interpreter.
    let out = Command::new(program)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
