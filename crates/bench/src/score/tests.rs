//! Scorer tests: for each category of the shipped task set, hand-written correct, partially
//! correct, wrong and adversarial answers with the exact score each must get.

use super::*;
use crate::task;

fn scorer(id: &str) -> Scorer {
    task::load(None)
        .expect("built-in tasks parse")
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no task {id}"))
        .scorer
}

fn check(id: &str, cases: &[(&str, f64)]) {
    let s = scorer(id);
    for (answer, want) in cases {
        let got = s.score(answer);
        assert!(
            (got - want).abs() < 1e-9,
            "{id}: {answer:?} scored {got}, want {want}"
        );
    }
}

#[test]
fn command_line_classification() {
    // cmdline-07: `bash -i >& /dev/tcp/...` is malicious.
    check(
        "cmdline-07",
        &[
            ("malicious", 1.0),
            ("MALICIOUS", 1.0),
            ("  Malicious.\n", 1.0),
            ("This is a reverse shell, so it is malicious.", 1.0),
            ("It is not benign: malicious.", 1.0),
            ("{\"answer\": \"malicious\"}", 1.0),
            ("suspicious", 0.0),
            ("benign", 0.0),
            ("benign, suspicious or malicious", 0.0),
            ("suspicious or malicious", 0.0),
            ("", 0.0),
            ("   ", 0.0),
            ("I cannot tell.", 0.0),
            // The JSON field is what counts, even if the prose says otherwise.
            ("{\"answer\": \"benign\"} (malicious)", 0.0),
        ],
    );
    check("cmdline-03", &[("Benign", 1.0), ("not malicious", 0.0)]);
}

#[test]
fn attack_technique_ids() {
    // attack-02: procdump of lsass is T1003.001.
    check(
        "attack-02",
        &[
            ("T1003.001", 1.0),
            ("t1003.001", 1.0),
            (
                "This is OS Credential Dumping: LSASS Memory (T1003.001).",
                1.0,
            ),
            ("T1003.001 (a sub-technique of T1003)", 1.0),
            ("{\"technique\": \"T1003.001\"}", 1.0),
            ("T1003", 0.5),
            ("T1003.002", 0.5),
            ("T1003.001 or T1003.002", 0.5),
            ("T1059.001", 0.0),
            ("T1003.001, T1059.001, T1105", 0.0),
            ("", 0.0),
            ("credential dumping", 0.0),
            ("XT1003.001", 0.0),
        ],
    );
    // attack-05: a technique without sub-techniques.
    check(
        "attack-05",
        &[
            ("T1490", 1.0),
            ("t1490.", 1.0),
            ("T1490.001", 0.5),
            ("T1486", 0.0),
        ],
    );
}

#[test]
fn ioc_extraction_set_f1() {
    // ioc-02: 192.168.1.23, update-check.badcdn.xyz, 45.77.12.9
    check(
        "ioc-02",
        &[
            ("192.168.1.23\nupdate-check.badcdn.xyz\n45.77.12.9", 1.0),
            ("- 192.168.1.23\n- UPDATE-CHECK.BADCDN.XYZ\n- 45.77.12.9", 1.0),
            ("Here are the IOCs: 192.168.1.23, update-check[.]badcdn[.]xyz and 45.77.12.9. Hope it helps!", 1.0),
            ("{\"iocs\": [\"192.168.1.23\", \"update-check.badcdn.xyz\", \"45.77.12.9\"]}", 1.0),
            // Two of three found, nothing extra: P = 1, R = 2/3, F1 = 0.8.
            ("192.168.1.23\n45.77.12.9", 0.8),
            // All three plus one invented: P = 3/4, R = 1, F1 = 6/7.
            ("192.168.1.23 update-check.badcdn.xyz 45.77.12.9 8.8.8.8", 6.0 / 7.0),
            ("10.1.1.1", 0.0),
            ("", 0.0),
            ("none found", 0.0),
        ],
    );
    // ioc-03: Windows paths compare case-insensitively; the hash is lower-cased.
    check(
        "ioc-03",
        &[
            (
                "C:\\Users\\bob\\AppData\\Local\\Temp\\svch0st.exe\nE3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855\nC:\\Windows\\explorer.exe",
                1.0,
            ),
            // One of three, nothing extra: P = 1, R = 1/3, F1 = 0.5.
            ("c:\\windows\\explorer.exe", 0.5),
        ],
    );
    // Adversarial: echoing every token of the log line. ioc-01 expects two IPs; the echo also
    // yields nothing else recognisable, so it keeps full marks only because it adds no noise.
    check(
        "ioc-01",
        &[(
            "2024-05-01T10:22:13Z fw DROP src=10.0.0.15 dst=185.220.101.4 dport=443 proto=TCP",
            1.0,
        )],
    );
    // ioc-09 echoed with an extra invented domain and IP: P = 3/5, R = 1, F1 = 0.75.
    check(
        "ioc-09",
        &[(
            "files.evil-updates.net /var/tmp/.cache/x86 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad evil.com 1.1.1.1",
            0.75,
        )],
    );
}

#[test]
fn windows_event_ids() {
    // winevent-02: 4625 is a failed logon.
    check(
        "winevent-02",
        &[
            ("Failed logon", 1.0),
            ("An account failed to log on.", 1.0),
            ("EVENT 4625 RECORDS A LOGON FAILURE (bad password).", 1.0),
            ("{\"meaning\": \"an account failed to log on\"}", 1.0),
            ("A successful logon", 0.0),
            (
                "It records either a successful logon or a failed logon.",
                0.0,
            ),
            (
                "failed logon, successful logon, logoff, process creation",
                0.0,
            ),
            ("a logon", 0.0),
            ("", 0.0),
        ],
    );
    // winevent-12: 4769 is a service ticket request; naming the TGT instead is wrong.
    check(
        "winevent-12",
        &[
            ("A Kerberos service ticket was requested.", 1.0),
            ("TGS request, not a TGT", 1.0),
            ("A Kerberos TGT was requested", 0.0),
        ],
    );
}

#[test]
fn persistence_mechanisms() {
    // persistence-06: macOS LaunchAgent.
    check(
        "persistence-06",
        &[
            ("launch agent", 1.0),
            ("Launch Agent", 1.0),
            ("It is a LaunchAgent (~/Library/LaunchAgents).", 1.0),
            ("{\"answer\": \"launch agent\"}", 1.0),
            ("launch daemon", 0.0),
            ("launch agent or launch daemon", 0.0),
            (
                "launch agent, launch daemon, login item, cron job, shell profile",
                0.0,
            ),
            ("", 0.0),
        ],
    );
    // persistence-14: "wmi" alone is an alias; inside "wmi subscription" it is one label.
    check(
        "persistence-14",
        &[
            ("WMI subscription", 1.0),
            ("wmi event subscription", 1.0),
            ("WMI", 1.0),
            ("scheduled task", 0.0),
            (
                "run key, scheduled task, windows service, startup folder, wmi subscription",
                0.0,
            ),
        ],
    );
    check(
        "persistence-01",
        &[
            ("crontab entry", 1.0),
            ("Cron job in /etc/cron.d", 1.0),
            ("systemd", 0.0),
        ],
    );
}

#[test]
fn severity_triage_json_fields() {
    // triage-01: mimikatz on a domain controller is critical.
    check(
        "triage-01",
        &[
            ("{\"severity\": \"critical\", \"reason\": \"Credential theft on a domain controller.\"}", 1.0),
            ("Here you go:\n```json\n{\"severity\": \"CRITICAL\", \"reason\": \"creds dumped on DC\"}\n```", 1.0),
            // Right severity, reason missing or spread over lines: half.
            ("{\"severity\": \"critical\"}", 0.5),
            ("{\"severity\": \"critical\", \"reason\": \"line one\\nline two\"}", 0.5),
            // Wrong severity: the reason earns nothing.
            ("{\"severity\": \"low\", \"reason\": \"Looks fine.\"}", 0.0),
            ("{\"severity\": \"low, medium, high, critical\", \"reason\": \"any\"}", 0.0),
            ("Severity: critical. Reason: credential theft.", 0.0),
            ("low medium high critical", 0.0),
            ("", 0.0),
        ],
    );
    // triage-06 accepts two adjacent severities.
    check(
        "triage-06",
        &[
            (
                "{\"severity\": \"high\", \"reason\": \"C2 beaconing\"}",
                1.0,
            ),
            (
                "{\"severity\": \"critical\", \"reason\": \"C2 beaconing\"}",
                1.0,
            ),
            (
                "{\"severity\": \"medium\", \"reason\": \"C2 beaconing\"}",
                0.0,
            ),
        ],
    );
}

#[test]
fn scorer_parameters_are_validated() {
    let bad: Vec<(Scorer, &str)> = vec![
        (
            Scorer::Technique {
                answer: "1059".into(),
            },
            "not an ATT&CK ID",
        ),
        (
            Scorer::SetF1 {
                items: vec!["hello".into()],
            },
            "`hello`",
        ),
        (
            Scorer::Accepted {
                answers: vec!["failed logon".into()],
                reject: vec!["logon".into()],
            },
            "rejected phrase",
        ),
        (
            Scorer::JsonFields {
                fields: BTreeMap::from([("x".to_string(), FieldRule::OneOf(vec![]))]),
            },
            "`one_of` is empty",
        ),
    ];
    for (s, want) in bad {
        let err = s.validate().expect_err("should be rejected");
        assert!(err.contains(want), "{err}");
    }
    assert_eq!(
        Scorer::Technique {
            answer: "T1".into()
        }
        .kind(),
        "technique"
    );
}
