//! The supervisor: wires config, setup, the backend lifecycle, the governor and the proxy
//! together, and shuts them all down on SIGTERM/SIGINT without leaving a child behind.

pub mod lifecycle;
pub mod liveness;
pub mod policy;
pub mod state;

use crate::backend::{launch, setup};
use crate::config::Config;
use crate::governor::{Activity, GovernorSettings};
use crate::profile;
use crate::proxy;
use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
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

/// How long open connections may take to finish once shutdown starts.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

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
}

/// `sentinel-supervisor run`: serves until SIGTERM/SIGINT.
pub async fn run(options: RunOptions) -> anyhow::Result<ExitCode> {
    let RunOptions {
        config,
        profile,
        listen,
        api_keys: keys,
        host,
        setup: setup_options,
    } = options;
    if !listen.ip().is_loopback() && keys.is_empty() {
        return Err(StartError::OpenListener { addr: listen }.into());
    }
    tracing::info!(profile = %profile.summary(), "profile resolved");
    for note in &profile.notes {
        tracing::info!(profile = %profile.name, "{note}");
    }

    let installed = tokio::task::spawn_blocking(move || setup::ensure(&setup_options))
        .await
        .context("setup panicked")??;
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

    let cancel = CancellationToken::new();
    let activity = Activity::new();
    let (status_tx, status_rx) = tokio::sync::watch::channel(state::Status::initial());
    let governor_settings = GovernorSettings {
        cpus: profile.cpus,
        threads: Some(profile.threads.max(profile.threads_batch)),
        priority: profile.priority,
        adaptive: profile.adaptive,
        host,
    };
    let (governor_tx, governor_rx) = tokio::sync::watch::channel(None);
    let liveness = liveness::Liveness::new();
    let spec_inputs = (installed.clone(), profile.clone(), config.clone());
    let lifecycle = lifecycle::Lifecycle {
        config: config.supervisor.clone(),
        make_spec: Box::new(move || launch::spec(&spec_inputs.0, &spec_inputs.1, &spec_inputs.2)),
        activity: activity.clone(),
        governor_config: config.governor.clone(),
        governor_settings,
        governor: governor_tx,
        status: status_tx,
        cancel: cancel.clone(),
        liveness: liveness.clone(),
    };
    let lifecycle_task = tokio::spawn(lifecycle.run());

    let shared = Arc::new(proxy::Shared {
        admission: proxy::admission::Admission::new(profile.slots, config.proxy.queue_len),
        config: config.proxy.clone(),
        status: status_rx,
        activity,
        keys: proxy::auth::Keys::new(keys),
        client: std::sync::Mutex::new(proxy::forward::upstream_client()),
        info: proxy::Info {
            model_id: launch::model_id(&config, &installed.model),
            model: installed.model.display().to_string(),
            profile: profile.clone(),
        },
        governor: governor_rx,
        liveness,
        started: std::time::Instant::now(),
    });
    let app = proxy::router(Arc::clone(&shared));
    println!("{}http://{local}", crate::status::LISTENING_PREFIX);
    tracing::info!(addr = %local, profile = %profile.name, model = %installed.model.display(), "listening");

    let server_cancel = cancel.clone();
    let server = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        // Small SSE events must leave at once, not wait for Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { server_cancel.cancelled().await })
            .await
    });

    wait_for_signal().await;
    tracing::info!("shutting down");
    // Idle keep-alive connections would make llama-server wait for them before exiting.
    shared.close_idle_upstream();
    cancel.cancel();
    // The lifecycle task stops the backend (SIGCONT, SIGTERM, grace, SIGKILL, reap).
    let stop_deadline = config.supervisor.stop_grace + Duration::from_secs(5);
    if tokio::time::timeout(stop_deadline, lifecycle_task)
        .await
        .is_err()
    {
        tracing::error!("the backend did not stop in time");
    }
    if tokio::time::timeout(SHUTDOWN_DEADLINE, server)
        .await
        .is_err()
    {
        tracing::warn!(
            "open connections did not finish within {SHUTDOWN_DEADLINE:?}; closing them"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
