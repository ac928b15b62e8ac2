//! The supervisor: wires config, setup, the backend lifecycle, the governor and the proxy
//! together; reloads the configuration on SIGHUP (and `POST /admin/reload`); while the
//! backend has failed, watches the model and config files to try again at once; and on
//! SIGTERM/SIGINT drains the requests in flight, then shuts everything down without leaving
//! a child behind.

pub(crate) mod lifecycle;
pub(crate) mod liveness;
pub(crate) mod policy;
pub(crate) mod reload;
pub mod state;
pub(crate) mod warmup;

use crate::backend::setup;
use crate::config::{Config, SupervisorConfig};
use crate::governor::Activity;
use crate::profile;
use crate::proxy;
use anyhow::Context;
use lifecycle::{Command, End, InForce};
use reload::{Active, ReloadRequest, Reloader, Reloads};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("refusing to listen on {addr} without an API key: anyone on the network could use the model. Set `api_keys = [\"...\"]` in the config file or the SENTINEL_API_KEY environment variable, or listen on 127.0.0.1")]
    OpenListener { addr: std::net::SocketAddr },
    #[error("cannot listen on {addr}: {source} (pick another address with --listen or `listen` in config)")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// How long open connections may take to finish once the backend is stopped.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// The exit status when the crash-loop breaker trips with `on_crash_loop = "exit"`.
pub(crate) const CRASH_LOOP_EXIT: u8 = 3;

/// What `run` runs: the command line merged over the configuration, the profile resolved.
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    pub config: Config,
    /// The profile (`--profile` or `default_profile`) resolved against this host.
    pub profile: profile::Resolved,
    /// The host the profile was resolved against (detected once by the command).
    pub host: crate::host::Host,
    /// The endpoint's address (`--listen` or `listen`).
    pub listen: std::net::SocketAddr,
    /// Keys clients must send (`api_keys` and `SENTINEL_API_KEY`); empty = none needed.
    pub api_keys: Vec<String>,
    /// Where llama-server and the model come from.
    pub setup: setup::SetupOptions,
    /// The configuration file (given or the usual place), watched while the backend has
    /// failed; `None` when there is none.
    pub config_path: Option<PathBuf>,
    /// Reads the configuration again for a reload; `None`: no reloads.
    pub reloader: Option<Reloader>,
}

/// `sentinel-supervisor run`: serves until SIGTERM/SIGINT (exit 0), or until the crash-loop
/// breaker trips with `on_crash_loop = "exit"` (exit [`CRASH_LOOP_EXIT`]).
pub(crate) async fn run(options: RunOptions) -> anyhow::Result<ExitCode> {
    let (active, listener) = prepare(options).await?;
    let supervisor = active.options.config.supervisor.clone();
    let mut tasks = start(active, listener).await?;
    let ended = serve_signals(&mut tasks.lifecycle, &tasks.reload_requests).await;
    Ok(tasks.shut_down(ended, &supervisor).await)
}

/// Checks the options, sets up llama-server and the model, and binds the endpoint.
async fn prepare(options: RunOptions) -> anyhow::Result<(Active, tokio::net::TcpListener)> {
    let (listen, profile) = (options.listen, &options.profile);
    if !listen.ip().is_loopback() && options.api_keys.is_empty() {
        return Err(StartError::OpenListener { addr: listen }.into());
    }
    tracing::info!(profile = %profile.summary(), "profile resolved");
    for note in &profile.notes {
        tracing::info!(profile = %profile.name, "{note}");
    }
    let setup_options = options.setup.clone();
    crate::notify::status(&format!("setting up - {}", profile.name));
    let setup_task = tokio::task::spawn_blocking(move || setup::ensure(&setup_options));
    let installed = crate::notify::while_setting_up(setup_task)
        .await
        .context("setup panicked")??;
    tracing::info!(
        rung = %installed.rung.name,
        program = %installed.server.display(),
        args = ?installed.rung.args,
        why = %installed.rung.why,
        "backend in use"
    );
    let memory_limit = options.config.backend.memory_limit;
    crate::backend::memory::check_at_start(&installed.model, profile, memory_limit)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    Ok((Active { options, installed }, listener))
}

/// What runs once everything is started, and how it is stopped.
struct Tasks {
    lifecycle: tokio::task::JoinHandle<End>,
    reload_requests: mpsc::Sender<ReloadRequest>,
    /// The reload task (one reload at a time) and the watcher that reloads or retries when a
    /// file changes while the backend has failed.
    reloads: tokio::task::JoinSet<()>,
    server: tokio::task::JoinHandle<()>,
    /// Stops the lifecycle (which drains first) and the background tasks.
    shutdown: CancellationToken,
    /// Stops the HTTP server, after the lifecycle.
    server_cancel: CancellationToken,
    shared: Arc<proxy::Shared>,
}

/// Starts the lifecycle, the proxy and the tasks around them.
async fn start(active: Active, listener: tokio::net::TcpListener) -> anyhow::Result<Tasks> {
    let local = listener.local_addr()?;
    let config = active.options.config.clone();
    let shutdown = CancellationToken::new();
    let (status_tx, status_rx) = watch::channel(state::Status::initial());
    let (governor_tx, governor_rx) = watch::channel(None);
    let (in_force_tx, in_force_rx) = watch::channel(Arc::new(InForce::new(active.clone(), 1)));
    let (commands_tx, commands_rx) = mpsc::channel::<Command>(8);
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
    // Where every governor adds the time it holds a backend stopped (the watchdog reads it).
    let stopped = crate::governor::StoppedTime::default();
    let metrics = metrics(&active, &stopped, &status_rx, &governor_rx, &shutdown);
    let upstreams = upstreams(&in_force_rx.borrow(), &metrics)?;
    let (profile, host) = (&active.options.profile, active.options.host);
    let situation = crate::situation::Situation::start(&config.situation, profile, &host).await;
    let reloader = active.options.reloader.clone();
    let readers = Readers {
        status: status_rx,
        governor: governor_rx,
        in_force: in_force_rx.clone(),
        reload: reloader.is_some().then(|| reload_tx.clone()),
        situation: situation.as_ref().map_or_else(
            || watch::Sender::new(None).subscribe(),
            crate::situation::Situation::reports,
        ),
    };
    let shared = proxy_state(&active, readers, metrics, upstreams);
    let heartbeat = crate::notify::Heartbeat::default();
    let lifecycle = lifecycle::Lifecycle {
        backend: lifecycle::Llama,
        activity: shared.activity.clone(),
        stopped,
        governor: governor_tx,
        status: status_tx,
        in_force: in_force_tx,
        inflight: shared.inflight.clone(),
        heartbeat: heartbeat.clone(),
        cancel: shutdown.clone(),
        metrics: Arc::clone(&shared.metrics),
        budget: situation.as_ref().map_or_else(
            crate::situation::Follow::off,
            crate::situation::Situation::follow,
        ),
    };
    let lifecycle = tokio::spawn(lifecycle.run(reload::plan(&active), commands_rx));
    spawn_notify(&shared, heartbeat, local, &config, &shutdown);
    if let Some(situation) = situation {
        tokio::spawn(situation.run(Arc::clone(&shared), host, shutdown.clone()));
    }
    crate::metrics::textfile::spawn(
        Arc::clone(&shared),
        config.metrics.clone(),
        shutdown.clone(),
    );
    let server_cancel = CancellationToken::new();
    let server = serve_http(listener, local, &shared, &active, server_cancel.clone());
    let reloads = Reloads {
        reloader,
        in_force: in_force_rx,
        shared: Arc::clone(&shared),
        lifecycle: commands_tx,
    };
    let mut background = tokio::task::JoinSet::new();
    background.spawn(watch_files_while_failed(
        reloads.clone(),
        reload_tx.clone(),
        shutdown.clone(),
    ));
    background.spawn(reloads.serve(reload_rx));
    Ok(Tasks {
        lifecycle,
        reload_requests: reload_tx,
        reloads: background,
        server,
        shutdown,
        server_cancel,
        shared,
    })
}

/// What the proxy reads of the lifecycle, the reloads and the situation.
struct Readers {
    status: watch::Receiver<state::Status>,
    governor: watch::Receiver<Option<crate::governor::GovernorSnapshot>>,
    in_force: watch::Receiver<Arc<InForce>>,
    reload: Option<mpsc::Sender<ReloadRequest>>,
    situation: watch::Receiver<Option<crate::situation::SituationReport>>,
}

/// The proxy's shared state for `active`.
fn proxy_state(
    active: &Active,
    readers: Readers,
    metrics: Arc<crate::metrics::Metrics>,
    upstreams: crate::upstream::Upstreams,
) -> Arc<proxy::Shared> {
    let (profile, config) = (&active.options.profile, &active.options.config);
    Arc::new(proxy::Shared {
        live: readers.in_force,
        admission: proxy::admission::Admission::new(profile.slots, config.proxy.queue_len),
        status: readers.status,
        // The one registry of requests: the proxy issues the tickets, the drain and the
        // watchdog read them.
        inflight: crate::requests::Requests::default(),
        reload: readers.reload,
        activity: Activity::new(),
        keys: proxy::auth::Keys::new(active.options.api_keys.clone()),
        client: std::sync::Mutex::new(proxy::forward::upstream_client()),
        governor: readers.governor,
        started: std::time::Instant::now(),
        metrics,
        poison: proxy::poison::PoisonList::default(),
        situation: readers.situation,
        spill: Arc::new(crate::upstream::spill::Spill::new(upstreams)),
    })
}

/// The metrics registry, with the SLO sampler that feeds it until `shutdown`.
fn metrics(
    active: &Active,
    stopped: &crate::governor::StoppedTime,
    status: &watch::Receiver<state::Status>,
    governor: &watch::Receiver<Option<crate::governor::GovernorSnapshot>>,
    shutdown: &CancellationToken,
) -> Arc<crate::metrics::Metrics> {
    let metrics = Arc::new(
        crate::metrics::Metrics::new(
            &active.options.config.slo,
            active.options.host.online_cpus,
            stopped.clone(),
        )
        .with_host_labels(&active.options.config.labels),
    );
    crate::metrics::sampler::spawn(
        Arc::clone(&metrics),
        status.clone(),
        governor.clone(),
        shutdown.clone(),
    );
    metrics
}

/// The central tier (`[[upstreams]]`) and whether the profile in force may spill to it.
fn upstreams(
    in_force: &InForce,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<crate::upstream::Upstreams> {
    let (config, profile) = (
        &in_force.active.options.config,
        &in_force.active.options.profile,
    );
    let spill = in_force.live.spill.mode;
    let upstreams = crate::upstream::Upstreams::build(
        &config.upstreams,
        &config.spill,
        metrics.upstream.clone(),
    )?;
    for up in upstreams.iter() {
        tracing::info!(upstream = %up.settings.name, url = %up.settings.url, "central tier configured");
    }
    if spill != crate::upstream::SpillMode::Never && upstreams.is_empty() {
        tracing::warn!(profile = %profile.name, ?spill, "the profile may spill but no [[upstreams]] is configured: every request stays local");
    }
    Ok(upstreams)
}

/// Serves the router on `listener` (bound to `local`) until `cancel`; says where on stdout.
fn serve_http(
    listener: tokio::net::TcpListener,
    local: std::net::SocketAddr,
    shared: &Arc<proxy::Shared>,
    active: &Active,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let app = proxy::router(Arc::clone(shared));
    println!("{}http://{local}", crate::status::LISTENING_PREFIX);
    tracing::info!(addr = %local, profile = %active.options.profile.name, model = %active.installed.model.display(), "listening");
    let proxy_config = active.options.config.proxy.clone();
    tokio::spawn(proxy::server::serve(listener, app, proxy_config, cancel))
}

/// The service manager's protocol: READY, STATUS and WATCHDOG until `shutdown`.
fn spawn_notify(
    shared: &Arc<proxy::Shared>,
    heartbeat: crate::notify::Heartbeat,
    local: std::net::SocketAddr,
    config: &Config,
    shutdown: &CancellationToken,
) {
    tokio::spawn(
        crate::notify::Service {
            shared: Arc::clone(shared),
            heartbeat,
            health_url: crate::notify::health_url(local),
            config: config.supervisor.clone(),
            cancel: shutdown.clone(),
        }
        .run(),
    );
}

impl Tasks {
    /// Stops everything once the lifecycle ended (`Some`) or a signal asked (`None`: the
    /// lifecycle drains, then stops the backend, within a deadline); the exit code.
    async fn shut_down(mut self, ended: Option<End>, config: &SupervisorConfig) -> ExitCode {
        let code = match ended {
            Some(End::CrashLoop { ref reason }) => {
                tracing::error!(%reason, exit_code = CRASH_LOOP_EXIT, "exiting: the backend is in a crash loop");
                ExitCode::from(CRASH_LOOP_EXIT)
            }
            Some(End::Stopped) | None => ExitCode::SUCCESS,
        };
        self.shutdown.cancel();
        if ended.is_none() {
            crate::notify::stopping();
            let drain = config.drain_timeout;
            tracing::info!(
                ?drain,
                in_flight = self.shared.inflight.total(),
                "shutting down: new requests get 503, those in flight may finish"
            );
            // Idle keep-alive connections would make llama-server wait for them before exiting.
            self.shared.close_idle_upstream();
            // The lifecycle task drains, then stops the backend (SIGCONT, SIGTERM, grace, SIGKILL).
            let stop_deadline = drain + config.stop_grace + Duration::from_secs(5);
            if tokio::time::timeout(stop_deadline, &mut self.lifecycle)
                .await
                .is_err()
            {
                tracing::error!("the backend did not stop in time");
            }
        }
        self.reloads.abort_all();
        self.server_cancel.cancel();
        if tokio::time::timeout(SHUTDOWN_DEADLINE, self.server)
            .await
            .is_err()
        {
            tracing::warn!(
                "open connections did not finish within {SHUTDOWN_DEADLINE:?}; closing them"
            );
        }
        code
    }
}

/// Handles signals until SIGTERM/SIGINT (`None`) or the lifecycle ending by itself; SIGHUP
/// asks for a reload.
async fn serve_signals(
    lifecycle: &mut tokio::task::JoinHandle<End>,
    reloads: &mpsc::Sender<ReloadRequest>,
) -> Option<End> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installing a handler fails only for a forbidden signal or a runtime without its I/O
    // driver; these three are allowed and `run` builds the runtime with `enable_all`.
    let invariant = "the runtime has its I/O driver and the signal may be caught";
    let mut term = signal(SignalKind::terminate()).expect(invariant);
    let mut int = signal(SignalKind::interrupt()).expect(invariant);
    let mut hup = signal(SignalKind::hangup()).expect(invariant);
    loop {
        tokio::select! {
            _ = term.recv() => return None,
            _ = int.recv() => return None,
            _ = hup.recv() => {
                let request = ReloadRequest { trigger: "SIGHUP", reply: None };
                if reloads.try_send(request).is_err() {
                    tracing::warn!("SIGHUP: reloads are already queued; this one is dropped");
                }
            }
            end = &mut *lifecycle => {
                return Some(end.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "the lifecycle task panicked");
                    End::Stopped
                }));
            }
        }
    }
}

/// A file's identity for change detection: modification time and size (`None`: missing).
type Fingerprint = Option<(SystemTime, u64)>;

fn fingerprint(path: Option<&Path>) -> Fingerprint {
    let meta = std::fs::metadata(path?).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// While the backend has failed, polls the config file and the model file: a changed config
/// is reloaded (which tries again with it), a changed model is tried again at once.
async fn watch_files_while_failed(
    reloads: Reloads,
    requests: mpsc::Sender<ReloadRequest>,
    cancel: CancellationToken,
) {
    let paths = || {
        let now = Arc::clone(&reloads.in_force.borrow());
        let a = &now.active;
        (
            a.options.config_path.clone(),
            a.installed.model.clone(),
            a.options.config.supervisor.file_poll_interval,
        )
    };
    let (config, model, _) = paths();
    let mut seen = (fingerprint(config.as_deref()), fingerprint(Some(&model)));
    loop {
        let (config, model, interval) = paths();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return,
        }
        let now = (fingerprint(config.as_deref()), fingerprint(Some(&model)));
        let failed = matches!(
            reloads.shared.status.borrow().state,
            state::State::Failed { .. }
        );
        if failed && now.0 != seen.0 {
            tracing::info!(path = ?config, "the config file changed while failed; reloading");
            let _ = requests
                .send(ReloadRequest {
                    trigger: "config file changed",
                    reply: None,
                })
                .await;
        } else if failed && now.1 != seen.1 {
            let why = format!("the model file {} changed", model.display());
            let _ = reloads.lifecycle.send(Command::Retry { why }).await;
        }
        seen = now;
    }
}
