//! The warm-up's request, its private slot directory, slot file names and records, when
//! restoring gives way to prefilling, and the errors of a bad prefix file.

use super::slots::SlotDirError;
use super::*;

fn store(dir: &Path) -> SlotStore {
    SlotStore {
        dir: dir.to_path_buf(),
        model_key: "0123456789abcdef".into(),
    }
}

#[test]
fn the_warm_up_sends_the_prefix_as_the_system_message_and_caches_it() {
    let body = chat_request("POLICY");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][0]["content"], "POLICY");
    assert_eq!(body["messages"][1]["role"], "user");
    assert_eq!(body["messages"][1]["content"], WARM_SUFFIX);
    assert_eq!(body["max_tokens"], 1);
    assert_eq!(body["cache_prompt"], true);
    assert_eq!(body["stream"], false);
}

#[test]
fn the_slot_dir_is_private_and_never_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache/slots");
    secure_slot_dir(&dir).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    secure_slot_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let link = tmp.path().join("cache/linked");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let e = secure_slot_dir(&link).unwrap_err();
    assert!(matches!(e, SlotDirError::Symlink { .. }), "{e}");
    // A record that is a symlink is not followed, for reading or writing.
    let store = SlotStore {
        dir: dir.clone(),
        model_key: "m".into(),
    };
    let prefix = Prefix {
        path: "p".into(),
        text: "t".into(),
        hash: "h".into(),
    };
    let target = tmp.path().join("target.json");
    std::fs::write(&target, r#"{"prefill_ms": 1.0, "restore_ms": null}"#).unwrap();
    std::os::unix::fs::symlink(&target, store.record_path(&prefix)).unwrap();
    assert!(store.measured(&prefix).is_none());
    let record = SlotRecord {
        prefill_ms: 2.0,
        restore_ms: None,
    };
    assert!(store.write_record(&prefix, record).is_err());
    assert!(std::fs::read_to_string(&target).unwrap().contains("1.0"));
}

#[test]
fn slot_files_are_named_by_model_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let a = Prefix::new("/a".into(), "policy A".into());
    let b = Prefix::new("/b".into(), "policy B".into());
    let a_moved = Prefix::new("/elsewhere".into(), "policy A".into());
    let name = s.file_name(&a);
    assert!(name.starts_with("0123456789abcdef-") && name.ends_with(".bin"));
    assert_eq!(name.len(), 16 + 1 + 16 + 4);
    assert_ne!(name, s.file_name(&b), "another text, another file");
    assert_eq!(
        name,
        s.file_name(&a_moved),
        "only the text matters, not its path"
    );
    assert!(!name.contains('/'), "llama-server takes a bare file name");
}

#[test]
fn the_model_key_changes_with_the_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let (server, model) = (dir.path().join("server"), dir.path().join("m.gguf"));
    std::fs::write(&server, "bin").unwrap();
    std::fs::write(&model, "weights").unwrap();
    let before = model_key(&server, &model);
    assert_eq!(before, model_key(&server, &model));
    std::fs::write(&model, "other weights").unwrap();
    assert_ne!(before, model_key(&server, &model));
    assert_ne!(before, model_key(&server, &dir.path().join("other.gguf")));
}

#[test]
fn a_record_counts_only_with_its_slot_file_and_prune_keeps_only_current_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let a = Prefix::new("/a".into(), "policy A".into());
    let gone = Prefix::new("/g".into(), "old policy".into());
    let record = SlotRecord {
        prefill_ms: 9000.0,
        restore_ms: None,
    };
    s.write_record(&a, record).unwrap();
    assert_eq!(s.record(&a), None, "no slot file yet");
    std::fs::write(dir.path().join(s.file_name(&a)), "kv").unwrap();
    assert_eq!(s.record(&a), Some(record));
    std::fs::write(dir.path().join(s.file_name(&gone)), "kv").unwrap();
    s.write_record(&gone, record).unwrap();
    let other_model = SlotStore {
        model_key: "fedcba9876543210".into(),
        ..s.clone()
    };
    std::fs::write(dir.path().join(other_model.file_name(&a)), "kv").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    assert_eq!(s.prune(std::slice::from_ref(&a)), 3);
    assert_eq!(s.record(&a), Some(record));
    assert_eq!(s.record(&gone), None);
    assert_eq!(other_model.record(&a), None);
    assert!(
        dir.path().join("notes.txt").exists(),
        "only slot files are pruned"
    );
}

#[test]
fn restoring_stops_once_it_measured_slower_than_the_prefill() {
    let r = |restore_ms| SlotRecord {
        prefill_ms: 100.0,
        restore_ms,
    };
    assert!(r(None).restore_pays());
    assert!(r(Some(3.0)).restore_pays());
    assert!(!r(Some(100.0)).restore_pays());
    assert!(!r(Some(250.0)).restore_pays());
}

#[test]
fn an_empty_or_missing_prefix_file_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let e = Prefix::read(&empty).unwrap_err().to_string();
    assert!(
        e.contains("empty") && e.contains("backend.warm_prefixes"),
        "{e}"
    );
    let e = Prefix::read(&dir.path().join("none.txt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read") && e.contains("backend.warm_prefixes"),
        "{e}"
    );
}
