//! `check-config` on one fixture per kind of bad configuration (each exits 1 with the key and
//! the file in the error) and on a good one (exit 0, the merged values printed, secrets not).

use crate::support::BIN;
use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

/// Runs `check-config --config FIXTURE`: (exit code, stdout, stderr).
fn check(name: &str) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(fixture(name))
        .env_remove("SENTINEL_API_KEY")
        .env_remove("SENTINEL_CONFIG")
        .output()
        .expect("run sentinel-supervisor check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_bad_fixture_exits_1_naming_the_key_and_the_file() {
    for (name, key, words) in [
        (
            "unknown-key.toml",
            "profiles.balanced",
            "unknown field `threds`",
        ),
        ("wrong-type.toml", "profiles.fast.slots", "invalid type"),
        ("bad-duration.toml", "supervisor.stop_grace", "soon"),
        (
            "cpus-zero.toml",
            "profiles.balanced.cpus",
            "CPU budget 0 is out of range",
        ),
        (
            "adaptive-two.toml",
            "profiles.fast.adaptive",
            "above 0 and at most 1",
        ),
        (
            "unknown-default-profile.toml",
            "default_profile",
            "no profile named `turbo`",
        ),
        ("invalid-syntax.toml", "", "invalid TOML"),
    ] {
        let (code, stdout, stderr) = check(name);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stdout.is_empty(),
            "{name} printed a configuration: {stdout}"
        );
        let file = fixture(name).display().to_string();
        assert!(stderr.contains(&file), "{name}: no file in {stderr}");
        if !key.is_empty() {
            assert!(
                stderr.contains(&format!("key `{key}")),
                "{name}: no key {key} in {stderr}"
            );
        }
        assert!(stderr.contains(words), "{name}: no {words:?} in {stderr}");
    }
}

#[test]
fn a_good_file_exits_0_with_the_merged_values_and_no_secrets() {
    let (code, stdout, stderr) = check("good.toml");
    assert_eq!(code, Some(0), "{stderr}");
    let printed: toml::Table = stdout
        .parse()
        .unwrap_or_else(|e| panic!("not TOML ({e}):\n{stdout}"));
    // The file's values...
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:9123"));
    assert_eq!(printed["default_profile"].as_str(), Some("quiet"));
    assert_eq!(printed["supervisor"]["stop_grace"].as_str(), Some("2s"));
    assert_eq!(printed["profiles"]["quiet"]["cpus"].as_float(), Some(0.25));
    // ...over the defaults, filled in (also the profile keys the file left out).
    assert_eq!(
        printed["supervisor"]["backoff_initial"].as_str(),
        Some("500ms")
    );
    assert_eq!(
        printed["profiles"]["balanced"]["cpus"].as_float(),
        Some(1.0)
    );
    assert_eq!(
        printed["profiles"]["quiet"]["embeddings"].as_bool(),
        Some(false)
    );
    assert_eq!(printed["governor"]["method"].as_str(), Some("auto"));
    // Secrets are counted, never shown.
    assert!(!stdout.contains("sk-fixture-secret"), "{stdout}");
    let keys = printed["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{stdout}");
    assert!(keys.iter().all(|k| k.as_str() == Some("<redacted>")));
    // Every profile as resolved on this host.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("#   quiet: threads 1") && l.ends_with("(default)")),
        "{stdout}"
    );
}

#[test]
fn a_missing_file_exits_1_and_says_what_to_check() {
    let (code, _, stderr) = check("no-such-file.toml");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no-such-file.toml") && stderr.contains("--config"),
        "{stderr}"
    );
}
