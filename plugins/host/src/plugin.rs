//! The worker thread that owns a loaded plugin's wasm instance (the state its
//! handles share is [`crate::shared::Shared`]). Calls are jobs on a bounded queue, so
//! the daemon's async runtime never runs wasm; a trap or timeout drops the instance,
//! which is re-created from the `InstancePre` after a backoff, behind a circuit
//! breaker.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceAny;
use wasmtime::{Engine, Store, Trap};

use crate::bindings::v0_1_0::log::{LogPlugin, LogPluginPre};
use crate::bindings::v0_1_0::volume::{VolumePlugin, VolumePluginPre};
use crate::bindings::v0_2_0::network::{NetworkPlugin, NetworkPluginPre};
use crate::bindings::v0_3_0::network::{
    NetworkPlugin as NetworkPlugin3, NetworkPluginPre as NetworkPluginPre3,
};
use crate::engine::ticks;
use crate::error::PluginError;
use crate::manifest::PluginKind;
use crate::shared::Shared;
use crate::store::{new_store, StoreState};

pub enum Pre {
    Log(LogPluginPre<StoreState>),
    Volume(VolumePluginPre<StoreState>),
    Network(NetworkPluginPre<StoreState>),
    /// A network plugin on `berth:driver@0.3.0` (dual-stack).
    Network3(NetworkPluginPre3<StoreState>),
}

pub enum Inst {
    Log(LogPlugin),
    Volume(VolumePlugin),
    /// `berth:driver@0.2.0`: IPv4 only.
    Network(NetworkPlugin),
    /// `berth:driver@0.3.0`: IPv4 and IPv6.
    Network3(NetworkPlugin3),
}

impl Inst {
    pub fn log(&self) -> &LogPlugin {
        match self {
            Inst::Log(l) => l,
            _ => unreachable!("log call on another kind of plugin"),
        }
    }
    pub fn volume(&self) -> &VolumePlugin {
        match self {
            Inst::Volume(v) => v,
            _ => unreachable!("volume call on another kind of plugin"),
        }
    }
}

pub struct Live {
    pub store: Store<StoreState>,
    pub inst: Inst,
}

#[derive(Default)]
struct Health {
    consecutive: u32,
    recent: VecDeque<Instant>,
    retry_at: Option<Instant>,
    breaker_until: Option<Instant>,
}

pub type Job = Box<dyn FnOnce(&mut Runner) + Send + 'static>;

pub struct Runner {
    pub shared: Arc<Shared>,
    engine: Engine,
    pre: Pre,
    live: Option<Live>,
    health: Health,
    /// Bumped whenever an instance is dropped; resources from older generations are dead.
    pub generation: u64,
    /// Log sessions' plugin-side resources: id -> (generation, resource).
    pub log_sessions: HashMap<u64, (u64, ResourceAny)>,
    /// Open log readers: id -> (generation, resource).
    pub readers: HashMap<u64, (u64, ResourceAny)>,
}

impl Runner {
    pub fn new(shared: Arc<Shared>, engine: Engine, pre: Pre) -> Self {
        Runner {
            shared,
            engine,
            pre,
            live: None,
            health: Health::default(),
            generation: 0,
            log_sessions: HashMap::new(),
            readers: HashMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// True when a call now would not be refused by backoff or the breaker.
    pub fn available(&self) -> bool {
        let now = Instant::now();
        if self.health.breaker_until.is_some_and(|t| now < t) {
            return false;
        }
        self.live.is_some() || self.health.retry_at.is_none_or(|t| now >= t)
    }

    /// Make sure an instance exists; instantiates (and runs `init`) if needed.
    pub fn ensure_live(&mut self) -> Result<(), PluginError> {
        let now = Instant::now();
        if let Some(until) = self.health.breaker_until {
            if now < until {
                return Err(PluginError::unavailable(
                    self.name(),
                    format!(
                        "circuit breaker open for another {} ms after repeated crashes",
                        (until - now).as_millis()
                    ),
                ));
            }
            self.health.breaker_until = None;
            self.shared.circuit_open.store(false, Ordering::Relaxed);
        }
        if self.live.is_some() {
            return Ok(());
        }
        if let Some(at) = self.health.retry_at {
            if now < at {
                return Err(PluginError::unavailable(
                    self.name(),
                    format!(
                        "restarting after a crash; retry in {} ms",
                        (at - now).as_millis()
                    ),
                ));
            }
        }
        let mut store = new_store(&self.engine, &self.shared)
            .map_err(|e| PluginError::Failed(format!("{e:#}")))?;
        store.set_epoch_deadline(ticks(self.shared.call_budget()));
        let inst = match &self.pre {
            Pre::Log(p) => p.instantiate(&mut store).map(Inst::Log),
            Pre::Volume(p) => p.instantiate(&mut store).map(Inst::Volume),
            Pre::Network(p) => p.instantiate(&mut store).map(Inst::Network),
            Pre::Network3(p) => p.instantiate(&mut store).map(Inst::Network3),
        };
        let inst = match inst {
            Ok(i) => i,
            Err(e) => return Err(self.fail(e, String::new())),
        };
        self.live = Some(Live { store, inst });
        self.shared
            .stats
            .instantiations
            .fetch_add(1, Ordering::Relaxed);
        let config = self.shared.manifest.config.clone();
        let init = self.raw_call(|store, inst| match inst {
            Inst::Log(l) => l
                .berth_driver_lifecycle()
                .call_init(store, &config)
                .map(|r| r.map_err(PluginError::from)),
            Inst::Volume(v) => v
                .berth_driver_lifecycle()
                .call_init(store, &config)
                .map(|r| r.map_err(PluginError::from)),
            Inst::Network(n) => n
                .berth_driver_lifecycle()
                .call_init(store, &config)
                .map(|r| r.map_err(PluginError::from)),
            Inst::Network3(n) => n
                .berth_driver_lifecycle()
                .call_init(store, &config)
                .map(|r| r.map_err(PluginError::from)),
        })?;
        if let Err(e) = init {
            self.drop_live();
            self.note_failure();
            return Err(PluginError::Failed(format!(
                "plugin {} init failed: {e}",
                self.name()
            )));
        }
        if self.shared.stats.instantiations.load(Ordering::Relaxed) > 1 {
            tracing::info!(plugin = self.name(), "plugin instance restarted");
        }
        Ok(())
    }

    /// Run `f` against the live instance (instantiating first if needed) under the
    /// per-call epoch deadline.
    pub fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<StoreState>, &Inst) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.ensure_live()?;
        self.raw_call(f)
    }

    fn raw_call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<StoreState>, &Inst) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let budget = ticks(self.shared.call_budget());
        let live = self.live.as_mut().expect("raw_call without instance");
        live.store.set_epoch_deadline(budget);
        live.store.data_mut().grace_ticks = 0;
        self.shared.stats.calls.fetch_add(1, Ordering::Relaxed);
        let r = f(&mut live.store, &live.inst);
        let stderr = self.drain_stderr();
        if let Err(e) = self
            .shared
            .kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
        {
            tracing::warn!(plugin = self.name(), "persisting kv: {e}");
        }
        match r {
            Ok(v) => {
                self.health.consecutive = 0;
                self.maybe_recycle();
                Ok(v)
            }
            Err(e) => Err(self.fail(e, stderr)),
        }
    }

    /// Linear memory never shrinks: once an instance has grown past the recycle
    /// threshold, replace it with a fresh one (log sessions are re-started lazily).
    /// Skipped while readers are open, since their resources would die with it.
    fn maybe_recycle(&mut self) {
        let Some(live) = &self.live else { return };
        let used = live.store.data().limits.memory_bytes;
        let threshold =
            self.shared.memory_limit / 100 * self.shared.cfg.recycle_memory_percent as usize;
        if used > threshold && self.readers.is_empty() {
            tracing::info!(
                plugin = self.name(),
                used,
                "recycling plugin instance (memory high-water mark)"
            );
            self.shared.stats.recycles.fetch_add(1, Ordering::Relaxed);
            self.drop_live();
        }
    }

    /// Forward captured stderr to the daemon log; return its tail for error reports.
    fn drain_stderr(&mut self) -> String {
        let (bytes, dropped) = self.shared.stderr.take();
        if dropped > 0 {
            self.shared
                .stats
                .stderr_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if bytes.is_empty() {
            return String::new();
        }
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines().take(20) {
            tracing::warn!(
                plugin = self.name(),
                "stderr: {}",
                crate::validate::truncate(line.to_string(), 512)
            );
        }
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        crate::validate::truncate(tail.into_iter().rev().collect::<Vec<_>>().join(" | "), 1024)
    }

    fn note_failure(&mut self) {
        let now = Instant::now();
        let cfg = &self.shared.cfg;
        self.health.consecutive += 1;
        self.health.recent.push_back(now);
        while self
            .health
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.breaker_window)
        {
            self.health.recent.pop_front();
        }
        let exp = self.health.consecutive.saturating_sub(1).min(16);
        let backoff = cfg
            .restart_backoff
            .saturating_mul(1 << exp)
            .min(cfg.restart_backoff_max);
        self.health.retry_at = Some(now + backoff);
        if self.health.recent.len() as u32 >= cfg.breaker_threshold {
            self.health.breaker_until = Some(now + cfg.breaker_cooldown);
            self.health.recent.clear();
            self.shared.circuit_open.store(true, Ordering::Relaxed);
            tracing::error!(
                plugin = self.name(),
                "circuit breaker opened for {:?}",
                cfg.breaker_cooldown
            );
        }
    }

    /// Forget the instance; resources handed out by it are dead from now on.
    fn drop_live(&mut self) {
        self.live = None;
        self.generation += 1;
    }

    /// Drop the instance after a trap/timeout and schedule a restart.
    fn fail(&mut self, e: wasmtime::Error, stderr: String) -> PluginError {
        self.drop_live();
        self.note_failure();
        let plugin = self.name().to_string();
        let err = if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            self.shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            PluginError::Timeout {
                plugin,
                millis: self.shared.call_budget().as_millis() as u64,
            }
        } else {
            self.shared.stats.traps.fetch_add(1, Ordering::Relaxed);
            let mut message = format!("{e}");
            if let Some(Trap::MemoryOutOfBounds | Trap::AllocationTooLarge) =
                e.downcast_ref::<Trap>()
            {
                message.push_str(" (memory limit)");
            }
            if let Some(root) = e.chain().last() {
                let root = root.to_string();
                if root != message {
                    message = format!("{message}: {root}");
                }
            }
            if !stderr.is_empty() {
                message = format!("{message}; stderr: {stderr}");
            }
            PluginError::Trapped {
                plugin,
                message: crate::validate::truncate(message, 2048),
            }
        };
        tracing::warn!(plugin = self.name(), "{err}; instance dropped");
        err
    }
}

/// The worker thread: run jobs in order; between jobs, push buffered log entries.
pub fn run_worker(mut runner: Runner, rx: Receiver<Job>) {
    loop {
        let busy =
            runner.shared.kind == PluginKind::Log && runner.logs_pending() && runner.available();
        let wait = if busy {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        };
        match rx.recv_timeout(wait) {
            Ok(job) => job(&mut runner),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if runner.shared.kind == PluginKind::Log {
            runner.pump_logs();
        }
    }
    if runner.shared.kind == PluginKind::Log {
        runner.shutdown_logs();
    }
}

/// Queue a job without blocking; a full queue means the plugin is overloaded.
pub fn submit(shared: &Shared, tx: &SyncSender<Job>, job: Job) -> Result<(), PluginError> {
    tx.try_send(job).map_err(|e| match e {
        TrySendError::Full(_) => PluginError::unavailable(&shared.name, "request queue full"),
        TrySendError::Disconnected(_) => PluginError::unavailable(&shared.name, "plugin stopped"),
    })
}

/// Queue `f` and await its answer, bounded by a generous overall timeout.
pub async fn request<R: Send + 'static>(
    shared: &Arc<Shared>,
    tx: &SyncSender<Job>,
    f: impl FnOnce(&mut Runner) -> Result<R, PluginError> + Send + 'static,
) -> Result<R, PluginError> {
    let (otx, orx) = tokio::sync::oneshot::channel();
    submit(
        shared,
        tx,
        Box::new(move |r| {
            let _ = otx.send(f(r));
        }),
    )?;
    let limit = shared.call_budget() * 4 + Duration::from_secs(2);
    match tokio::time::timeout(limit, orx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(PluginError::unavailable(
            &shared.name,
            "plugin worker stopped",
        )),
        Err(_) => Err(PluginError::unavailable(
            &shared.name,
            format!("no answer within {limit:?}"),
        )),
    }
}

/// Blocking variant of [`request`] for callers outside an async runtime.
pub fn request_blocking<R: Send + 'static>(
    shared: &Arc<Shared>,
    tx: &SyncSender<Job>,
    f: impl FnOnce(&mut Runner) -> Result<R, PluginError> + Send + 'static,
) -> Result<R, PluginError> {
    let (otx, orx) = std::sync::mpsc::sync_channel(1);
    submit(
        shared,
        tx,
        Box::new(move |r| {
            let _ = otx.send(f(r));
        }),
    )?;
    let limit = shared.call_budget() * 4 + Duration::from_secs(2);
    orx.recv_timeout(limit).map_err(|_| {
        PluginError::unavailable(&shared.name, format!("no answer within {limit:?}"))
    })?
}

impl Runner {
    /// Drop the live instance (if any) and create a fresh one; for benches.
    pub fn reinstantiate(&mut self) -> Result<(), PluginError> {
        self.drop_live();
        self.health.retry_at = None;
        self.ensure_live()
    }
}
