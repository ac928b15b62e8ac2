//! The backend ladder with the fake llama-server standing in for every build in a cache the
//! test prepares: a SIGILL in the smoke test is named, the next rung is tried, the verdicts are
//! recorded and reused at the next start; a user's `backend.bin` that SIGILLs is reported, never
//! replaced.

use crate::support::{fake, Options, Supervisor, BIN};
use sentinel_supervisor::backend::build::{BuildDir, Flavor};
use sentinel_supervisor::backend::model::default_model_path;
use sentinel_supervisor::backend::pin::{ModelPin, SourcePin};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A cache whose builds of `flavors` are the fake backend (stamped, as a finished build) and
/// whose default model is a small fake file marked verified. Returns the config file's text.
fn fake_cache(cache: &Path, flavors: &[Flavor]) -> String {
    let pin = SourcePin::builtin();
    for &flavor in flavors {
        let dir = BuildDir::new(cache, &pin, flavor);
        std::fs::create_dir_all(dir.bin_dir()).unwrap();
        std::os::unix::fs::symlink(fake(), dir.binary(&pin)).unwrap();
        std::fs::write(dir.stamp(), "fake build for a test").unwrap();
    }
    let models = ModelPin::builtin();
    let model = default_model_path(cache, &models);
    std::fs::create_dir_all(model.parent().unwrap()).unwrap();
    std::fs::write(&model, b"GGUF fake default model").unwrap();
    std::fs::write(model.with_extension("gguf.verified"), &models.sha256).unwrap();
    format!("[backend]\ncache_dir = \"{}\"\n", cache.display())
}

fn verdicts(cache: &Path) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = std::fs::read_dir(cache.join("verdicts"))
        .map(|d| {
            d.map(|e| {
                let p: PathBuf = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

fn starts(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_sigill_climbs_one_rung_records_it_and_is_skipped_next_start() {
    let cache = tempfile::tempdir().unwrap();
    let config = fake_cache(cache.path(), &[Flavor::Native]);
    let starts_file = cache.path().join("starts");
    let mode = format!(
        "sigill-unless=--no-repack,starts-file={}",
        starts_file.display()
    );
    let options = || Options {
        fake: true,
        from_cache: true,
        config: &config,
        env: vec![("FAKE_BACKEND_MODE", mode.clone())],
        ..Default::default()
    };
    let s = Supervisor::start(options());
    s.wait_health(200, Duration::from_secs(60));
    let logs = s.logs();
    assert!(
        logs.contains("llama-server used a CPU instruction this machine refuses (SIGILL) in its CPU variant `fakeamx`"),
        "{logs}"
    );
    assert!(
        logs.contains("backend in use") && logs.contains("rung=native --no-repack"),
        "{logs}"
    );
    let status = s.status();
    let rung = status.backend_rung.expect("/status names the backend");
    assert_eq!(rung.rung, "native --no-repack");
    assert_eq!(rung.args, ["--no-repack"]);
    assert!(
        rung.why
            .contains("native: failed: llama-server used a CPU instruction"),
        "{}",
        rung.why
    );
    // The native smoke test, the --no-repack one, the backend that serves.
    assert_eq!(starts(&starts_file), 3);
    let recorded = verdicts(cache.path());
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    let native = recorded
        .iter()
        .find(|(n, _)| n.ends_with("-native.toml"))
        .unwrap();
    assert!(
        native.1.contains("passed = false") && native.1.contains("SIGILL"),
        "{native:?}"
    );
    let no_repack = recorded
        .iter()
        .find(|(n, _)| n.ends_with("-native-no-repack.toml"))
        .unwrap();
    assert!(no_repack.1.contains("passed = true"), "{no_repack:?}");
    assert!(
        no_repack.1.contains("tokens_per_second = 123.0"),
        "{no_repack:?}"
    );
    drop(s);

    // The next start reuses both verdicts: no smoke test, no SIGILL, straight to the rung.
    let s = Supervisor::start(options());
    s.wait_health(200, Duration::from_secs(60));
    assert_eq!(starts(&starts_file), 4, "{}", s.logs());
    assert!(!s.logs().contains("smoke test:"), "{}", s.logs());
    assert_eq!(s.status().backend_rung.unwrap().rung, "native --no-repack");
    assert_eq!(verdicts(cache.path()), recorded);
}

/// A rung whose smoke test passed (at an earlier start) and that dies by SIGILL at run time:
/// the lifecycle records it, climbs, and `/status` names the rung it climbed to.
#[test]
fn a_sigill_at_run_time_climbs_and_status_names_the_new_rung() {
    let cache = tempfile::tempdir().unwrap();
    let config = fake_cache(cache.path(), &[Flavor::Native]);
    let options = |mode: &str| Options {
        fake: true,
        from_cache: true,
        config: &config,
        env: vec![("FAKE_BACKEND_MODE", mode.to_string())],
        ..Default::default()
    };
    let s = Supervisor::start(options("response-delay=1ms"));
    s.wait_health(200, Duration::from_secs(60));
    assert_eq!(s.status().backend_rung.unwrap().rung, "native");
    drop(s);

    // The native verdict (passed) is reused: no smoke test; the backend SIGILLs as it loads.
    let s = Supervisor::start(options("sigill-unless=--no-repack"));
    s.wait_health(200, Duration::from_secs(60));
    let logs = s.logs();
    assert!(
        logs.contains("moving to the next rung of the backend ladder"),
        "{logs}"
    );
    let rung = s.status().backend_rung.expect("/status names the backend");
    assert_eq!(rung.rung, "native --no-repack", "{logs}");
    assert_eq!(rung.args, ["--no-repack"]);
}

#[test]
fn a_sigill_on_every_rung_is_reported_rung_by_rung() {
    let cache = tempfile::tempdir().unwrap();
    let config = fake_cache(
        cache.path(),
        &[Flavor::Native, Flavor::Portable, Flavor::Baseline],
    );
    let cfg = cache.path().join("config.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(BIN)
        .arg("setup")
        .arg("--config")
        .arg(&cfg)
        .env("FAKE_BACKEND_MODE", "sigill-unless=--never-given")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no build of llama-server runs on this CPU"),
        "{stderr}"
    );
    for rung in [
        "native: failed: llama-server used a CPU instruction this machine refuses (SIGILL)",
        "native --no-repack: failed: llama-server used a CPU instruction",
        "portable: failed: llama-server used a CPU instruction",
        "portable without fakeamx: failed: llama-server used a CPU instruction",
        "baseline: failed: llama-server used a CPU instruction",
    ] {
        assert!(stderr.contains(rung), "`{rung}` missing:\n{stderr}");
    }
    assert_eq!(verdicts(cache.path()).len(), 5);
}

#[test]
fn a_user_backend_bin_that_sigills_is_reported_and_never_replaced() {
    let cache = tempfile::tempdir().unwrap();
    // A native build that would run is in the cache: it must not be used instead.
    let config = fake_cache(cache.path(), &[Flavor::Native]);
    let cfg = cache.path().join("config.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(BIN)
        .arg("setup")
        .arg("--config")
        .arg(&cfg)
        .arg("--backend-bin")
        .arg(fake())
        .env("FAKE_BACKEND_MODE", "sigill-unless=--never-given")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("the llama-server of `backend.bin` ({}) failed its smoke test on this CPU: llama-server used a CPU instruction this machine refuses (SIGILL)", fake())),
        "{stderr}"
    );
    assert!(stderr.contains("never replaced"), "{stderr}");
    let recorded = verdicts(cache.path());
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(recorded[0].0.ends_with("-backend-bin.toml"), "{recorded:?}");
}

#[test]
fn a_user_backend_bin_that_sigills_at_run_time_fails_at_once_without_a_crash_loop() {
    // No default model in the cache: no smoke test at setup, so the SIGILL comes at run time.
    let cache = tempfile::tempdir().unwrap();
    let config = format!("[backend]\ncache_dir = \"{}\"\n", cache.path().display());
    let starts_file = cache.path().join("starts");
    let s = Supervisor::start(Options {
        fake: true,
        config: &config,
        env: vec![(
            "FAKE_BACKEND_MODE",
            format!(
                "sigill-unless=--never-given,starts-file={}",
                starts_file.display()
            ),
        )],
        ..Default::default()
    });
    let health = s.wait_state("failed", Duration::from_secs(30));
    let reason = health["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.starts_with("llama-server used a CPU instruction this machine refuses (SIGILL)"),
        "{reason}"
    );
    assert!(reason.contains("restarting cannot help"), "{reason}");
    assert_eq!(s.status().backend_rung.unwrap().rung, "backend.bin");
    // No retries: one start, and still one a moment later.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(starts(&starts_file), 1, "{}", s.logs());
    assert_eq!(s.status().restarts, 0, "{}", s.logs());
}

/// The smoke test is part of the install: `setup` runs it as it runs the build, at idle
/// priority and, where a cgroup is writable, in a cgroup of the governor's holding the
/// `[setup] cpus` cap.
#[cfg(target_os = "linux")]
#[test]
fn setup_runs_its_smoke_test_at_idle_priority_under_the_setup_cap() {
    let cache = tempfile::tempdir().unwrap();
    let config = fake_cache(cache.path(), &[Flavor::Native]);
    let cfg = cache.path().join("config.toml");
    std::fs::write(&cfg, format!("{config}\n[setup]\ncpus = 0.5\n")).unwrap();
    let starts_file = cache.path().join("starts");
    let out = Command::new(BIN)
        .args(["setup", "--config"])
        .arg(&cfg)
        .env(
            "FAKE_BACKEND_MODE",
            format!("starts-file={}", starts_file.display()),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let started = std::fs::read_to_string(&starts_file).unwrap();
    assert_eq!(started.lines().count(), 1, "{started}");
    assert!(
        started.contains(&format!(" policy={} ", libc::SCHED_IDLE)),
        "the smoke test did not run at idle priority: {started}"
    );
    // A writable cgroup v1 `cpu` hierarchy (as on the CI machines): the governor's capped group.
    if std::fs::metadata("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        .is_ok_and(|m| !m.permissions().readonly())
        && nix::unistd::geteuid().is_root()
    {
        let cpu = started
            .split(';')
            .find(|c| {
                c.split(':')
                    .nth(1)
                    .is_some_and(|k| k.split(',').any(|k| k == "cpu"))
            })
            .unwrap_or_else(|| panic!("no cpu cgroup line: {started}"));
        assert!(
            cpu.contains("/sentinel-supervisor-"),
            "the smoke test ran outside the setup's capped cgroup: {started}"
        );
    }
}
