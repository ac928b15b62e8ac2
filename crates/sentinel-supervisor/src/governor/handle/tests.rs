//! The governor on a real `sleep` child: off and duty-cycle snapshots, retuning and moving
//! its reports, and the errors that come before anything is touched.

use super::*;
use crate::governor::snapshot::GovernorState;
use crate::governor::Priority;
use std::os::unix::process::CommandExt;
use std::time::Duration;

fn report() -> SnapshotSender {
    tokio::sync::watch::channel(None).0
}

/// A child that does nothing for 30 s, leading its own process group.
fn sleep_child() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap()
}

fn shipped() -> GovernorConfig {
    crate::config::Config::builtin().unwrap().governor
}

fn settings(cpus: Option<f64>) -> GovernorSettings {
    GovernorSettings {
        cpus: cpus.map(|c| Cores::new(c).unwrap()),
        threads: Some(1),
        priority: Priority::Background,
        adaptive: None,
        host: crate::host::Host::detect(),
        method: Method::Signals,
        period: Duration::from_millis(20),
    }
}

#[test]
fn unlimited_is_off_and_signals_reports_resting() {
    let mut child = sleep_child();
    let pid = child.id() as i32;
    let cfg = shipped();
    let off = Governor::start(
        pid,
        &cfg,
        settings(None),
        Activity::new(),
        Default::default(),
        report(),
    )
    .unwrap();
    let snap = off.snapshot().unwrap();
    assert_eq!(snap.method, Method::Off);
    assert_eq!(snap.state, GovernorState::Off);
    // The shipped `governor.method` is `auto`: the settings' method (a profile's) wins.
    assert_eq!(cfg.method, Method::Auto);
    let tx = report();
    let rx = tx.subscribe();
    let mut handle = Governor::start(
        pid,
        &cfg,
        settings(Some(0.5)),
        Activity::new(),
        Default::default(),
        tx,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let status = rx.borrow().clone().unwrap();
    assert_eq!(status.method, Method::Signals);
    assert_eq!(status.state, GovernorState::Resting);
    assert_eq!(status.budget_cpus, Some(0.5));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["method"], "signals");
    assert_eq!(json["priority"], "background");
    handle.stop();
    handle.stop();
    assert_eq!(rx.borrow().as_ref().unwrap().state, GovernorState::Stopped);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn retune_and_report_to_keep_the_same_child() {
    let mut child = sleep_child();
    let pid = child.id() as i32;
    let (first, second) = (report(), report());
    let mut handle = Governor::start(
        pid,
        &shipped(),
        settings(None),
        Activity::new(),
        Default::default(),
        first.clone(),
    )
    .unwrap();
    assert_eq!(first.borrow().as_ref().unwrap().method, Method::Off);
    handle.report_to(second.clone()).unwrap();
    assert!(handle.reports_to(&second) && !handle.reports_to(&first));
    // The old place got no last snapshot: it still shows the governor as it was.
    assert_eq!(first.borrow().as_ref().unwrap().state, GovernorState::Off);
    assert_eq!(second.borrow().as_ref().unwrap().state, GovernorState::Off);
    handle.retune(&shipped(), settings(Some(0.5))).unwrap();
    assert_eq!(handle.pid(), pid);
    let snap = second.borrow().clone().unwrap();
    assert_eq!(
        (snap.method, snap.budget_cpus),
        (Method::Signals, Some(0.5))
    );
    handle.stop();
    assert_eq!(
        second.borrow().as_ref().unwrap().state,
        GovernorState::Stopped
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn missing_child_is_a_clear_error() {
    let cfg = shipped();
    let err = Governor::start(
        i32::MAX - 1,
        &cfg,
        settings(Some(0.5)),
        Activity::new(),
        Default::default(),
        report(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no process"), "{err}");
}

#[test]
fn a_period_out_of_range_is_refused_before_anything_is_touched() {
    let bad = GovernorSettings {
        period: Duration::from_secs(2),
        ..settings(Some(0.5))
    };
    let err = Governor::start(
        i32::MAX - 1,
        &shipped(),
        bad,
        Activity::new(),
        Default::default(),
        report(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("period 2s is out of range"),
        "{err}"
    );
}
