//! The adaptive arithmetic on restricted hosts, and the limiter on a real child: it rests,
//! throttles, counts the stopped time, and continues the child whatever ends it.

use super::*;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Others keep one core busy on an 8-CPU machine whose affinity mask (or quota) leaves this
/// process 2 cores; the child uses 0.5. Adaptive at 75 % of what this process may use:
/// room = 0.75 * 2 - 1 = 0.5 cores, whatever the machine's other 6 CPUs do.
#[test]
fn adaptive_counts_others_in_cores_on_a_restricted_host() {
    use crate::host::{CpuQuota, QuotaSource};
    let params = AdaptiveParams {
        base: 1.0,
        target: 0.75,
        floor: 0.1,
        recover_per_sec: 0.1,
    };
    let machine_busy = 1.5 / 8.0;
    let pinned = Host {
        online_cpus: 8,
        affinity_cpus: 2,
        last_allowed_cpu: Some(1),
        quota: None,
    };
    let quota = Host {
        online_cpus: 8,
        affinity_cpus: 8,
        last_allowed_cpu: Some(7),
        quota: Some(CpuQuota {
            cores: 2.0,
            source: QuotaSource::CgroupV2,
        }),
    };
    for host in [pinned, quota] {
        let mut budget = AdaptiveBudget::new(params);
        let now = adapt(
            &mut budget,
            &host,
            machine_busy,
            0.5,
            Duration::from_secs(1),
        );
        assert!((now - 0.5).abs() < 1e-9, "{host:?}: budget {now}");
    }
    // An unrestricted machine: the same readings mean the same thing as before.
    let mut budget = AdaptiveBudget::new(params);
    let now = adapt(
        &mut budget,
        &Host::unrestricted(2),
        0.75,
        0.5,
        Duration::from_secs(1),
    );
    assert!((now - 0.5).abs() < 1e-9, "budget {now}");
}

fn spawn_sleep() -> (Child, PinnedPid) {
    let child = Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap();
    let target = PinnedPid::open(child.id() as i32).unwrap();
    (child, target)
}

fn params(cpus: f64) -> LimiterParams {
    LimiterParams {
        cpus,
        usable: Some(1),
        period: Duration::from_millis(20),
        feedback: crate::config::Config::builtin()
            .unwrap()
            .governor
            .feedback(),
        adaptive: None,
        host: Host::detect(),
        stopped: StoppedTime::default(),
    }
}

/// Continued: sleeping, or momentarily runnable right after SIGCONT woke it.
fn running(pid: i32) -> bool {
    matches!(crate::meter::process_state(pid), Some('S' | 'R'))
}

fn wait_state(pid: i32, pred: impl Fn(Option<char>) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if pred(crate::meter::process_state(pid)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn rests_when_idle_and_throttles_when_active() {
    let (mut child, target) = spawn_sleep();
    let pid = child.id() as i32;
    let activity = Activity::new();
    // A tiny budget: the child is stopped ~98 % of each period while active.
    let params = params(0.02);
    let stopped = params.stopped.clone();
    let mut limiter = SignalLimiter::start(target, params, &activity).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!limiter.snapshot().throttling);
    assert!(wait_state(pid, |s| s == Some('S')));
    assert_eq!(stopped.total(), Duration::ZERO, "resting stops nothing");
    let guard = activity.begin();
    assert!(wait_state(pid, |s| s == Some('T')), "never stopped");
    assert!(limiter.snapshot().throttling);
    drop(guard);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!limiter.snapshot().throttling);
    // The periods it held the child stopped are counted where it was told to count them.
    assert!(stopped.total() > Duration::ZERO);
    for _ in 0..20 {
        assert!(running(pid), "{:?}", crate::meter::process_state(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    let _busy = activity.begin();
    assert!(wait_state(pid, |s| s == Some('T')));
    limiter.stop();
    limiter.stop();
    assert!(running(pid), "{:?}", crate::meter::process_state(pid));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn drop_continues_the_child() {
    let (mut child, target) = spawn_sleep();
    let pid = child.id() as i32;
    let activity = Activity::new();
    let _busy = activity.begin();
    let limiter = SignalLimiter::start(target, params(0.02), &activity).unwrap();
    assert!(wait_state(pid, |s| s == Some('T')));
    drop(limiter);
    assert!(running(pid), "{:?}", crate::meter::process_state(pid));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn ends_when_the_child_is_gone() {
    let (mut child, target) = spawn_sleep();
    let activity = Activity::new();
    let _busy = activity.begin();
    let limiter = SignalLimiter::start(target, params(0.5), &activity).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !limiter.snapshot().finished {
        assert!(Instant::now() < deadline, "limiter kept running");
        std::thread::sleep(Duration::from_millis(10));
    }
}
