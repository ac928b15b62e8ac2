//! The `limit` subcommand against a real CPU burner: the budget holds, the target is left
//! running after SIGTERM, a spawned target dies with a SIGKILLed limiter, errors are clear.

use sentinel_supervisor::host::Host;
use sentinel_supervisor::meter;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sentinel_supervisor::os::process::signal_group;

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_sentinel-supervisor");

/// Kills the process (group) on drop, so a failed assertion leaves nothing spinning.
struct Killed(Child, bool);

impl Drop for Killed {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        if self.1 {
            // Continued first, then killed: the whole group, stopped or not.
            let _ = signal_group(pid, Signal::SIGKILL);
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn burner(threads: u32) -> Killed {
    let child = Command::new(crate::support::burner())
        .args(["--threads", &threads.to_string(), "--seconds", "60"])
        .process_group(0)
        .spawn()
        .expect("start cpu-burner");
    Killed(child, true)
}

fn limiter(args: &[&str]) -> Killed {
    let child = Command::new(SUPERVISOR)
        .args(["limit", "-q"])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("start sentinel-supervisor limit");
    Killed(child, false)
}

/// `limit --cpus 0.5 -- cpu-burner ARGS`.
fn burner_at_half_core(burner_args: &[&str]) -> Killed {
    let mut args = vec!["--cpus", "0.5", "--", crate::support::burner()];
    args.extend_from_slice(burner_args);
    limiter(&args)
}

/// The pid of `parent`'s child, waiting up to 5 s for it to appear.
fn child_of(parent: u32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("pgrep")
            .args(["-P", &parent.to_string()])
            .output()
            .expect("run pgrep");
        if let Some(pid) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "limit never started its command");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Measures `pid`'s CPU in cores over `window`, and what the rest of the machine used (in cores).
fn measure(pid: i32, window: Duration) -> (f64, f64) {
    let host = Host::detect();
    let cpu0 = meter::process_cpu(pid).expect("target alive");
    let sys0 = meter::system_times(host.online_cpus).expect("system times");
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu1 = meter::process_cpu(pid).expect("target alive");
    let sys1 = meter::system_times(host.online_cpus).expect("system times");
    let wall = t0.elapsed().as_secs_f64();
    let cores = (cpu1 - cpu0).as_secs_f64() / wall;
    let machine = host.machine_share_to_cores(sys1.busy_fraction_since(&sys0));
    let others = (machine - cores).max(0.0);
    (cores, others)
}

/// The budget holds: never above 0.55 cores; at least 0.45 unless other processes left the
/// burner no room to reach it (a saturated CI machine), which is reported, not hidden.
fn assert_half_core(pid: i32) {
    std::thread::sleep(Duration::from_secs(1));
    let (cores, others) = assert_at_most_half_core(pid, Duration::from_secs(3));
    let ncpus = Host::detect().allowed_cores();
    if others <= ncpus - 0.6 {
        assert!(
            cores >= 0.45,
            "burner used only {cores:.3} cores of a 0.5 budget"
        );
    } else {
        eprintln!("machine saturated by other processes: lower bound not checked");
    }
}

/// The upper half of [`assert_half_core`], over a window starting now; returns the burner's
/// cores and the other processes'.
fn assert_at_most_half_core(pid: i32, window: Duration) -> (f64, f64) {
    let (cores, others) = measure(pid, window);
    eprintln!("burner used {cores:.3} cores; other processes {others:.2} cores");
    assert!(
        cores <= 0.55,
        "burner used {cores:.3} cores under a 0.5 budget"
    );
    (cores, others)
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn command_mode_holds_half_a_core() {
    let _cpu = crate::support::exclusive();
    let limiter = burner_at_half_core(&["--threads", "2"]);
    let pid = child_of(limiter.0.id());
    assert_half_core(pid);
}

#[test]
fn command_mode_gives_the_budget_to_one_computing_thread_among_idle_ones() {
    let _cpu = crate::support::exclusive();
    // Five threads, one computing (llama-server's shape): sized for all of them the limiter
    // would hold it to 0.25 cores; it learns which one computes within a feedback window.
    let limiter = burner_at_half_core(&["--threads", "1", "--idle-threads", "4"]);
    let pid = child_of(limiter.0.id());
    std::thread::sleep(Duration::from_secs(2));
    assert_half_core(pid);
}

#[test]
fn command_mode_holds_the_budget_when_an_idle_thread_starts_computing() {
    let _cpu = crate::support::exclusive();
    // One thread computes, one sleeps: the limiter learns to size the run time for one (after
    // its first 1 s feedback window). At 2.9 s the sleeping thread computes too, just before a
    // window ends, so the next count comes a whole window later: without watching the CPU
    // clock between counts the program would run at twice the budget until then.
    let limiter = burner_at_half_core(&[
        "--threads",
        "1",
        "--idle-threads",
        "1",
        "--wake-after",
        "2.9",
        "--seconds",
        "30",
    ]);
    let pid = child_of(limiter.0.id());
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(2900 + 300).saturating_sub(started.elapsed()));
    assert_eq!(meter::thread_count(pid), Some(2));
    // Right after the wake-up: no second at twice the budget.
    assert_at_most_half_core(pid, Duration::from_secs(2));
    // Then the feedback settles on the budget again, now for two computing threads.
    assert_half_core(pid);
}

#[test]
fn pid_mode_holds_half_a_core_and_sigterm_leaves_the_target_running() {
    let _cpu = crate::support::exclusive();
    let burner = burner(2);
    let pid = burner.0.id() as i32;
    let mut limiter = limiter(&["--cpus", "0.5", "--pid", &pid.to_string()]);
    assert_half_core(pid);
    crate::support::kill(limiter.0.id() as i32, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut limiter.0, Duration::from_secs(5));
    assert!(status.success(), "limit exited with {status}");
    for _ in 0..20 {
        let state = meter::process_state(pid);
        assert!(
            matches!(state, Some('R' | 'S')),
            "burner state {state:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (cores, others) = measure(pid, Duration::from_millis(500));
    let ncpus = Host::detect().allowed_cores();
    if others <= ncpus - 1.0 {
        assert!(
            cores > 0.6,
            "burner not running freely after the limiter left: {cores:.2}"
        );
    }
}

/// Context switches of a single-threaded process so far (every stop and continue adds some).
fn switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("target alive");
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[test]
fn limit_rests_on_an_idle_target_and_throttles_it_again_when_it_works() {
    let _cpu = crate::support::exclusive();
    // Idle for 3 s (a shell waiting for `sleep`), then the same pid becomes a busy burner.
    let script = format!(
        "sleep 3; exec {} --threads 1 --seconds 30",
        crate::support::burner()
    );
    let limiter = limiter(&["--cpus", "0.5", "--", "sh", "-c", &script]);
    let pid = child_of(limiter.0.id());
    // Throttling from the start: the idle shell is stopped and continued every period.
    let s0 = switches(pid);
    std::thread::sleep(Duration::from_millis(300));
    let early = switches(pid) - s0;
    // After a second of idleness the limiter rests: no more stops, so no more switches.
    std::thread::sleep(Duration::from_millis(1500));
    let s1 = switches(pid);
    std::thread::sleep(Duration::from_millis(700));
    let resting = switches(pid) - s1;
    eprintln!(
        "switches of the idle target: {early} in the first 300 ms, {resting} in 700 ms of rest"
    );
    assert!(
        early >= 5,
        "the idle target was not throttled at first ({early} switches)"
    );
    assert!(
        resting <= 2,
        "the limiter kept stopping an idle target ({resting} switches in 700 ms)"
    );
    // Work again: throttled within a period, and the budget holds.
    let deadline = Instant::now() + Duration::from_secs(5);
    while meter::process_state(pid) != Some('T') {
        assert!(
            Instant::now() < deadline,
            "the working target was never throttled again"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_half_core(pid);
}

#[test]
fn sigkill_of_the_limiter_kills_the_command_it_started() {
    let _cpu = crate::support::exclusive();
    let mut limiter = limiter(&[
        "--cpus",
        "0.2",
        "--",
        crate::support::burner(),
        "--threads",
        "2",
    ]);
    let pid = child_of(limiter.0.id());
    let deadline = Instant::now() + Duration::from_secs(3);
    while meter::process_state(pid) != Some('T') {
        assert!(Instant::now() < deadline, "the command was never throttled");
        std::thread::sleep(Duration::from_millis(2));
    }
    limiter.0.kill().expect("SIGKILL the limiter");
    limiter.0.wait().expect("reap the limiter");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !matches!(meter::process_state(pid), None | Some('Z')) {
        assert!(
            Instant::now() < deadline,
            "the throttled command outlived its limiter"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn command_exit_code_is_passed_through() {
    let _cpu = crate::support::exclusive();
    let out = run_limit(&["--cpus", "0.5", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
}

fn run_limit(args: &[&str]) -> Output {
    Command::new(SUPERVISOR)
        .arg("limit")
        .args(args)
        .output()
        .expect("run sentinel-supervisor limit")
}

#[test]
fn bad_invocations_say_what_to_do() {
    let _cpu = crate::support::exclusive();
    let stderr = |args: &[&str]| {
        let out = run_limit(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The same words as `cpus = 0` in a config file (see `supervisor::bad_input_is_a_clear_error_before_anything_starts`).
    assert!(stderr(&["--cpus", "0", "--pid", "1"]).contains("CPU budget 0 is out of range"));
    assert!(
        stderr(&["--cpus", "0.5", "--adaptive", "1.5", "--pid", "1"])
            .contains("share 1.5 is out of range")
    );
    assert!(stderr(&["--cpus", "999", "--pid", "1"]).contains("at most"));
    assert!(stderr(&["--cpus", "0.5"]).contains("nothing to limit"));
    assert!(stderr(&["--cpus", "0.5", "--pid", "2147483000"]).contains("no process"));
    assert!(stderr(&["--cpus", "0.5", "--", "/nonexistent/cmd"]).contains("could not start"));
}

// CPU affinity is Linux's (macOS has none to set).
#[cfg(target_os = "linux")]
/// The first CPU this test may run on: the user's process and the model share it.
fn shared_cpu() -> usize {
    let mask = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
    (0..nix::sched::CpuSet::count())
        .find(|&cpu| mask.is_set(cpu).unwrap_or(false))
        .expect("at least one allowed CPU")
}

// CPU affinity is Linux's (macOS has none to set).
#[cfg(target_os = "linux")]
/// `cmd` runs on `cpu` only (its children inherit the mask).
fn pin(cmd: &mut Command, cpu: usize) -> &mut Command {
    // SAFETY: sched_setaffinity is a plain system call on the forked child.
    unsafe {
        cmd.pre_exec(move || {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu).map_err(std::io::Error::from)?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                .map_err(std::io::Error::from)
        })
    }
}

/// (For the Linux test below.)
#[cfg(target_os = "linux")]
/// `cmd` starts its own session (and process group), as a user's program is never in the
/// supervisor's session: with autogroups each session competes as a group of normal weight,
/// so a priority that holds only inside the supervisor's session would not show here.
fn own_session(cmd: &mut Command) -> &mut Command {
    // SAFETY: setsid is a plain system call on the forked child.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        })
    }
}

/// Issue 14 item 4: a model limited to half a core at a low priority and a user's CPU-bound
/// process on the same CPU: the user's process gets at least 90 % of what the two of them get,
/// under the duty cycle and under the kernel cap. (Before the cgroup carried the priority, the
/// cap's group competed with the default weight and the user got half.) The share is of the two
/// processes' CPU time, not of the wall: other processes on this busy machine take their part
/// of that CPU too. The user's process runs in its own session: under the duty cycle the
/// model's `SCHED_IDLE` alone held only inside the supervisor's session autogroup (the user in
/// another session got 44 %) until the backend got an uncapped cgroup carrying its priority.
#[cfg(target_os = "linux")]
#[test]
fn the_user_wins_a_shared_cpu_at_low_priority_under_every_method() {
    // Two processes burn a CPU for 16 s: no other CPU-measuring test may run meanwhile.
    let _cpu = crate::support::exclusive();
    let cpu = shared_cpu();
    let cgroup = sentinel_supervisor::governor::cgroup::detect().is_some();
    for method in ["signals", "cgroup"] {
        if method == "cgroup" && !cgroup {
            eprintln!("no writable cgroup here: the cgroup method is not checked");
            continue;
        }
        for priority in ["idle", "background"] {
            let user = Killed(
                own_session(pin(
                    Command::new(crate::support::burner()).args([
                        "--threads",
                        "1",
                        "--seconds",
                        "60",
                    ]),
                    cpu,
                ))
                .spawn()
                .expect("start the user's cpu-burner"),
                true,
            );
            let limiter = Killed(
                pin(
                    Command::new(SUPERVISOR)
                        .args(["limit", "-q", "--cpus", "0.5", "--threads", "1"])
                        .args([
                            "--method",
                            method,
                            "--priority",
                            priority,
                            "--",
                            crate::support::burner(),
                        ])
                        .stdout(Stdio::null()),
                    cpu,
                )
                .spawn()
                .expect("start sentinel-supervisor limit"),
                false,
            );
            let model = child_of(limiter.0.id());
            let user_pid = user.0.id() as i32;
            std::thread::sleep(Duration::from_secs(1));
            let (u0, m0) = (meter::process_cpu(user_pid), meter::process_cpu(model));
            std::thread::sleep(Duration::from_secs(3));
            let (u1, m1) = (meter::process_cpu(user_pid), meter::process_cpu(model));
            let user_cpu = (u1.unwrap() - u0.unwrap()).as_secs_f64();
            let model_cpu = (m1.expect("model alive") - m0.expect("model alive")).as_secs_f64();
            let share = user_cpu / (user_cpu + model_cpu);
            eprintln!(
                "{method}/{priority}: user {user_cpu:.2} s, model {model_cpu:.2} s of CPU in 3 s: \
                 the user got {:.1} %",
                share * 100.0
            );
            assert!(
                share >= 0.90,
                "{method}/{priority}: the user got only {:.1} % of the shared CPU",
                share * 100.0
            );
            let _ = signal_group(model, Signal::SIGKILL);
            drop(limiter);
            drop(user);
        }
    }
}

/// Issue 14 item 5: adaptive mode (`adaptive = 0.6` of a 1-core budget, floor 0.25 cores) with
/// requests shorter than the feedback window (0.3 s answers that burn a core, 0.2 s apart):
/// once a user's load fills the machine, `/status` shows the budget at its floor within 1.5 s,
/// and it climbs back slowly once the load stops. (Before, the duty cycle started a fresh 1 s
/// window at each request, no window closed, and the budget stayed at 1.0.)
#[test]
fn adaptive_budget_drops_to_its_floor_with_requests_shorter_than_the_window() {
    // It fills the machine with a user's load on purpose.
    let _cpu = crate::support::exclusive();
    use crate::support::{Options, Supervisor};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const FLOOR: f64 = 0.25;
    let s = Supervisor::start(Options {
        fake: true,
        config: "[profiles.balanced]\ncpus = 1.0\nthreads = 1\nadaptive = 0.6\n\
                 [governor]\nmethod = \"signals\"\nadaptive_floor = 0.25\n",
        env: vec![("FAKE_BACKEND_MODE", "burn,response-delay=300ms".into())],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(20));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, url, http) = (Arc::clone(&stop), s.url.clone(), s.client());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = http
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&serde_json::json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}))
                    .send();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let budget = |s: &Supervisor| {
        s.status()
            .governor
            .and_then(|g| g.budget_cpus)
            .expect("a governor budget in /status")
    };
    // Other processes on this machine may keep it loaded: wait for the budget to be clear of
    // the floor before the user's load starts, else the drop cannot be timed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut before = budget(&s);
    while before < FLOOR + 0.1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        before = budget(&s);
    }
    let user = burner(Host::detect().online_cpus as u32);
    let t0 = Instant::now();
    let mut now = budget(&s);
    while now > FLOOR + 1e-6 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(25));
        now = budget(&s);
    }
    let dropped = t0.elapsed();
    eprintln!("budget {before:.2} -> {now:.2} cores {dropped:?} after the user's load started");
    assert!(
        (now - FLOOR).abs() < 1e-6,
        "budget {now} never reached the floor\n{}",
        s.logs()
    );
    if before >= FLOOR + 0.1 {
        assert!(
            dropped <= Duration::from_millis(1500),
            "the floor took {dropped:?}"
        );
    } else {
        eprintln!("the machine was loaded by other processes: the drop is not timed");
    }
    drop(user);
    std::thread::sleep(Duration::from_secs(2));
    let after = budget(&s);
    eprintln!("budget 2 s after the user's load stopped: {after:.2} cores");
    assert!(after < 0.6, "recovered too fast: {after} cores after 2 s");
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
}
