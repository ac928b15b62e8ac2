//! The supervisor: wires config, setup, the backend lifecycle, the governor and the proxy
//! together; reloads the configuration on SIGHUP (and `POST /admin/reload`); while the
//! backend has failed, watches the model and config files to try again at once; and on
//! SIGTERM/SIGINT drains the requests in flight, then shuts everything down without leaving
//! a child behind.

pub mod inflight;
pub mod lifecycle;
pub mod liveness;
pub mod policy;
pub mod reload;
pub mod state;
pub mod warmup;

use crate::backend::setup;
use crate::config::Config;
use crate::governor::Activity;
use crate::profile;
use crate::proxy;
use anyhow::Context;
use lifecycle::{Command, End};
use reload::{Active, ReloadRequest, Reloader, Reloads};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
pub const CRASH_LOOP_EXIT: u8 = 3;

/// What `run` runs: the command line merged over the configuration, the profile resolved.
#[derive(Debug, Clone)]
pub struct RunOptions {
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
pub async fn run(options: RunOptions) -> anyhow::Result<ExitCode> {
    let listen = options.listen;
    let keys = options.api_keys.clone();
    let profile = options.profile.clone();
    let config = options.config.clone();
    if !listen.ip().is_loopback() && keys.is_empty() {
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
    crate::backend::memory::check_at_start(
        &installed.model,
        &profile,
        config.backend.memory_limit,
    )?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr()?;

    let reloader = options.reloader.clone();
    let active = Active {
        options,
        installed: installed.clone(),
    };
    // Stops the lifecycle (which drains first); the server stops after it.
    let shutdown = CancellationToken::new();
    let server_cancel = CancellationToken::new();
    let activity = Activity::new();
    let inflight = inflight::InFlight::new();
    let (status_tx, status_rx) = watch::channel(state::Status::initial());
    let (governor_tx, governor_rx) = watch::channel(None);
    let (commands_tx, commands_rx) = mpsc::channel::<Command>(8);
    let heartbeat = crate::notify::Heartbeat::default();
    let notify_status = status_rx.clone();
    let metrics =
        Arc::new(crate::metrics::Metrics::new(&config.slo).with_host_labels(&config.labels));
    let upstreams = crate::upstream::Upstreams::build(
        &config.upstreams,
        &config.spill,
        metrics.upstream.clone(),
    )?;
    for up in upstreams.iter() {
        tracing::info!(upstream = %up.settings.name, url = %up.settings.url, "central tier configured");
    }
    let spill = config
        .profiles
        .get(&profile.name)
        .map(|p| p.spill)
        .unwrap_or_default();
    if spill != crate::upstream::SpillMode::Never && upstreams.is_empty() {
        tracing::warn!(profile = %profile.name, ?spill, "the profile may spill but no [[upstreams]] is configured: every request stays local");
    }
    // The SLO sampler ends with `cancel`.
    crate::metrics::sampler::spawn(
        Arc::clone(&metrics),
        status_rx.clone(),
        governor_rx.clone(),
        shutdown.clone(),
    );
    let liveness = liveness::Liveness::new();
    let situation =
        crate::situation::Situation::start(&config.situation, &profile, &active.options.host).await;
    let situation_reports = situation.as_ref().map_or_else(
        || watch::Sender::new(None).subscribe(),
        crate::situation::Situation::reports,
    );
    let lifecycle = lifecycle::Lifecycle {
        activity: activity.clone(),
        governor: governor_tx,
        status: status_tx,
        inflight: inflight.clone(),
        heartbeat: heartbeat.clone(),
        cancel: shutdown.clone(),
        metrics: Arc::clone(&metrics),
        liveness: liveness.clone(),
        budget: situation.as_ref().map_or_else(
            crate::situation::Follow::off,
            crate::situation::Situation::follow,
        ),
    };
    let mut lifecycle_task = tokio::spawn(lifecycle.run(reload::plan(&active), commands_rx));

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let shared = Arc::new(proxy::Shared {
        live: watch::Sender::new(Arc::new(reload::live(&active, 1))),
        admission: proxy::admission::Admission::new(profile.slots, config.proxy.queue_len),
        status: status_rx,
        inflight,
        reload: reloader.is_some().then(|| reload_tx.clone()),
        activity,
        keys: proxy::auth::Keys::new(keys),
        client: std::sync::Mutex::new(proxy::forward::upstream_client()),
        governor: governor_rx,
        liveness,
        started: std::time::Instant::now(),
        metrics,
        poison: proxy::poison::PoisonList::new(),
        situation: situation_reports,
        spill: Arc::new(crate::upstream::spill::Spill::new(upstreams)),
    });
    if let Some(situation) = situation {
        let host = active.options.host;
        tokio::spawn(situation.run(Arc::clone(&shared), host, shutdown.clone()));
    }
    crate::metrics::textfile::spawn(
        Arc::clone(&shared),
        config.metrics.clone(),
        shutdown.clone(),
    );
    let app = proxy::router(Arc::clone(&shared));
    println!("{}http://{local}", crate::status::LISTENING_PREFIX);
    tracing::info!(addr = %local, profile = %profile.name, model = %installed.model.display(), "listening");

    let server = tokio::spawn(proxy::server::serve(
        listener,
        app,
        config.proxy.clone(),
        server_cancel.clone(),
    ));

    let active = Arc::new(Mutex::new(active));
    let reloads = Reloads {
        reloader,
        active: Arc::clone(&active),
        shared: Arc::clone(&shared),
        lifecycle: commands_tx.clone(),
    };
    let reload_task = tokio::spawn(async move {
        while let Some(request) = reload_rx.recv().await {
            let result = reloads.reload(request.trigger).await;
            if let Some(reply) = request.reply {
                let _ = reply.send(result);
            }
        }
    });
    let watcher = tokio::spawn(watch_files_while_failed(
        Arc::clone(&active),
        shared.status.clone(),
        reload_tx.clone(),
        commands_tx,
        shutdown.clone(),
    ));

    let report_shared = Arc::clone(&shared);
    tokio::spawn(
        crate::notify::Service {
            report: Arc::new(move || report_shared.report()),
            status: notify_status,
            heartbeat,
            health_url: crate::notify::health_url(local),
            config: config.supervisor.clone(),
            cancel: shutdown.clone(),
        }
        .run(),
    );

    let ended = serve_signals(&mut lifecycle_task, &reload_tx).await;
    let code = match ended {
        Some(End::CrashLoop { ref reason }) => {
            tracing::error!(%reason, exit_code = CRASH_LOOP_EXIT, "exiting: the backend is in a crash loop");
            ExitCode::from(CRASH_LOOP_EXIT)
        }
        Some(End::Stopped) | None => ExitCode::SUCCESS,
    };
    shutdown.cancel();
    if ended.is_none() {
        crate::notify::stopping();
        let drain = config.supervisor.drain_timeout;
        tracing::info!(
            ?drain,
            in_flight = shared.inflight.total(),
            "shutting down: new requests get 503, those in flight may finish"
        );
        // Idle keep-alive connections would make llama-server wait for them before exiting.
        shared.close_idle_upstream();
        // The lifecycle task drains, then stops the backend (SIGCONT, SIGTERM, grace, SIGKILL).
        let stop_deadline = drain + config.supervisor.stop_grace + Duration::from_secs(5);
        if tokio::time::timeout(stop_deadline, &mut lifecycle_task)
            .await
            .is_err()
        {
            tracing::error!("the backend did not stop in time");
        }
    }
    reload_task.abort();
    watcher.abort();
    server_cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, server)
        .await
        .is_err()
    {
        tracing::warn!(
            "open connections did not finish within {SHUTDOWN_DEADLINE:?}; closing them"
        );
    }
    Ok(code)
}

/// Handles signals until SIGTERM/SIGINT (`None`) or the lifecycle ending by itself; SIGHUP
/// asks for a reload.
async fn serve_signals(
    lifecycle: &mut tokio::task::JoinHandle<End>,
    reloads: &mpsc::Sender<ReloadRequest>,
) -> Option<End> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
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
    active: Arc<Mutex<Active>>,
    status: watch::Receiver<state::Status>,
    reloads: mpsc::Sender<ReloadRequest>,
    lifecycle: mpsc::Sender<Command>,
    cancel: CancellationToken,
) {
    let paths = || {
        let a = active.lock().unwrap_or_else(|e| e.into_inner());
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
        let failed = matches!(status.borrow().state, state::State::Failed { .. });
        if failed && now.0 != seen.0 {
            tracing::info!(path = ?config, "the config file changed while failed; reloading");
            let _ = reloads
                .send(ReloadRequest {
                    trigger: "config file changed",
                    reply: None,
                })
                .await;
        } else if failed && now.1 != seen.1 {
            let why = format!("the model file {} changed", model.display());
            let _ = lifecycle.send(Command::Retry { why }).await;
        }
        seen = now;
    }
}
