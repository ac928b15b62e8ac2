//! A test double for the backend: [`Fake`] spawns [`FakeChild`]ren that follow a
//! [`Script`] on tokio's clock (load, serve, crash, hang, die of SIGILL) and keeps a book of
//! every spawn and stop, so the state machine's tests can say when each backend was stopped.

use super::{Backend, BackendChild, Plan, Probe, Requests};
use crate::backend::launch::BackendKey;
use crate::backend::launch::LaunchSpec;
use crate::backend::output::OutputLimit;
use crate::backend::process::LogTail;
use crate::config::{Config, SupervisorConfig};
use crate::governor::{Activity, GovernorSettings, Method, Priority};
use crate::supervisor::state::BackendInfo;
use std::collections::{HashMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Far above any pid the tests' machine hands out soon; nothing signals them anyway.
pub(super) const FIRST_PID: i32 = 3_000_000;

/// How long a probe of a hung backend takes (the tests' `supervisor.probe_timeout`).
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How one fake backend behaves, counted from its spawn.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Script {
    /// `/health` answers 503 (loading) until then, 200 after.
    pub(super) ready_after: Duration,
    /// It exits by itself then (`None`: it runs until stopped).
    pub(super) exit_after: Option<Duration>,
    /// It stops answering `/health` then.
    pub(super) hang_after: Option<Duration>,
    /// It dies of SIGILL then (a CPU fault).
    pub(super) sigill_after: Option<Duration>,
}

impl Script {
    pub(super) fn serving() -> Script {
        Script::default()
    }

    pub(super) fn crashing_after(d: Duration) -> Script {
        Script {
            exit_after: Some(d),
            ..Script::default()
        }
    }

    /// When and how it ends by itself.
    fn exit(&self) -> Option<(Duration, ExitStatus)> {
        match (self.sigill_after, self.exit_after) {
            (Some(d), _) => Some((d, ExitStatus::from_raw(libc::SIGILL))),
            (None, Some(d)) => Some((d, ExitStatus::from_raw(1 << 8))),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Event {
    Spawned(i32),
    Stopped(i32),
}

#[derive(Default)]
struct Book {
    /// How the next spawns behave (then [`Script::serving`]).
    scripts: VecDeque<Script>,
    /// Each child's script, spawn time and whether it was stopped.
    children: HashMap<i32, (Script, Instant, bool)>,
    events: Vec<(Instant, Event)>,
    spawned: i32,
}

/// The backend double: spawns [`FakeChild`]ren that follow their [`Script`]s.
#[derive(Clone, Default)]
pub(super) struct Fake(Arc<Mutex<Book>>);

impl Fake {
    pub(super) fn new(scripts: impl IntoIterator<Item = Script>) -> Fake {
        let fake = Fake::default();
        fake.book().scripts.extend(scripts);
        fake
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0.lock().unwrap()
    }

    pub(super) fn events(&self) -> Vec<(Instant, Event)> {
        self.book().events.clone()
    }

    /// When `pid` was stopped, if it was.
    pub(super) fn stopped_at(&self, pid: i32) -> Option<Instant> {
        self.events()
            .into_iter()
            .find(|(_, e)| *e == Event::Stopped(pid))
            .map(|(at, _)| at)
    }

    /// What `/health` of `pid` answers now; `None` when it hangs (the probe times out).
    fn probe(&self, pid: i32) -> Option<Probe> {
        let book = self.book();
        let Some(&(script, spawned, stopped)) = book.children.get(&pid) else {
            return Some(Probe::Down("/health unreachable: no such backend".into()));
        };
        let age = spawned.elapsed();
        if stopped || script.exit().is_some_and(|(d, _)| age >= d) {
            Some(Probe::Down(
                "/health unreachable: connection refused".into(),
            ))
        } else if script.hang_after.is_some_and(|d| age >= d) {
            None
        } else if age < script.ready_after {
            Some(Probe::Loading)
        } else {
            Some(Probe::Ready)
        }
    }
}

impl Backend for Fake {
    type Child = FakeChild;

    async fn spawn(&self, _spec: &LaunchSpec) -> std::io::Result<FakeChild> {
        let mut book = self.book();
        let script = book.scripts.pop_front().unwrap_or_else(Script::serving);
        book.spawned += 1;
        let pid = FIRST_PID + book.spawned;
        let now = Instant::now();
        book.children.insert(pid, (script, now, false));
        book.events.push((now, Event::Spawned(pid)));
        Ok(FakeChild {
            pid,
            script,
            spawned: now,
            exited: None,
            fake: self.clone(),
        })
    }

    async fn health(&self, _client: &reqwest::Client, info: &BackendInfo) -> Probe {
        if let Some(probe) = self.probe(info.pid) {
            probe
        } else {
            tokio::time::sleep(PROBE_TIMEOUT).await;
            Probe::Down("/health timed out".into())
        }
    }
}

pub(super) struct FakeChild {
    pid: i32,
    script: Script,
    spawned: Instant,
    exited: Option<ExitStatus>,
    fake: Fake,
}

impl BackendChild for FakeChild {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn logs(&self) -> LogTail {
        LogTail::default()
    }

    async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let Some((after, status)) = self.script.exit() else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(self.spawned + after).await;
        *self.exited.get_or_insert(status)
    }

    async fn stop(&mut self, _grace: Duration) -> ExitStatus {
        let now = Instant::now();
        let ended = self
            .script
            .exit()
            .filter(|(after, _)| now >= self.spawned + *after);
        let status = ended.map_or(ExitStatus::from_raw(libc::SIGTERM), |(_, s)| s);
        let mut book = self.fake.book();
        if let Some(child) = book.children.get_mut(&self.pid) {
            child.2 = true;
        }
        book.events.push((now, Event::Stopped(self.pid)));
        *self.exited.get_or_insert(status)
    }
}

/// A plan whose backend is the fake (each launch on the next port), governor off.
pub(super) fn plan(config: SupervisorConfig) -> Plan {
    let port = std::sync::atomic::AtomicU16::new(40_000);
    Plan {
        config,
        make_spec: Box::new(move || {
            Ok(LaunchSpec {
                program: "/fake/llama-server".into(),
                args: vec![],
                env: vec![],
                priority: Priority::Normal,
                pin_cpu: None,
                port: port.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                api_key: BackendKey::generate(),
                output: OutputLimit {
                    burst: 10,
                    lines_per_sec: 1.0,
                },
                env_remove: vec![],
            })
        }),
        governor_config: Config::builtin().unwrap().governor,
        governor_settings: GovernorSettings {
            cpus: None,
            threads: Some(1),
            priority: Priority::Normal,
            adaptive: None,
            host: crate::host::Host::unrestricted(2),
            method: Method::Off,
            period: Duration::from_millis(20),
        },
        warmup: None,
        ladder: None,
    }
}

/// A request taken as the proxy takes one, counted on the backend of `generation`.
pub(super) fn ticket(requests: &Requests, generation: u64) -> crate::requests::Ticket {
    let slot = Arc::new(tokio::sync::Semaphore::new(1))
        .try_acquire_owned()
        .expect("a free slot");
    let mut ticket = requests.issue(slot, Activity::new().begin());
    ticket.bind(generation);
    ticket
}
