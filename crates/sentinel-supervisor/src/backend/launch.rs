//! The llama-server command line and environment for one launch: CPU only, pinned thread
//! counts from the profile, loopback on a free port, a secret per-launch API key passed in the
//! environment (`LLAMA_API_KEY`), never on the command line where `ps` shows it to every local
//! user, and the flags and variables that keep its threads from spinning while idle. The one
//! place that knows llama-server's flags.

use super::output::OutputLimit;
use super::setup::Installed;
use crate::config::Config;
use crate::governor::priority::Priority;
use crate::profile::Resolved;
use rand::distr::{Alphanumeric, SampleString};
use std::path::PathBuf;

/// The environment variable llama-server reads its API key from (`--api-key`'s `set_env`
/// in llama.cpp's `common/arg.cpp`).
pub(crate) const KEY_ENV: &str = "LLAMA_API_KEY";

/// The backend's per-launch secret. Its `Debug` and `Display` print `<redacted>`, so no log
/// line, `/status` or error message can carry it; only [`BackendKey::expose`] reads it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BackendKey(String);

impl BackendKey {
    /// A fresh random key (40 alphanumeric characters).
    pub(crate) fn generate() -> BackendKey {
        BackendKey(Alphanumeric.sample_string(&mut rand::rng(), 40))
    }

    /// The key itself, for the child's environment and the forwarded `Authorization` header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything needed to start one llama-server.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The child's extra environment, without the key (see [`LaunchSpec::environment`]).
    pub env: Vec<(String, String)>,
    pub priority: Priority,
    /// The one CPU every thread of the child runs on (set before exec), `None` = any.
    pub pin_cpu: Option<usize>,
    pub port: u16,
    /// Known only to the supervisor; the proxy adds it to every forwarded request.
    pub api_key: BackendKey,
    /// How many of its output lines may reach the log.
    pub output: OutputLimit,
    /// Variables of ours the child must not inherit (the service manager's socket: only the
    /// supervisor speaks for the service).
    pub env_remove: Vec<String>,
}

impl LaunchSpec {
    /// `http://127.0.0.1:PORT`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The child's extra environment including `LLAMA_API_KEY` (only for the spawn: never log it).
    pub(crate) fn environment(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(std::iter::once((KEY_ENV, self.api_key.expose())))
    }
}

/// A free ephemeral port on loopback (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The model id clients see: `model_alias`, else the file name without `.gguf`.
pub(crate) fn model_id(config: &Config, model: &std::path::Path) -> String {
    if !config.model_alias.trim().is_empty() {
        return config.model_alias.trim().to_string();
    }
    match model.file_name().and_then(|n| n.to_str()) {
        Some(name) => name.trim_end_matches(".gguf").to_string(),
        None => "model".to_string(),
    }
}

/// Builds the launch for `profile` on a fresh port with a fresh key.
pub(crate) fn spec(
    installed: &Installed,
    profile: &Resolved,
    config: &Config,
) -> std::io::Result<LaunchSpec> {
    let port = free_port()?;
    let mut args = core_args(
        &installed.model,
        port,
        (profile.threads, profile.threads_batch),
        profile.ctx_size,
        profile.slots,
    );
    args.extend([
        "--alias".into(),
        model_id(config, &installed.model),
        "--threads-http".into(),
        http_threads(profile.slots).to_string(),
        // Its own counters, re-exported by our /metrics (crate::metrics::llamacpp).
        "--metrics".into(),
        "--cache-ram".into(),
        profile.cache_ram_mib.to_string(),
    ]);
    args.extend(CHILD_ARGS.map(String::from));
    // The backend ladder's run-time flags for this build on this host (`--no-repack`).
    args.extend(installed.rung.args.iter().cloned());
    if profile.embeddings {
        args.push("--embeddings".into());
    }
    args.extend(config.backend.extra_args.iter().cloned());
    args.extend(profile.extra_args.iter().cloned());
    let env = std::iter::once(("GGML_METAL_DISABLE", "1"))
        .chain(CHILD_ENV)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(LaunchSpec {
        program: installed.server.clone(),
        args,
        env,
        priority: profile.priority,
        pin_cpu: profile.pin_cpu,
        port,
        api_key: BackendKey::generate(),
        output: OutputLimit {
            burst: config.supervisor.backend_log_burst,
            lines_per_sec: config.supervisor.backend_log_lines_per_sec,
        },
        env_remove: crate::notify::CHILD_HIDDEN_ENV.map(String::from).into(),
    })
}

/// The core of every llama-server command line: the model, loopback on `port`, CPU only, the
/// thread counts (generation, batch), the context and the slots. [`spec`] adds the rest; the
/// bench's limiter comparison starts bare backends with it, so both say it the same way.
pub fn core_args(
    model: &std::path::Path,
    port: u16,
    (threads, threads_batch): (usize, usize),
    ctx_size: u32,
    slots: usize,
) -> Vec<String> {
    let flags = [
        ("--model", model.display().to_string()),
        ("--host", "127.0.0.1".into()),
        ("--port", port.to_string()),
        ("-ngl", "0".into()),
        ("--threads", threads.to_string()),
        ("--threads-batch", threads_batch.to_string()),
        ("--ctx-size", ctx_size.to_string()),
        ("--parallel", slots.to_string()),
    ];
    flags
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
}

/// Environment for the child so its worker threads sleep instead of spinning when idle:
/// GNU OpenMP (`GOMP_SPINCOUNT`), LLVM/Intel OpenMP (`KMP_BLOCKTIME`) and the OpenMP standard
/// (`OMP_WAIT_POLICY`). Harmless for builds without OpenMP.
pub const CHILD_ENV: [(&str, &str); 3] = [
    ("OMP_WAIT_POLICY", "passive"),
    ("GOMP_SPINCOUNT", "0"),
    ("KMP_BLOCKTIME", "0"),
];

/// llama-server flags that turn off busy-polling of its thread pool between work items
/// (`--poll` and `--poll-batch` are 0-100 levels; 0 = no polling).
pub const CHILD_ARGS: [&str; 4] = ["--poll", "0", "--poll-batch", "0"];

/// llama-server flags for warm prefixes: slot files saved to and restored from `slots`, and a
/// full-size sliding-window cache (without `--swa-full`, a model with sliding-window attention
/// such as Gemma 3 keeps only its window of a restored slot: measured here, the first request
/// after restoring a 1 140-token prefix got `cache_n` 0 without it, 1 125 with it).
pub(crate) fn warm_args(slots: &std::path::Path) -> Vec<String> {
    vec![
        "--slot-save-path".into(),
        slots.display().to_string(),
        "--swa-full".into(),
    ]
}

/// Whether llama-server's arguments give it a multimodal projector (`--mmproj FILE`,
/// `--mmproj-url URL`): without one it answers an image or audio part with a 500.
pub(crate) fn has_projector<'a>(args: impl IntoIterator<Item = &'a String>) -> bool {
    let projectors = ["--mmproj", "-mm", "--mmproj-url", "-mmu"];
    args.into_iter()
        .any(|a| projectors.contains(&a.split('=').next().unwrap_or_default()))
}

/// HTTP worker threads for a llama-server with `slots` slots: one per slot plus one for the
/// supervisor's probes (the proxy never lets more than `slots` requests through at once).
/// llama-server's default is several more; every thread costs CPU under the duty cycle, since
/// each SIGSTOP and SIGCONT wakes all of them (measured here: an idle llama-server under
/// `limit --cpus 0.5` used 1.8 % of a core with 10 threads, 1.2 % with 7).
pub fn http_threads(slots: usize) -> usize {
    slots.max(1) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;
    use crate::profile::resolve;

    #[test]
    fn command_line_pins_threads_and_stays_on_loopback() {
        let config = Config::builtin().unwrap();
        let host = Host::unrestricted(2);
        let profile = resolve(&config, "fast", &host).unwrap();
        let installed = Installed {
            server: "/opt/llama-server".into(),
            model: "/m/gemma-3-270m-q4_k_m.gguf".into(),
            rung: crate::backend::setup::RungInUse {
                name: "native --no-repack".into(),
                args: vec!["--no-repack".into()],
                why: "test".into(),
            },
        };
        let s = spec(&installed, &profile, &config).unwrap();
        let joined = s.args.join(" ");
        for want in [
            "--host 127.0.0.1",
            "-ngl 0",
            "--threads 2",
            "--threads-batch 2",
            "--parallel 2",
            "--threads-http 3",
            "--alias gemma-3-270m-q4_k_m",
            "--poll 0",
            "--metrics",
            "--cache-ram 256",
            "--no-repack",
        ] {
            assert!(joined.contains(want), "{want} missing from {joined}");
        }
        assert!(joined.contains(&format!("--port {}", s.port)));
        assert!(s.api_key.expose().len() >= 32);
        assert!(s.env.contains(&("GGML_METAL_DISABLE".into(), "1".into())));
        let other = spec(&installed, &profile, &config).unwrap();
        assert_ne!(s.api_key, other.api_key, "the key must be fresh per launch");
    }

    #[test]
    fn one_http_thread_per_slot_and_one_for_probes() {
        assert_eq!(http_threads(1), 2);
        assert_eq!(http_threads(4), 5);
        assert_eq!(http_threads(0), 2);
    }

    #[test]
    fn child_flags_disable_polling() {
        assert_eq!(CHILD_ARGS, ["--poll", "0", "--poll-batch", "0"]);
        let env = CHILD_ENV;
        assert!(env.contains(&("GOMP_SPINCOUNT", "0")));
        assert!(env.contains(&("OMP_WAIT_POLICY", "passive")));
    }

    #[test]
    fn the_key_is_in_the_environment_only_and_never_printed() {
        let config = Config::builtin().unwrap();
        let host = Host::unrestricted(2);
        let profile = resolve(&config, "balanced", &host).unwrap();
        let installed = Installed {
            server: "/opt/llama-server".into(),
            model: "/m/model.gguf".into(),
            rung: crate::backend::setup::RungInUse::given("test"),
        };
        let s = spec(&installed, &profile, &config).unwrap();
        let key = s.api_key.expose().to_string();
        assert!(!s.args.iter().any(|a| a.contains(&key) || a == "--api-key"));
        assert!(s
            .environment()
            .any(|(k, v)| k == KEY_ENV && v == key.as_str()));
        // No Display: a key formatted by mistake (say, into a bearer header) would send
        // "<redacted>"; only `expose()` gives it, and Debug redacts it.
        for printed in [format!("{s:?}"), format!("{:?}", s.api_key)] {
            assert!(!printed.contains(&key), "key leaked into {printed}");
        }
        assert!(format!("{s:?}").contains("<redacted>"));
    }
}
