//! `setup` without root: what it cannot install itself (python3 with pip, a C and C++ compiler)
//! is named with the package to install; cmake and ninja missing from PATH are installed from
//! PyPI into the cache and reused.

use crate::support::BIN;
use sentinel_supervisor::backend::pin::ToolsPin;
use sentinel_supervisor::backend::tools::{self, Origin};
use std::path::{Path, PathBuf};
use std::process::Command;

fn setup_with_path(path: &Path, cache: &Path) -> String {
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
        .env_remove("CXX")
        .env_remove("CC")
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn missing_prerequisites_are_named_with_the_package_to_install() {
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let e = setup_with_path(empty.path(), cache.path());
    assert!(e.contains("python3"), "{e}");
    assert!(e.contains("apt-get install python3 python3-pip"), "{e}");
    assert!(e.contains("macOS"), "{e}");

    // python3 with pip present, no compiler (and no cmake): the compiler is what is missing,
    // cmake is not mentioned since setup installs it itself.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(real_python(), bin.path().join("python3")).unwrap();
    let e = setup_with_path(bin.path(), cache.path());
    assert!(e.contains("a C++ compiler"), "{e}");
    assert!(e.contains("apt-get install g++"), "{e}");
    assert!(e.contains("xcode-select --install"), "{e}");
    assert!(!e.contains("cmake is not installed"), "{e}");
    // Nothing was downloaded before the prerequisites were checked.
    assert!(!cache.path().join("downloads").exists());
    assert!(!cache.path().join("tools").exists());
}

/// The real thing: cmake and ninja absent from PATH are installed from PyPI (hash-checked
/// wheels, ~30 MB) into a venv in a fresh cache, run, and are reused without python or network.
#[test]
fn absent_cmake_and_ninja_are_installed_from_pypi_then_reused_offline() {
    // Its pip and venv run through setup's runner, which `stop_all` (another test of this
    // process) stops everywhere: not at the same time.
    let _lock = crate::support::exclusive();
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let pins = ToolsPin::builtin();
    let python = real_python();
    let started = std::time::Instant::now();
    let first = tools::ensure(
        cache.path(),
        python.to_str().unwrap(),
        empty.path().as_os_str(),
        &pins,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "provisioned in {:.1?}: {}",
        started.elapsed(),
        first.describe()
    );
    assert_eq!(first.cmake.origin, Origin::Provisioned);
    assert_eq!(first.ninja.origin, Origin::Provisioned);
    for t in [&first.cmake, &first.ninja] {
        assert!(
            t.path.starts_with(cache.path().join("tools")),
            "{}",
            t.path.display()
        );
    }
    assert!(
        cache
            .path()
            .join("tools")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|d| d.path().join("venv/bin/python").exists()),
        "installed into a venv"
    );
    let version = |p: &Path| {
        let out = Command::new(p)
            .arg("--version")
            .env("PATH", empty.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{} --version failed", p.display());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let cmake = pins.get("cmake").unwrap();
    assert!(version(&first.cmake.path).contains(&format!("cmake version {}", cmake.version)));
    // The ninja wheel 1.11.1.4 reports the upstream version it builds (1.11.1...).
    assert!(version(&first.ninja.path).starts_with("1.11.1"));

    // Again with a python that does not exist: nothing is installed, the same tools come back.
    let started = std::time::Instant::now();
    let again = tools::ensure(
        cache.path(),
        "/nonexistent/python3",
        empty.path().as_os_str(),
        &pins,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.cmake, first.cmake);
    assert_eq!(again.ninja, first.ninja);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// The interpreter behind `python3` (pyenv-style shims resolved).
fn real_python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A build program run through setup's runner with `[setup] cpus = 0.5` is held near half a
/// core by the governor (a kernel cap on its cgroup where one is writable, else the duty cycle
/// on its group), measured with the process's exact CPU clock. The runner also runs it at idle
/// priority, so on a busy machine it may get less than the cap, never more.
#[test]
fn a_capped_build_program_stays_near_its_budget() {
    use sentinel_supervisor::backend::runner::{BuildLimits, Runner};
    use sentinel_supervisor::host::Host;
    use sentinel_supervisor::meter;
    use sentinel_supervisor::units::Cores;
    use std::time::{Duration, Instant};
    let _lock = crate::support::exclusive();
    let limits = BuildLimits {
        cpus: Some(Cores::new(0.5).unwrap()),
        jobs: None,
    };
    let runner = Runner::new(limits, Host::detect());
    assert_eq!(runner.jobs(), 1);
    let mut burner = Command::new(crate::support::burner());
    burner.args(["--threads", "2", "--seconds", "30"]);
    let running = runner.spawn(burner).unwrap();
    let pid = running.pid();
    if let Some(group) = running.cgroup() {
        // The kernel cap is on the program's cgroup: 0.5 of a period.
        let v1 = std::fs::read_to_string(group.join("cpu.cfs_quota_us"));
        let v2 = std::fs::read_to_string(group.join("cpu.max"));
        let capped = match (v1, v2) {
            (Ok(quota), _) => {
                let period: f64 = std::fs::read_to_string(group.join("cpu.cfs_period_us"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                quota.trim().parse::<f64>().unwrap() / period
            }
            (_, Ok(max)) => {
                let (quota, period) = max.trim().split_once(' ').unwrap();
                quota.parse::<f64>().unwrap() / period.parse::<f64>().unwrap()
            }
            _ => panic!("no cap in {}", group.display()),
        };
        assert!((capped - 0.5).abs() < 1e-6, "cap {capped}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (t0, c0) = (Instant::now(), meter::process_cpu(pid).unwrap());
    let online = Host::detect().online_cpus;
    let s0 = meter::system_times(online).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let used = (meter::process_cpu(pid).unwrap() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let busy = meter::system_times(online)
        .unwrap()
        .busy_fraction_since(&s0)
        * online as f64;
    drop(running);
    let others = busy - used;
    eprintln!(
        "a 2-thread burner under [setup] cpus = 0.5 used {used:.3} cores; everything else {others:.2}"
    );
    assert!(used <= 0.6, "{used:.3} cores: the cap did not hold");
    // At idle priority it gets only what nobody else wants: the lower bound holds only where
    // a core was left over.
    let spare = Host::detect().allowed_cpus() as f64 - others;
    if spare >= 1.0 {
        assert!(
            used >= 0.35,
            "{used:.3} cores with {spare:.2} spare: starved below the cap"
        );
    }
}

/// An interrupted setup stops its programs and what they started: they run in groups of their
/// own, out of reach of a terminal's Ctrl-C. (Here, in one process with the other runner test,
/// under the lock: `stop_all` stops every program of the process.)
#[test]
fn stop_all_ends_every_running_program_and_what_it_started() {
    use sentinel_supervisor::backend::runner::{self, BuildLimits, Runner};
    use sentinel_supervisor::host::Host;
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};
    let _lock = crate::support::exclusive();
    let runner = Runner::new(BuildLimits::default(), Host::detect());
    // As setup::ensure does: the interruption lasts until this setup returns.
    let setup = runner.clone().enter();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 30 & echo $!; wait"])
        .stdout(std::process::Stdio::piped());
    let mut running = runner.spawn(cmd).unwrap();
    let out = running.child().stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    let grandchild: i32 = line.trim().parse().unwrap();
    runner::stop_all();
    let status = running.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(sentinel_supervisor::meter::process_state(grandchild), Some(s) if s != 'Z') {
        assert!(
            Instant::now() < deadline,
            "the grandchild outlived stop_all"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Nothing starts any more: the setup fails at its next step.
    let err = runner.status(Command::new("true")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Interrupted);
    assert!(err.to_string().contains("interrupted"), "{err}");
    drop(setup);
    assert!(runner.status(Command::new("true")).unwrap().success());
}
