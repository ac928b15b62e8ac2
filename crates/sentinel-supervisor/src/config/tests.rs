//! The configuration's layers, defaults and validation, each fault with its key and file.

use super::*;

fn user(text: &str) -> Result<Config, ConfigError> {
    Config::from_layers(Some((Path::new("/etc/my.toml"), text)))
}

#[test]
fn builtin_parses_with_three_profiles() {
    let c = Config::builtin().unwrap();
    assert_eq!(c.default_profile, "balanced");
    for p in ["invisible", "balanced", "fast"] {
        assert!(c.profiles.contains_key(p), "missing profile {p}");
    }
    assert_eq!(c.supervisor.backoff_initial, Duration::from_millis(500));
    assert_eq!(c.proxy.max_body_bytes, 8 * 1024 * 1024);
    assert!(c.model.is_none());
    assert!(c.backend.bin.is_none());
}

#[test]
fn user_file_overrides_keys_and_adds_profiles() {
    let c = user(
        "listen = \"127.0.0.1:9000\"\n[profiles.balanced]\ncpus = 0.75\n[profiles.mine]\nthreads = 2\n",
    )
    .unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.profiles["balanced"].cpus.map(Cores::get), Some(0.75));
    // Keys not overridden keep their defaults.
    assert_eq!(c.profiles["balanced"].slots, Some(1));
    assert_eq!(c.profiles["mine"].threads, Some(2));
    assert_eq!(c.source.as_deref(), Some(Path::new("/etc/my.toml")));
}

#[test]
fn unknown_key_names_key_and_user_file() {
    let err = user("[profiles.balanced]\nthreds = 2\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/etc/my.toml"), "{err}");
    assert!(err.contains("profiles.balanced"), "{err}");
    assert!(err.contains("threds"), "{err}");
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let err = user("modle = \"/x.gguf\"\n").unwrap_err().to_string();
    assert!(err.contains("modle"), "{err}");
    assert!(err.contains("/etc/my.toml"), "{err}");
}

#[test]
fn wrong_type_names_the_key() {
    let err = user("[profiles.fast]\nslots = \"two\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("profiles.fast.slots"), "{err}");
    assert!(err.contains("/etc/my.toml"), "{err}");
}

#[test]
fn impossible_values_are_errors() {
    let cases = [
        (
            "[profiles.balanced]\ncpus = 0.0\n",
            "profiles.balanced.cpus",
        ),
        (
            "[profiles.balanced]\ncpus = -1.0\n",
            "profiles.balanced.cpus",
        ),
        (
            "[profiles.balanced]\nthreads = 0\n",
            "profiles.balanced.threads",
        ),
        ("[profiles.fast]\nslots = 0\n", "profiles.fast.slots"),
        (
            "[profiles.fast]\nadaptive = 1.5\n",
            "profiles.fast.adaptive",
        ),
        (
            "[supervisor]\nbackoff_max = \"100ms\"\n",
            "supervisor.backoff_max",
        ),
        (
            "[supervisor]\nliveness_failures = 0\n",
            "supervisor.liveness_failures",
        ),
        ("default_profile = \"nope\"\n", "default_profile"),
        ("[backend]\nctx_size = 8\n", "backend.ctx_size"),
        (
            "[backend]\nmemory_limit = \"lots\"\n",
            "backend.memory_limit",
        ),
        (
            "[supervisor]\nfirst_token_timeout = \"0s\"\n",
            "supervisor.first_token_timeout",
        ),
    ];
    for (text, key) in cases {
        let err = user(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text:?} -> {err}");
        assert!(err.contains("/etc/my.toml"), "{text:?} -> {err}");
    }
}

#[test]
fn a_cpu_budget_not_above_zero_says_how_to_write_one() {
    for (text, shown) in [
        (
            "[profiles.balanced]\ncpus = 0\n",
            "CPU budget 0 is out of range",
        ),
        (
            "[profiles.balanced]\ncpus = -1.5\n",
            "CPU budget -1.5 is out of range",
        ),
        (
            "[profiles.balanced]\ncpus = nan\n",
            "CPU budget NaN is out of range",
        ),
    ] {
        let err = user(text).unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/my.toml: key `profiles.balanced.cpus`: "),
            "{text:?} -> {err}"
        );
        assert!(err.contains(shown), "{text:?} -> {err}");
        assert!(err.contains("number of cores above 0"), "{text:?} -> {err}");
    }
}

#[test]
fn situation_budgets_and_keys_are_checked() {
    let err = user("[profiles.balanced]\ncpus_on_battery = -1\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/etc/my.toml: key `profiles.balanced.cpus_on_battery`: "),
        "{err}"
    );
    assert!(
        err.contains("at least 0") && err.contains("0 pauses"),
        "{err}"
    );
    let err = user("[profiles.balanced]\ncpus_when_idle = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("profiles.balanced.cpus_when_idle"), "{err}");
    let err = user("[situation]\nidle_afer = \"1m\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `idle_afer`"), "{err}");
    let ok = user("[profiles.balanced]\ncpus_on_battery = 0\n").unwrap();
    let paused = ok.profiles["balanced"].cpus_on_battery.unwrap();
    assert_eq!(paused.cores(), None);
}

#[test]
fn an_adaptive_share_outside_zero_to_one_says_the_range() {
    for (text, shown) in [
        (
            "[profiles.fast]\nadaptive = 1.5\n",
            "share 1.5 is out of range",
        ),
        ("[profiles.fast]\nadaptive = 0\n", "share 0 is out of range"),
    ] {
        let err = user(text).unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/my.toml: key `profiles.fast.adaptive`: "),
            "{text:?} -> {err}"
        );
        assert!(err.contains(shown), "{text:?} -> {err}");
        assert!(err.contains("above 0 and at most 1"), "{text:?} -> {err}");
    }
}

#[test]
fn a_profiles_method_and_period_are_checked_like_the_governors() {
    let c = user("[profiles.fast]\nmethod = \"signals\"\nperiod = \"2ms\"\npin = true\n").unwrap();
    let fast = &c.profiles["fast"];
    assert_eq!(fast.method, Some(crate::governor::Method::Signals));
    assert_eq!(fast.period, Some(Duration::from_millis(2)));
    assert!(fast.pin);
    assert_eq!(c.profiles["balanced"].period, None);
    for (text, shown) in [
        (
            "[profiles.fast]\nperiod = \"0ms\"\n",
            "out of range; use 1ms to 1s",
        ),
        (
            "[profiles.fast]\nperiod = \"2s\"\n",
            "out of range; use 1ms to 1s",
        ),
        (
            "[profiles.fast]\nperiod = \"500ms\"\n",
            "longer than a fifth of governor.feedback_window",
        ),
        ("[profiles.fast]\nperiod = \"soon\"\n", "invalid"),
        (
            "[profiles.fast]\nmethod = \"fast\"\n",
            "unknown variant `fast`",
        ),
        ("[profiles.fast]\npin = \"yes\"\n", "invalid type"),
    ] {
        let err = user(text).unwrap_err().to_string();
        let key = text.split('\n').nth(1).unwrap().split(' ').next().unwrap();
        assert!(
            err.starts_with(&format!("/etc/my.toml: key `profiles.fast.{key}`: ")),
            "{text:?} -> {err}"
        );
        assert!(err.contains(shown), "{text:?} -> {err}");
    }
}

#[test]
fn bad_duration_and_syntax_are_reported() {
    let err = user("[supervisor]\nstop_grace = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("supervisor.stop_grace"), "{err}");
    let err = user("[profiles.fast\n").unwrap_err().to_string();
    assert!(err.contains("invalid TOML"), "{err}");
    assert!(err.contains("/etc/my.toml"), "{err}");
}

#[test]
fn unknown_profile_lists_known_ones() {
    let c = Config::builtin().unwrap();
    let err = c.profile("turbo").unwrap_err().to_string();
    assert!(err.contains("turbo"), "{err}");
    assert!(err.contains("balanced"), "{err}");
}

#[test]
fn missing_file_says_what_to_check() {
    let err = Config::load(Some(Path::new("/nonexistent/x.toml")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn drop_ins_merge_in_name_order_after_the_main_file_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(
        &main,
        "listen = \"127.0.0.1:9000\"\n[profiles.balanced]\ncpus = 0.5\n",
    )
    .unwrap();
    let etc = dir.path().join("etc");
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&xdg).unwrap();
    std::fs::write(
        etc.join("20-site.toml"),
        "[profiles.balanced]\ncpus = 0.75\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("10-labels.toml"),
        "labels = { site = \"par1\", group = \"soc\" }\n[profiles.balanced]\ncpus = 0.25\n",
    )
    .unwrap();
    std::fs::write(etc.join("README"), "not toml").unwrap();
    std::fs::write(xdg.join("50-me.toml"), "[profiles.balanced]\nslots = 2\n").unwrap();
    let dirs = [etc.clone(), xdg.clone(), dir.path().join("missing")];
    let c = Config::load_with(Some(&main), &dirs).unwrap();
    assert_eq!(c.listen.port(), 9000);
    // 10-labels then 20-site: the later file wins.
    assert_eq!(c.profiles["balanced"].cpus.map(Cores::get), Some(0.75));
    assert_eq!(c.profiles["balanced"].slots, Some(2));
    assert_eq!(c.labels["site"], "par1");
    assert_eq!(c.source.as_deref(), Some(main.as_path()));
    // A bad key in a drop-in names that file, not the main one.
    std::fs::write(
        xdg.join("60-bad.toml"),
        "[profiles.balanced]\nslots = \"two\"\n",
    )
    .unwrap();
    let err = Config::load_with(Some(&main), &dirs)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: key `profiles.balanced.slots`",
            xdg.join("60-bad.toml").display()
        )),
        "{err}"
    );
    std::fs::write(xdg.join("60-bad.toml"), "[profiles.balanced\n").unwrap();
    let err = Config::load_with(Some(&main), &dirs)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("60-bad.toml") && err.contains("invalid TOML"),
        "{err}"
    );
}

#[test]
fn labels_must_be_prometheus_label_names() {
    assert!(user("labels = { site = \"a\", group_2 = \"b\" }\n").is_ok());
    for bad in [
        "\"2x\" = \"a\"",
        "\"a-b\" = \"a\"",
        "__x = \"a\"",
        "version = \"1\"",
        "site = \"\"",
    ] {
        let err = user(&format!("labels = {{ {bad} }}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/my.toml: key `labels."),
            "{bad}: {err}"
        );
    }
}

#[test]
fn spill_and_upstreams_parse_and_a_bad_upstream_names_the_file() {
    let c = user("[[upstreams]]\nname = \"central\"\nurl = \"https://llm.example/v1\"\nmodel = \"big\"\n[profiles.invisible]\nspill = \"when_late\"\ndeadline = \"2.5s\"\n").unwrap();
    assert_eq!(c.upstreams.len(), 1);
    assert_eq!(
        c.profiles["invisible"].spill,
        crate::upstream::SpillMode::WhenLate
    );
    assert_eq!(
        c.profiles["invisible"].deadline,
        Some(Duration::from_millis(2500))
    );
    assert_eq!(
        c.profiles["balanced"].spill,
        crate::upstream::SpillMode::Never
    );
    let err = user("[[upstreams]]\nname = \"central\"\nurl = \"http://10.0.0.1/v1\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/etc/my.toml: key `upstreams`: upstream `central`"),
        "{err}"
    );
    let err = user("[profiles.fast]\nspill = \"sometimes\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("profiles.fast.spill"), "{err}");
}

#[test]
fn systemd_cache_directory_comes_before_the_xdg_cache() {
    let xdg = cache_dir_from(None);
    assert!(xdg.ends_with("sentinel-supervisor"), "{}", xdg.display());
    let unit = std::ffi::OsString::from("/var/cache/sentinel-supervisor:/var/cache/other");
    assert_eq!(
        cache_dir_from(Some(unit)),
        PathBuf::from("/var/cache/sentinel-supervisor")
    );
    assert_eq!(cache_dir_from(Some("".into())), xdg);
}

#[test]
fn slo_thresholds_are_shares_of_the_machine_and_bench_is_no_section() {
    let c = user("[slo]\nactive_cpu_p99_max_percent = 60.0\n").unwrap();
    assert_eq!(c.slo.active_cpu_p99_max_percent, 60.0);
    assert_eq!(c.slo.idle_cpu_max_percent, 2.0);
    let msg = user("[slo]\nidle_cpu_max_percent = 150.0\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("slo.idle_cpu_max_percent") && msg.contains("/etc/my.toml"),
        "{msg}"
    );
    // `[bench]` belongs to sentinel-bench's own settings now.
    let msg = user("[bench]\nmax_tokens = 32\n").unwrap_err().to_string();
    assert!(msg.contains("bench"), "{msg}");
}
