//! The runner's limits and current runner, and what its programs inherit: idle priority, the
//! process group and the governor's cgroup, from the leader down to what it starts.

use super::*;

fn limits(cpus: Option<f64>, jobs: Option<usize>) -> BuildLimits {
    BuildLimits {
        cpus: cpus.map(|c| Cores::new(c).unwrap()),
        jobs: jobs.and_then(NonZeroUsize::new),
    }
}

#[test]
fn the_setup_section_defaults_to_no_cap_and_names_bad_keys() {
    use crate::config::Config;
    let path = std::path::Path::new("mine.toml");
    assert_eq!(Config::builtin().unwrap().setup, BuildLimits::default());
    let c = Config::from_layers(Some((path, "[setup]\ncpus = 0.5\njobs = 2\n"))).unwrap();
    assert_eq!(c.setup, limits(Some(0.5), Some(2)));
    for (text, key) in [
        ("[setup]\ncpus = 0\n", "setup.cpus"),
        ("[setup]\njobs = 0\n", "setup.jobs"),
        ("[setup]\ncpu = 1\n", "unknown field `cpu`"),
    ] {
        let err = Config::from_layers(Some((path, text)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains("mine.toml"),
            "{text}: {err}"
        );
    }
}

#[test]
fn jobs_follow_the_flag_then_the_cap_then_the_cpus() {
    let host = Host::unrestricted(4);
    assert_eq!(Runner::new(limits(None, None), host).jobs(), 4);
    assert_eq!(Runner::new(limits(Some(0.5), None), host).jobs(), 1);
    assert_eq!(Runner::new(limits(Some(1.5), None), host).jobs(), 2);
    assert_eq!(Runner::new(limits(Some(0.5), Some(3)), host).jobs(), 3);
}

#[test]
fn the_entered_runner_is_current_until_its_guard_drops() {
    let host = Host::unrestricted(8);
    assert_eq!(current().limits(), BuildLimits::default());
    {
        let _outer = Runner::new(limits(Some(2.0), None), host).enter();
        assert_eq!(current().jobs(), 2);
        {
            let _inner = Runner::new(limits(None, Some(5)), host).enter();
            assert_eq!(current().jobs(), 5);
        }
        assert_eq!(current().jobs(), 2);
        // Another thread has its own (none entered: the default).
        let other = std::thread::spawn(|| current().limits()).join().unwrap();
        assert_eq!(other, BuildLimits::default());
    }
    assert_eq!(current().limits(), BuildLimits::default());
}

/// (policy, nice, process group, cgroup v2/v1 cpu lines) of a process, from /proc.
#[cfg(target_os = "linux")]
fn scheduling(pid: i32) -> (u32, i64, i32, String) {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/sched")).unwrap();
    let policy = sched
        .lines()
        .find(|l| l.starts_with("policy"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name: state is field 3, pgrp 5, nice 19.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let pgrp = rest[2].parse().unwrap();
    let nice = rest[16].parse().unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    (policy, nice, pgrp, cgroup)
}

#[cfg(target_os = "linux")]
#[test]
fn programs_and_what_they_start_run_idle_in_their_group_and_cgroup() {
    use std::io::BufRead;
    let runner = Runner::new(BuildLimits::default(), Host::detect());
    // The shell starts a grandchild after a while, as cmake starts ninja and ninja the
    // compilers, and says its pid.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 0.2; sleep 30 & echo $!; wait"])
        .stdout(Stdio::piped());
    let mut running = runner.spawn(cmd).unwrap();
    let leader = running.pid();
    let out = running.child().stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    let grandchild: i32 = line.trim().parse().unwrap();
    let group = running.cgroup();
    for pid in [leader, grandchild] {
        let (policy, nice, pgrp, cgroup) = scheduling(pid);
        assert_eq!(policy, libc::SCHED_IDLE as u32, "pid {pid}");
        assert_eq!(nice, 19, "pid {pid}");
        assert_eq!(pgrp, leader, "pid {pid}");
        if let Some(group) = &group {
            let name = group.file_name().unwrap().to_str().unwrap();
            assert!(cgroup.contains(name), "pid {pid} not in {name}: {cgroup}");
        }
    }
    // Where a cgroup is writable the governor gave the group one carrying the priority.
    if crate::governor::cgroup::detect().is_some() {
        let group = group
            .as_ref()
            .expect("a writable cgroup: the build gets one");
        let idle = std::fs::read_to_string(group.join("cpu.idle"));
        let shares = std::fs::read_to_string(group.join("cpu.shares"));
        let weight = std::fs::read_to_string(group.join("cpu.weight"));
        assert!(
            idle.is_ok_and(|v| v.trim() == "1")
                || shares.is_ok_and(|v| v.trim() == "2")
                || weight.is_ok_and(|v| v.trim() == "1"),
            "{} carries no idle priority",
            group.display()
        );
    }
    // Dropped before its end: the whole group goes.
    drop(running);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while matches!(crate::meter::process_state(grandchild), Some(s) if s != 'Z') {
        assert!(
            std::time::Instant::now() < deadline,
            "the grandchild outlived the drop"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if let Some(group) = group {
        assert!(!group.exists(), "{} left behind", group.display());
    }
}

/// A capped program that starts its children at once (cmake starting ninja, ninja its
/// compilers): the children are born in the capped group too. Moved after the spawn, the
/// leader had already forked and its children ran uncapped.
#[cfg(target_os = "linux")]
#[test]
fn a_capped_program_forking_at_once_keeps_its_children_in_the_cap() {
    use std::io::BufRead;
    let Some(_) = crate::governor::cgroup::detect() else {
        eprintln!("skipped: no writable cgroup here");
        return;
    };
    let runner = Runner::new(limits(Some(0.5), Some(2)), Host::detect());
    for _ in 0..5 {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "sleep 30 & echo $!; sh -c 'sleep 30 & echo $!; wait' & wait",
        ])
        .stdout(Stdio::piped());
        let mut running = runner.spawn(cmd).unwrap();
        let group = running.cgroup().expect("a capped group");
        let name = group.file_name().unwrap().to_str().unwrap().to_owned();
        let quota = std::fs::read_to_string(group.join("cpu.cfs_quota_us"))
            .or_else(|_| std::fs::read_to_string(group.join("cpu.max")))
            .unwrap();
        assert!(
            !quota.starts_with("-1") && !quota.starts_with("max"),
            "{quota}"
        );
        let out = std::io::BufReader::new(running.child().stdout.take().unwrap());
        let pids: Vec<i32> = out
            .lines()
            .take(2)
            .map(|l| l.unwrap().trim().parse().unwrap())
            .collect();
        for pid in pids.into_iter().chain([running.pid()]) {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(cgroup.contains(&name), "pid {pid} escaped {name}: {cgroup}");
        }
    }
}

#[test]
fn status_output_and_probe() {
    let runner = Runner::new(limits(Some(0.5), None), Host::detect());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
    let out = runner.output(cmd).unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // Gone before the governor could hold it: its exit, not an error.
    assert!(runner.status(Command::new("true")).unwrap().success());
    assert!(runner.probe(Command::new("true")));
    assert!(!runner.probe(Command::new("false")));
    assert!(!runner.probe(Command::new("/nonexistent/program")));
    let err = runner
        .status(Command::new("/nonexistent/program"))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

/// A reader that burns about 2 ms of CPU per read, as decompressing does.
struct Burning;

impl io::Read for Burning {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let until = thread_cpu().unwrap() + std::time::Duration::from_millis(2);
        while thread_cpu().unwrap() < until {
            std::hint::black_box(0u64);
        }
        Ok(buf.len().min(1))
    }
}

#[test]
fn the_setups_own_work_is_paced_to_its_cap() {
    use std::io::Read;
    let mut buf = [0u8; 1];
    // Capped at a quarter of a core: 200 ms of work take at least 800 ms less the slack,
    // however fast or loaded the machine (load only makes it slower).
    let entered = Runner::new(limits(Some(0.25), None), Host::detect()).enter();
    let mut reader = paced(Burning);
    let (cpu, wall) = (thread_cpu().unwrap(), std::time::Instant::now());
    for _ in 0..100 {
        reader.read_exact(&mut buf).unwrap();
    }
    let used = thread_cpu().unwrap() - cpu;
    assert!(
        wall.elapsed() >= used.mul_f64(4.0) - 2 * PACE_SLACK,
        "{used:?} of CPU in {:?}",
        wall.elapsed()
    );
    drop(entered);
    // No runner entered, no cap, or one of a core or more (a thread uses at most one): no
    // pause.
    assert!(paced(Burning).cores.is_none());
    for cpus in [None, Some(1.0)] {
        let _entered = Runner::new(limits(cpus, None), Host::detect()).enter();
        assert!(paced(Burning).cores.is_none());
    }
}
