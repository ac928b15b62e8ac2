//! Reloading the configuration (SIGHUP, `POST /admin/reload`, or the config file changing
//! while the backend has failed): the file is read again through the same command-line
//! merge as at start ([`Reloader`]), checked, compared with the configuration in force
//! ([`classify`]), and handed to the lifecycle task as a [`Reload`]. An invalid file is
//! refused with the error logged and the old configuration kept.

use super::lifecycle::{Applied, Change, Command, InForce, Plan, Refused, Reload};
use super::RunOptions;
use crate::backend::{launch, setup};
use crate::config::ConfigError;
use crate::proxy;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

/// Reads the configuration again and merges the original command line over it, exactly as
/// at start (built by `commands::run`).
#[derive(Clone)]
pub(crate) struct Reloader(pub Arc<dyn Fn() -> Result<RunOptions, ConfigError> + Send + Sync>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// Why a reload was refused; the old configuration stays in every case.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("the new configuration is invalid, keeping the old one: {0}")]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("this supervisor was started without a way to re-read its configuration (restart it instead)")]
    Unsupported,
}

/// Why the new configuration could not be read or set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
    #[error("reading the configuration panicked: {0} (a bug: please report it with the log)")]
    Panicked(String),
}

/// One request for a reload.
#[derive(Debug)]
pub(crate) struct ReloadRequest {
    /// Why (for the log): `SIGHUP`, `POST /admin/reload`, `config file changed`.
    pub trigger: &'static str,
    /// Where the answer goes, when someone waits for it.
    pub reply: Option<oneshot::Sender<Result<Applied, ReloadError>>>,
}

/// The configuration in force and what it was set up into.
#[derive(Debug, Clone)]
pub(crate) struct Active {
    pub options: RunOptions,
    pub installed: setup::Installed,
}

/// One compared value of a configuration: its name in the log and how it reads.
type Field = (&'static str, fn(&Active) -> String);

/// What makes the backend's command line (the binary, the model, the model id and the
/// profile's threads, context, slots, embeddings and extra arguments) or is set at its spawn
/// (the CPU pin): a change needs a new backend.
const BACKEND_FIELDS: &[Field] = &[
    ("backend", |a| a.installed.server.display().to_string()),
    ("model", |a| a.installed.model.display().to_string()),
    ("model id", |a| {
        launch::model_id(&a.options.config, &a.installed.model)
    }),
    ("threads", |a| a.options.profile.threads.to_string()),
    ("threads_batch", |a| {
        a.options.profile.threads_batch.to_string()
    }),
    ("ctx_size", |a| a.options.profile.ctx_size.to_string()),
    ("slots", |a| a.options.profile.slots.to_string()),
    ("embeddings", |a| a.options.profile.embeddings.to_string()),
    ("extra_args", |a| {
        let (config, profile) = (&a.options.config, &a.options.profile);
        format!("{:?} {:?}", config.backend.extra_args, profile.extra_args)
    }),
    ("pin_cpu", |a| format!("{:?}", a.options.profile.pin_cpu)),
];

/// Everything else that is compared (governor method, period and budget, priority,
/// supervisor and proxy settings): applied to the running backend.
const LIVE_FIELDS: &[Field] = &[
    ("profile", |a| a.options.profile.summary()),
    ("governor", |a| format!("{:?}", a.options.config.governor)),
    ("proxy", |a| format!("{:?}", a.options.config.proxy)),
    ("supervisor", |a| {
        format!("{:?}", a.options.config.supervisor)
    }),
];

/// Whether `new` needs a new backend compared with `old` ([`BACKEND_FIELDS`]) or applies to
/// the running one ([`LIVE_FIELDS`]: the governor is retuned on the same child), and which
/// values differ (for the log).
pub(crate) fn classify(old: &Active, new: &Active) -> (Change, Vec<String>) {
    let differ = |fields: &[Field]| -> Vec<String> {
        fields
            .iter()
            .filter_map(|(name, read)| {
                let (a, b) = (read(old), read(new));
                (a != b).then(|| format!("{name}: {a} -> {b}"))
            })
            .collect()
    };
    let backend = differ(BACKEND_FIELDS);
    if backend.is_empty() {
        (Change::Live, differ(LIVE_FIELDS))
    } else {
        (Change::Backend, backend)
    }
}

/// The lifecycle's plan for `active`.
pub(crate) fn plan(active: &Active) -> Plan {
    let options = &active.options;
    let profile = &options.profile;
    let warmup = super::warmup::Warmup::load(
        &options.config.backend.warm_prefixes,
        &active.installed,
        &options.setup.cache_dir,
        options.config.supervisor.startup_timeout,
    )
    .map(Arc::new);
    let slots = warmup.as_ref().map(|w| w.slots.dir.clone());
    let factory = {
        let (profile, config, slots) = (profile.clone(), options.config.clone(), slots.clone());
        move |installed: setup::Installed| -> super::lifecycle::SpecFactory {
            let inputs = (installed, profile.clone(), config.clone(), slots.clone());
            Box::new(move || {
                let mut spec = launch::spec(&inputs.0, &inputs.1, &inputs.2)?;
                if let Some(dir) = &inputs.3 {
                    // llama-server refuses a --slot-save-path that is not a directory yet.
                    super::warmup::secure_slot_dir(dir).map_err(std::io::Error::other)?;
                    spec.args.extend(launch::warm_args(dir));
                }
                Ok(spec)
            })
        }
    };
    let ladder = (active.installed.rung.is_ladder() && options.setup.smoke.is_some()).then(
        || -> super::lifecycle::LadderStep {
            let current = Mutex::new(active.installed.clone());
            let setup_options = options.setup.clone();
            let factory = factory.clone();
            Arc::new(move |fault| {
                // The lifecycle climbs one step at a time: nothing else waits for this lock.
                let mut current = current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                crate::backend::ladder::record_failure(
                    &setup_options.cache_dir,
                    &current,
                    &fault.summary(),
                    fault.cpu_variant(),
                )
                .map_err(|e| e.to_string())?;
                let next = setup::ensure(&setup_options).map_err(|e| e.to_string())?;
                let rung = rung_report(&next);
                *current = next.clone();
                Ok((factory(next), rung))
            })
        },
    );
    Plan {
        config: options.config.supervisor.clone(),
        make_spec: factory(active.installed.clone()),
        ladder,
        governor_config: options.config.governor.clone(),
        governor_settings: profile.governor_settings(options.host),
        warmup,
    }
}

/// How `/status` names the backend `installed` runs.
fn rung_report(installed: &setup::Installed) -> crate::status::BackendRung {
    crate::status::BackendRung {
        rung: installed.rung.name.clone(),
        program: installed.server.display().to_string(),
        args: installed.rung.args.clone(),
        why: installed.rung.why.clone(),
    }
}

/// The proxy's live settings for `active`, as configuration `generation`.
pub(crate) fn live(active: &Active, generation: u64) -> proxy::Live {
    let (config, profile) = (&active.options.config, &active.options.profile);
    let model = &active.installed.model;
    let extra_args = config.backend.extra_args.iter().chain(&profile.extra_args);
    let spill = config
        .profiles
        .get(&profile.name)
        .map(|p| crate::upstream::SpillPolicy {
            mode: p.spill,
            deadline: p.deadline,
        });
    proxy::Live {
        generation,
        config: config.proxy.clone(),
        info: proxy::Info {
            model_id: launch::model_id(config, model),
            model: model.display().to_string(),
            profile: profile.clone(),
            rung: rung_report(&active.installed),
            vocab_size: crate::backend::gguf::vocab_size(model),
            projector: launch::has_projector(extra_args),
        },
        spill: spill.unwrap_or_default(),
    }
}

/// Performs reloads one at a time.
#[derive(Clone)]
pub(crate) struct Reloads {
    pub reloader: Option<Reloader>,
    /// The configuration in force, as the lifecycle publishes it.
    pub in_force: watch::Receiver<Arc<InForce>>,
    pub shared: Arc<proxy::Shared>,
    pub lifecycle: mpsc::Sender<Command>,
}

impl Reloads {
    /// Serves reload requests one at a time until every sender is gone.
    pub(crate) async fn serve(self, mut requests: mpsc::Receiver<ReloadRequest>) {
        while let Some(request) = requests.recv().await {
            let result = self.reload(request.trigger).await;
            if let Some(reply) = request.reply {
                let _ = reply.send(result);
            }
        }
    }

    /// Re-reads the configuration and applies it; `trigger` says why (for the log).
    pub(crate) async fn reload(&self, trigger: &str) -> Result<Applied, ReloadError> {
        crate::notify::reloading();
        let result = self.reload_inner(trigger).await;
        match &result {
            Ok(applied) => tracing::info!(
                trigger,
                ?applied,
                generation = self.shared.live().generation,
                "reload done"
            ),
            Err(e) => {
                tracing::error!(trigger, error = %e, "reload refused; the old configuration stays");
            }
        }
        crate::notify::ready(&crate::notify::status_line(&self.shared.report()));
        result
    }

    async fn reload_inner(&self, trigger: &str) -> Result<Applied, ReloadError> {
        let reloader = self.reloader.clone().ok_or(ReloadError::Unsupported)?;
        tracing::info!(trigger, "reloading the configuration");
        let active = tokio::task::spawn_blocking(move || -> Result<Active, Invalid> {
            let options = (reloader.0)()?;
            let installed = setup::ensure(&options.setup)?;
            Ok(Active { options, installed })
        })
        .await
        .map_err(|e| Invalid::Panicked(e.to_string()))??;
        let old = self.in_force.borrow().active.clone();
        if active.options.listen != old.options.listen {
            tracing::warn!(old = %old.options.listen, new = %active.options.listen, "`listen` changes only with a restart; keeping the old address");
        }
        if active.options.api_keys != old.options.api_keys {
            tracing::warn!("`api_keys` change only with a restart; keeping the old keys");
        }
        let (change, changes) = classify(&old, &active);
        tracing::info!(?change, changes = ?changes, "configuration changes");
        let (slots, queue_len) = (
            active.options.profile.slots,
            active.options.config.proxy.queue_len,
        );
        let (done, answer) = oneshot::channel();
        let reload = Reload {
            plan: plan(&active),
            active,
            change,
            done,
        };
        self.lifecycle
            .send(Command::Reload(Box::new(reload)))
            .await
            .map_err(|_| Refused::ShuttingDown)?;
        let applied = answer.await.map_err(|_| Refused::ShuttingDown)??;
        // The proxy's admission follows the configuration now in force; idle keep-alive
        // connections to an old backend would delay its exit.
        self.shared.admission.resize(slots, queue_len);
        self.shared.close_idle_upstream();
        Ok(applied)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::Config;
    use crate::host::Host;
    use std::path::Path;

    /// The configuration of `user` (a config file's text) as setup would install it.
    pub(crate) fn active(user: &str) -> Active {
        let config = Config::from_layers(Some((Path::new("/etc/s.toml"), user))).unwrap();
        let host = Host::unrestricted(4);
        let profile = crate::profile::resolve(&config, &config.default_profile, &host).unwrap();
        Active {
            options: RunOptions {
                listen: config.listen,
                api_keys: vec![],
                setup: setup::SetupOptions {
                    cache_dir: "/tmp".into(),
                    model: None,
                    backend_bin: None,
                    smoke: None,
                    all_rungs: false,
                    limits: Default::default(),
                    host,
                },
                profile,
                host,
                config,
                config_path: None,
                reloader: None,
            },
            installed: setup::Installed {
                server: "/bin/llama-server".into(),
                model: "/m/model.gguf".into(),
                rung: setup::RungInUse::given("test"),
            },
        }
    }

    #[test]
    fn governor_priority_and_proxy_changes_are_live() {
        let base = active("");
        let new = active(
            "[profiles.balanced]\ncpus = 0.5\ncpus_when_idle = 2.0\npriority = \"idle\"\n[governor]\nperiod = \"15ms\"\n[proxy]\nqueue_len = 3\n",
        );
        let (change, changes) = classify(&base, &new);
        assert_eq!(change, Change::Live, "{changes:?}");
        assert!(
            changes.iter().any(|c| c.starts_with("governor")),
            "{changes:?}"
        );
        assert!(
            changes.iter().any(|c| c.starts_with("proxy")),
            "{changes:?}"
        );
        assert_eq!(classify(&base, &active("")).1, Vec::<String>::new());
    }

    #[test]
    fn a_profiles_method_and_period_restart_only_the_governor() {
        let base = active("");
        let new = active("[profiles.balanced]\nmethod = \"signals\"\nperiod = \"2ms\"\n");
        let (change, changes) = classify(&base, &new);
        assert_eq!(change, Change::Live, "{changes:?}");
        assert!(
            changes
                .iter()
                .any(|c| c.starts_with("profile") && c.ends_with("method signals, period 2ms")),
            "{changes:?}"
        );
        let settings = plan(&new).governor_settings;
        assert_eq!(
            (settings.method, settings.period),
            (
                crate::governor::Method::Signals,
                std::time::Duration::from_millis(2)
            )
        );
    }

    #[test]
    fn threads_slots_context_and_model_need_a_new_backend() {
        let base = active("");
        for (user, what) in [
            ("[profiles.balanced]\nthreads = 1\n", "threads"),
            ("[profiles.balanced]\nslots = 3\n", "slots"),
            ("[backend]\nctx_size = 2048\n", "ctx_size"),
            ("[backend]\nextra_args = [\"--no-mmap\"]\n", "extra_args"),
            ("model_alias = \"other\"\n", "model id"),
            (
                "[profiles.balanced]\nthreads = 1\nthreads_batch = 1\npin = true\n",
                "pin_cpu",
            ),
        ] {
            let (change, changes) = classify(&base, &active(user));
            assert_eq!(change, Change::Backend, "{user}: {changes:?}");
            assert!(
                changes.iter().any(|c| c.starts_with(what)),
                "{user}: {changes:?}"
            );
        }
        let mut moved = active("");
        moved.installed.model = "/m/other.gguf".into();
        assert_eq!(classify(&base, &moved).0, Change::Backend);
    }
}
