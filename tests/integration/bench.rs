//! Integration tests of `sentinel-supervisor bench` against the real binary.
//!
//! The end-to-end test uses the real llama-server and the default model from `setup`.

use std::path::Path;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sentinel-supervisor"))
        .arg("bench")
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn malformed_task_file_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("mine.jsonl");
    std::fs::write(
        &tasks,
        concat!(
            r#"{"id":"a","category":"c","prompt":"p","scorer":{"kind":"technique","answer":"T1059"}}"#,
            "\n",
            r#"{"id":"b","category":"c","scorer":{"kind":"technique","answer":"T1059"}}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = bench(&[
        "--profile",
        "balanced",
        "--tasks",
        tasks.to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("mine.jsonl, line 2"), "{stderr}");
    assert!(stderr.contains("missing field `prompt`"), "{stderr}");
}

#[test]
fn nothing_to_measure_is_an_error() {
    let out = bench(&["--limit", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--profile NAME"));
}

fn number(v: &serde_json::Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[test]
fn end_to_end_two_profiles_on_the_default_model() {
    let _cpu = crate::support::exclusive();
    let real = crate::support::real_backend();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let mut args: Vec<String> = [
        "--profile",
        "invisible",
        "--profile",
        "balanced",
        "--limit",
        "3",
        "--idle",
        "2s",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out_dir.display().to_string());
    args.extend(["--model".to_string(), real.model.display().to_string()]);
    args.extend([
        "--backend-bin".to_string(),
        real.server.display().to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bench(&refs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    for f in ["report.json", "report.md", "cpu.svg"] {
        assert!(
            Path::new(&out_dir.join(f)).is_file(),
            "{f} missing; stderr: {stderr}"
        );
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["tasks"]["count"], 3);
    let profiles = report["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 2);
    for (p, name) in profiles.iter().zip(["invisible", "balanced"]) {
        assert_eq!(p["profile"], name);
        assert!(
            p["backend"]["pid"].as_i64().is_some_and(|pid| pid > 0),
            "{}",
            p["backend"]
        );
        let idle = number(&p["idle"]["system_cpu"]["mean"], "idle CPU");
        assert!((0.0..=100.0).contains(&idle));
        let runs = p["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "schema off and on");
        for r in runs {
            assert_eq!(r["tasks"], 3);
            assert_eq!(r["errors"], 0, "{}", r["results"]);
            let correctness = number(&r["correctness"], "correctness");
            assert!((0.0..=1.0).contains(&correctness));
            assert!(number(&r["latency_s"]["mean"], "latency") > 0.0);
            assert!(number(&r["latency_s"]["p95"], "p95 latency") > 0.0);
            assert!(number(&r["ttft_s"]["p50"], "ttft") > 0.0);
            for k in ["mean", "p99", "max"] {
                let cpu = number(&r["system_cpu"][k], "CPU");
                assert!((0.0..=100.0).contains(&cpu), "CPU {k} = {cpu}");
            }
            assert!(number(&r["system_cpu"]["count"], "samples") >= 1.0);
            assert!(number(&r["peak_rss_bytes"], "RSS") > 1e6);
            assert_eq!(r["checks"].as_array().unwrap().len(), 7);
        }
    }
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(md.contains("| Profile | Model | Threads | Limit | Correctness |"));
    assert_eq!(md.matches("\n| invisible").count(), 2, "{md}");
    assert_eq!(md.matches("\n| balanced").count(), 2, "{md}");
    let svg = std::fs::read_to_string(out_dir.join("cpu.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
}
