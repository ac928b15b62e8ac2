//! Detection on fake cgroup trees (roots, a delegated subtree), the quota arithmetic, and a
//! real cap where this machine offers a writable cgroup.

use super::*;

#[test]
fn quota_follows_budget_and_respects_minimum() {
    assert_eq!(quota_for(0.5, Duration::from_millis(10)), (5_000, 10_000));
    assert_eq!(quota_for(1.0, Duration::from_millis(10)), (10_000, 10_000));
    assert_eq!(quota_for(0.05, Duration::from_millis(10)), (1_000, 20_000));
    assert_eq!(quota_for(2.0, Duration::from_micros(100)), (2_000, 1_000));
}

#[test]
fn detects_v2_then_v1_from_fake_trees() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("v2");
    let v1 = dir.path().join("v1");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::create_dir_all(&v1).unwrap();
    let (v2s, v1s) = (vec![v2.clone()], vec![v1.clone()]);
    let detect_in = |v2: &[PathBuf], v1: &[PathBuf]| detect_in(v2, v1, None);
    assert_eq!(detect_in(&v2s, &v1s), None);
    std::fs::write(v1.join("cpu.cfs_quota_us"), "-1").unwrap();
    assert_eq!(
        detect_in(&v2s, &v1s).map(|s| s.version),
        Some(CgroupVersion::V1)
    );
    std::fs::write(v2.join("cgroup.subtree_control"), "memory pids").unwrap();
    assert_eq!(
        detect_in(&v2s, &v1s).map(|s| s.version),
        Some(CgroupVersion::V1)
    );
    std::fs::write(v2.join("cgroup.subtree_control"), "cpu memory").unwrap();
    let found = detect_in(&v2s, &v1s).unwrap();
    assert_eq!(found.version, CgroupVersion::V2);
    assert_eq!(found.parent, v2);
}

/// `sleep 30`, started as every child is ([`crate::os::process::spawn_in_group`]).
fn sleeper() -> std::process::Child {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    crate::os::process::spawn_in_group(cmd, nix::sys::signal::Signal::SIGKILL).unwrap()
}

/// The cap the tests give: half a core per 10 ms, at idle priority.
fn half_a_core_idle(support: &CgroupSupport, pid: i32) -> Result<CpuCgroup, CgroupError> {
    CpuCgroup::create(support, pid, 0.5, Duration::from_millis(10), Priority::Idle)
}

/// A fake v2 tree with the service's cgroup at `system.slice/s.service`, offering `cpu`.
fn delegated_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("v2");
    let own = root.join("system.slice/s.service");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(root.join("cgroup.subtree_control"), "cpu memory").unwrap();
    std::fs::write(own.join("cgroup.controllers"), "cpu memory pids").unwrap();
    std::fs::write(own.join("cgroup.subtree_control"), "").unwrap();
    std::fs::write(own.join("cgroup.procs"), "").unwrap();
    (dir, root, own)
}

#[test]
fn detects_the_own_delegated_subtree_before_the_roots() {
    let (_dir, root, own) = delegated_tree();
    let roots = vec![root.clone()];
    let rel = Path::new("system.slice/s.service");
    let found = detect_in(&roots, &[], Some(rel)).unwrap();
    assert_eq!(found.layout, Layout::Delegated);
    assert_eq!(found.parent, own);
    // After the first cap the supervisor sits in the leaf: the subtree is its parent.
    let again = detect_in(&roots, &[], Some(&rel.join(SUPERVISOR_LEAF))).unwrap();
    assert_eq!(again, found);
    // Without cpu among its controllers (not delegated): the root is used.
    std::fs::write(own.join("cgroup.controllers"), "memory pids").unwrap();
    let root_found = detect_in(&roots, &[], Some(rel)).unwrap();
    assert_eq!(root_found.layout, Layout::Root);
    assert_eq!(root_found.parent, root);
}

#[test]
fn a_delegated_subtree_gets_a_supervisor_leaf_and_backend_groups() {
    let (_dir, root, own) = delegated_tree();
    let support = detect_in(&[root], &[], Some(Path::new("system.slice/s.service"))).unwrap();
    let mut backend = sleeper();
    let pid = backend.id() as i32;
    let me = std::process::id();
    std::fs::write(own.join("cgroup.procs"), format!("{me}\n{pid}\n")).unwrap();
    let mut group = half_a_core_idle(&support, pid).unwrap();
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    assert_eq!(group.path(), own.join(format!("backend-{pid}")));
    assert_eq!(read(own.join("cgroup.subtree_control")), "+cpu");
    assert!(own.join(SUPERVISOR_LEAF).is_dir());
    assert_eq!(read(group.path().join("cpu.max")), "5000 10000");
    // No cpu.idle in the fake tree: the lowest weight stands in for it.
    assert_eq!(read(group.path().join("cpu.weight")), "1");
    assert_eq!(read(group.path().join("cgroup.procs")), pid.to_string());
    // A leftover goes back to the supervisor's leaf, never to the inner node.
    let _ = group.remove();
    assert_eq!(
        read(own.join(SUPERVISOR_LEAF).join("cgroup.procs")),
        pid.to_string()
    );
    // A process that is not this supervisor's in the subtree: refused, with the pid named.
    std::fs::write(own.join("cgroup.procs"), "1\n").unwrap();
    let err = half_a_core_idle(&support, pid).unwrap_err();
    assert!(matches!(err, CgroupError::Shared { pid: 1, .. }), "{err}");
    backend.kill().unwrap();
    backend.wait().unwrap();
}

/// Runs only where a real writable cgroup exists (root on this CI machine).
#[test]
fn caps_a_real_child_and_cleans_up() {
    let Some(support) = detect() else {
        eprintln!("no writable cgroup here; skipping");
        return;
    };
    let mut child = sleeper();
    let pid = child.id() as i32;
    let mut group = half_a_core_idle(&support, pid).unwrap();
    let procs = std::fs::read_to_string(group.path().join("cgroup.procs")).unwrap();
    assert!(procs.split_whitespace().any(|p| p == pid.to_string()));
    let dir = group.path().to_owned();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_owned());
    let (weight_file, _) = weight_for(support.version, Priority::Normal);
    match read("cpu.idle") {
        Ok(idle) => assert_eq!(idle, "1"),
        Err(_) => assert_eq!(
            read(weight_file).unwrap(),
            weight_for(support.version, Priority::Idle).1
        ),
    }
    group.set_priority(Priority::Background).unwrap();
    assert_eq!(
        read(weight_file).unwrap(),
        weight_for(support.version, Priority::Background).1
    );
    if let Ok(idle) = read("cpu.idle") {
        assert_eq!(idle, "0");
    }
    group.set_priority(Priority::Normal).unwrap();
    assert_eq!(
        read(weight_file).unwrap(),
        weight_for(support.version, Priority::Normal).1
    );
    let path = group.path().to_owned();
    group.remove().unwrap();
    assert!(!path.exists());
    group.remove().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}
