//! `sentinel-supervisor bench` runs the bench crate's `sentinel-bench` with the user's arguments,
//! and says how to build it when it is missing.

use crate::support::BIN;
use std::process::Command;

#[test]
fn bench_help_is_the_harness_help() {
    // The harness beside the product's binary, built as the fake is.
    crate::support::fake();
    let out = Command::new(BIN)
        .args(["bench", "--help"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for flag in ["--profile", "--shots", "--foreground", "--settings"] {
        assert!(stdout.contains(flag), "{flag} not in: {stdout}");
    }
    // Its errors come through as they are, with its exit code.
    let out = Command::new(BIN)
        .args(["bench", "--limit", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--profile NAME"));
}

#[test]
fn a_missing_harness_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("sentinel-supervisor");
    std::fs::copy(BIN, &alone).unwrap();
    let out = Command::new(&alone)
        .args(["bench", "-p", "fast"])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p sentinel-bench"),
        "{stderr}"
    );
}
