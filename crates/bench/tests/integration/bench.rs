//! Integration tests of `sentinel-bench bench` (what `sentinel-supervisor bench` runs) against
//! the real `sentinel-supervisor`.
//!
//! The end-to-end test uses the real llama-server and the default model from `setup`.

use std::path::Path;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    // The supervisors it starts are the one beside it: built first.
    crate::support::supervisor();
    Command::new(crate::support::BENCH)
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
    // No --backend-bin: each stack's supervisor takes the rung `setup` chose on this host.
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
    // A row per run in the summary table and in the prompt table.
    assert_eq!(md.matches("\n| invisible").count(), 4, "{md}");
    assert_eq!(md.matches("\n| balanced").count(), 4, "{md}");
    let svg = std::fs::read_to_string(out_dir.join("cpu.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
}

/// Runs `probe KIND ARGS` and parses the JSON line it prints.
fn probe(args: &[&str], stdin: std::process::Stdio) -> serde_json::Value {
    let out = Command::new(crate::support::BENCH)
        .arg("probe")
        .args(args)
        .stdin(stdin)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn foreground_probes_run_and_produce_numbers() {
    let work = probe(&["work", "--for", "300ms"], std::process::Stdio::null());
    assert_eq!(work["probe"], "work");
    let iterations = work["iterations"].as_u64().expect("calibrated iterations");
    assert!(iterations > 0);
    let units = work["samples_ms"].as_array().unwrap();
    // 300 ms of 5 ms units and 5 ms sleeps, on a machine that may be busy.
    assert!(units.len() >= 3, "{} units", units.len());
    assert!(units.iter().all(|u| number(u, "unit") > 0.0));

    let wake = probe(&["wake", "--for", "200ms"], std::process::Stdio::null());
    let late = wake["samples_ms"].as_array().unwrap();
    assert!(late.len() >= 10, "{} wake-ups", late.len());
    assert!(late.iter().all(|l| number(l, "lateness") >= 0.0));

    // Without --for it runs until stdin closes (here: at once), with a fixed work unit.
    let fixed = probe(
        &["work", "--iterations", "1000"],
        std::process::Stdio::null(),
    );
    assert_eq!(fixed["iterations"], 1000);
    assert!(!fixed["samples_ms"].as_array().unwrap().is_empty());
}

/// A file the supervisor accepts as a model (the fake backend never reads it).
fn fake_model(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, b"GGUF fake model").unwrap();
    path.display().to_string()
}

#[test]
fn two_models_with_shots_and_foreground_on_the_fake_backend() {
    let _cpu = crate::support::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let settings = dir.path().join("bench.toml");
    std::fs::write(&settings, "[bench]\nforeground_alone = \"1s\"\n").unwrap();
    let (a, b) = (
        fake_model(dir.path(), "a.gguf"),
        fake_model(dir.path(), "b.gguf"),
    );
    let out = bench(&[
        "--settings",
        settings.to_str().unwrap(),
        "--profile",
        "balanced",
        "--model",
        &a,
        "--model",
        &b,
        "--backend-bin",
        crate::support::FAKE,
        "--limit",
        "2",
        "--idle",
        "0s",
        "--schema-mode",
        "off",
        "--shots",
        "1",
        "--foreground",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    let held_out: Vec<&str> = report["examples"]["held_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(held_out.contains(&"cmdline-01"), "{held_out:?}");
    let alone = &report["foreground_alone"];
    assert!(number(&alone["work_ms"]["p50"], "alone work p50") > 0.0);
    assert!(number(&alone["work_ms"]["count"], "alone units") >= 1.0);
    let profiles = report["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 2, "one entry per (model, profile)");
    for (p, model) in profiles.iter().zip([&a, &b]) {
        assert_eq!(p["profile"], "balanced");
        assert!(
            p["model"]
                .as_str()
                .unwrap()
                .ends_with(Path::new(model).file_name().unwrap().to_str().unwrap()),
            "{}",
            p["model"]
        );
        let fg = &p["foreground"];
        assert!(number(&fg["work_p50_ratio"], "p50 ratio") > 0.0, "{fg}");
        assert!(number(&fg["beside"]["wake_late_ms"]["p99"], "wake p99") >= 0.0);
        assert_eq!(fg["checks"].as_array().unwrap().len(), 3);
        let runs = p["runs"].as_array().unwrap();
        let variants: Vec<(u64, bool)> = runs
            .iter()
            .map(|r| {
                (
                    r["variant"]["shots"].as_u64().unwrap(),
                    r["variant"]["cache_prompt"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(variants, [(0, true), (1, true), (1, false)]);
        for r in runs {
            assert_eq!(r["errors"], 0, "{}", r["results"]);
            for t in r["results"].as_array().unwrap() {
                assert!(!held_out.contains(&t["id"].as_str().unwrap()));
            }
        }
        // The shared prefix makes the prompt longer (the fake counts words).
        let prompt = |i: usize| number(&runs[i]["prompt"]["prompt_tokens_per_task"], "prompt");
        assert!(prompt(1) > prompt(0));
    }
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(md.contains("## Foreground impact"), "{md}");
    assert!(
        md.contains("| balanced, 1-shot, cache off | a.gguf |"),
        "{md}"
    );
    assert!(
        md.contains("| balanced, 1-shot, cache off | b.gguf |"),
        "{md}"
    );
    for log in [
        "supervisor-model1-balanced.log",
        "supervisor-model2-balanced.log",
    ] {
        assert!(out_dir.join(log).is_file(), "{log}");
    }
}
