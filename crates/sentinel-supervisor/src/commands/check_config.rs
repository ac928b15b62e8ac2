//! `sentinel-supervisor check-config`: loads the configuration as `run` would (the built-in
//! defaults with the user's file over them), checks it, resolves every profile against this
//! host, and prints the effective configuration as TOML with the API keys redacted. Exit 0 when
//! it is valid; 1 with the error (which names the key and the file) when not.

use crate::cli::ConfigArgs;
use crate::config::{Config, ConfigError, BUILTIN_NAME};
use crate::host::Host;
use crate::profile::{self, Resolved};
use std::process::ExitCode;

/// What an API key is printed as.
pub(crate) const REDACTED: &str = "<redacted>";

pub(crate) fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    match check(args, &Host::detect()) {
        Ok(text) => {
            print!("{text}");
            if let Ok(config) = super::load_config(args) {
                println!(
                    "# backend: {}",
                    crate::backend::ladder::recorded(
                        &config.cache_dir(),
                        config.backend.bin.as_deref()
                    )
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: {err}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The effective configuration as TOML, or why it is invalid.
fn check(args: &ConfigArgs, host: &Host) -> Result<String, CheckError> {
    let config = super::load_config(args)?;
    let profiles = config
        .profiles
        .keys()
        .map(|name| profile::resolve(&config, name, host))
        .collect::<Result<Vec<_>, _>>()?;
    let from_env = std::env::var("SENTINEL_API_KEY").is_ok_and(|k| !k.trim().is_empty());
    render(&config, &profiles, host, from_env)
}

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot print the configuration as TOML: {0} (please report this as a bug)")]
    Print(#[from] toml::ser::Error),
}

/// The configuration as TOML with `api_keys` values replaced by [`REDACTED`], after a header
/// saying where it came from and followed, as comments, by every profile as resolved on `host`.
fn render(
    config: &Config,
    profiles: &[Resolved],
    host: &Host,
    key_from_env: bool,
) -> Result<String, CheckError> {
    let mut redacted = config.clone();
    redacted.api_keys = vec![REDACTED.to_string(); config.api_keys.len()];
    let source = match &config.source {
        Some(path) => format!("{BUILTIN_NAME} + {}", path.display()),
        None => BUILTIN_NAME.to_string(),
    };
    let mut out = format!(
        "# Effective configuration (valid): {source}\n# api_keys: {} in the file{}, values redacted\n\n",
        config.api_keys.len(),
        if key_from_env {
            ", plus one from SENTINEL_API_KEY"
        } else {
            ""
        }
    );
    out.push_str(&toml::to_string(&redacted)?);
    out.push_str(&format!(
        "\n# Profiles as resolved on this host ({}):\n",
        host.describe()
    ));
    for p in profiles {
        let default = if p.name == config.default_profile {
            " (default)"
        } else {
            ""
        };
        out.push_str(&format!("#   {}{default}\n", p.summary()));
        for note in &p.notes {
            out.push_str(&format!("#     {note}\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn host() -> Host {
        Host::unrestricted(4)
    }

    fn rendered(text: &str) -> String {
        let config = Config::from_layers(Some((Path::new("/etc/s.toml"), text))).unwrap();
        let profiles: Vec<Resolved> = config
            .profiles
            .keys()
            .map(|n| profile::resolve(&config, n, &host()).unwrap())
            .collect();
        render(&config, &profiles, &host(), false).unwrap()
    }

    #[test]
    fn keys_are_redacted_and_counted() {
        let out = rendered("api_keys = [\"sk-secret-one\", \"sk-secret-two\"]\n");
        assert!(!out.contains("sk-secret"), "{out}");
        assert!(
            out.contains(r#"api_keys = ["<redacted>", "<redacted>"]"#),
            "{out}"
        );
        assert!(out.contains("# api_keys: 2 in the file"), "{out}");
        assert!(out.contains("built-in config.toml + /etc/s.toml"), "{out}");
    }

    #[test]
    fn the_printed_configuration_reads_back_as_the_same_configuration() {
        let text = "listen = \"127.0.0.1:9000\"\n[profiles.balanced]\ncpus = 0.75\n\
                    [profiles.mine]\nthreads = 2\nadaptive = 0.4\n[supervisor]\nstop_grace = \"2s\"\n";
        let out = rendered(text);
        let original = Config::from_layers(Some((Path::new("/etc/s.toml"), text))).unwrap();
        let again = Config::from_layers(Some((Path::new("/tmp/printed.toml"), &out))).unwrap();
        assert_eq!(
            toml::Value::try_from(&again).unwrap(),
            toml::Value::try_from(&original).unwrap(),
            "{out}"
        );
        // Defaults are filled in, the user's values are there.
        for want in [
            "listen = \"127.0.0.1:9000\"",
            "stop_grace = \"2s\"",
            "startup_timeout = \"3m\"",
            "[profiles.mine]",
            "#   mine: threads 2",
        ] {
            assert!(out.contains(want), "{want:?} missing from\n{out}");
        }
        assert!(
            out.lines()
                .any(|l| l.starts_with("#   balanced: ") && l.ends_with("(default)")),
            "{out}"
        );
    }

    #[test]
    fn a_profiles_method_period_and_pin_are_printed_and_read_back() {
        let text = "[profiles.invisible]\nmethod = \"signals\"\nperiod = \"2ms\"\npin = true\n\
                    [profiles.fast]\npin = true\n";
        let out = rendered(text);
        for want in [
            "method = \"signals\"",
            "period = \"2ms\"",
            "#   invisible: threads 1, threads_batch 1, cpus 0.50 cores, priority idle, slots 1, \
             ctx 4096, cache_ram 256 mib, method signals, period 2ms, pinned to cpu 3",
            "#     method signals, overrides governor.method auto",
            "#     period 2ms, overrides governor.period 20ms",
            "#     pin: not pinned, threads = 4 and threads_batch = 4; pinning needs both to be 1",
        ] {
            assert!(out.contains(want), "{want:?} missing from\n{out}");
        }
        let again = Config::from_layers(Some((Path::new("/tmp/printed.toml"), &out))).unwrap();
        assert_eq!(
            again.profiles["invisible"].period,
            Some(std::time::Duration::from_millis(2))
        );
        assert!(again.profiles["fast"].pin);
        assert_eq!(again.profiles["balanced"].method, None);
    }
}
