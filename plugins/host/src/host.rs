//! [`PluginHost`]: engine, linkers, discovery and the registry of loaded plugins.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker};
use wasmtime::Engine;

use crate::bindings::v0_1_0::log::{LogPlugin, LogPluginPre};
use crate::bindings::v0_1_0::volume::{VolumePlugin, VolumePluginPre};
use crate::bindings::v0_2_0::network::NetworkPluginPre;
use crate::bindings::v0_3_0::network::NetworkPluginPre as NetworkPluginPre3;
use crate::config::PluginHostConfig;
use crate::engine::{build_engine, load_component, spawn_ticker, CacheOutcome};
use crate::error::{HostError, LoadError, PluginError};
use crate::interface::{self, InterfaceVersion};
use crate::kv::Kv;
use crate::log::LogDriverHandle;
use crate::manifest::{Manifest, PluginKind};
use crate::network::NetworkDriverHandle;
use crate::plugin::{request_blocking, run_worker, Job, Pre, Runner};
use crate::shared::Shared;
use crate::stats::PluginStats;
use crate::stdio::BoundedPipe;
use crate::store::StoreState;
use crate::volume::VolumeDriverHandle;

/// Largest plugin.wasm accepted.
const MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// A loaded plugin, as listed by `docker info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub kind: PluginKind,
    /// `berth:driver` interface version, e.g. `0.1.0`.
    pub interface_version: String,
    pub dir: PathBuf,
    /// Whether the precompiled cache was hit when loading.
    pub cache_hit: bool,
}

struct Loaded {
    info: PluginInfo,
    shared: Arc<Shared>,
    tx: std::sync::mpsc::SyncSender<Job>,
}

struct Inner {
    engine: Engine,
    pooling: bool,
    cfg: Arc<PluginHostConfig>,
    log_linker: Linker<StoreState>,
    volume_linker: Linker<StoreState>,
    network_linker: Linker<StoreState>,
    plugins: RwLock<BTreeMap<String, Loaded>>,
    load_lock: Mutex<()>,
}

/// The daemon's plugin host. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

fn mkdir_private(p: &Path) -> Result<(), HostError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|source| HostError::Io {
            path: p.to_path_buf(),
            source,
        })
}

fn engine_err(e: wasmtime::Error) -> HostError {
    HostError::Engine(format!("{e:#}"))
}

impl PluginHost {
    /// Create the engine (pooling when possible), the epoch ticker and the cache dir.
    pub fn new(cfg: PluginHostConfig) -> Result<PluginHost, HostError> {
        mkdir_private(&cfg.cache_dir)?;
        mkdir_private(&cfg.data_root.join("plugin-data"))?;
        mkdir_private(&cfg.data_root.join("plugin-state"))?;
        let max_mem = cfg.log_memory_limit.max(cfg.volume_memory_limit);
        let (engine, pooling) = build_engine(cfg.pooling, max_mem, cfg.max_instances)?;
        spawn_ticker(&engine);
        let mut log_linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut log_linker).map_err(engine_err)?;
        LogPlugin::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut log_linker, |s| s)
            .map_err(engine_err)?;
        let mut volume_linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut volume_linker).map_err(engine_err)?;
        VolumePlugin::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut volume_linker, |s| s)
            .map_err(engine_err)?;
        // WASI is linked so a std-built component instantiates, but its context grants
        // nothing to a network plugin (no preopen, no sockets: see `store::new_store`).
        let mut network_linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut network_linker).map_err(engine_err)?;
        Ok(PluginHost {
            inner: Arc::new(Inner {
                engine,
                pooling,
                cfg: Arc::new(cfg),
                log_linker,
                volume_linker,
                network_linker,
                plugins: RwLock::new(BTreeMap::new()),
                load_lock: Mutex::new(()),
            }),
        })
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.inner.pooling
    }

    pub fn config(&self) -> &PluginHostConfig {
        &self.inner.cfg
    }

    /// Load every `<dir>/<name>/{manifest.toml,plugin.wasm}`. Good plugins are loaded
    /// even when others fail; the failures are returned. Blocking (compiles on a
    /// cache miss): call from `spawn_blocking` or before the runtime starts.
    pub fn load_dir(&self, dir: &Path) -> Vec<LoadError> {
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                return vec![LoadError::new(
                    dir,
                    format!("reading plugin directory: {e}"),
                )]
            }
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            if let Err(e) = self.load(&d) {
                tracing::warn!("{e}");
                errors.push(e);
            }
        }
        errors
    }

    /// Load one plugin directory. Fails if a plugin of that name is already loaded.
    pub fn load(&self, dir: &Path) -> Result<PluginInfo, LoadError> {
        self.load_with(dir, &[])
    }

    /// Compile (into the precompiled cache) and check a component against its
    /// manifest without loading it: what an install does before it keeps the files.
    /// Blocking.
    pub fn precompile(&self, manifest: &Manifest, wasm: &[u8]) -> Result<InterfaceVersion, String> {
        if wasm.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(format!(
                "plugin.wasm is {} bytes (max {MAX_COMPONENT_BYTES})",
                wasm.len()
            ));
        }
        let engine = &self.inner.engine;
        let (component, _) = load_component(engine, &self.inner.cfg.cache_dir, wasm)?;
        interface::check(engine, &component, manifest)
    }

    /// [`PluginHost::load`] with `[config]` values overridden (`docker plugin set`).
    /// Only keys the manifest declares may be overridden.
    pub fn load_with(
        &self,
        dir: &Path,
        overrides: &[(String, String)],
    ) -> Result<PluginInfo, LoadError> {
        let _serial = self
            .inner
            .load_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let err = |m: String| LoadError::new(dir, m);
        let mut manifest = Manifest::load(dir).map_err(err)?;
        manifest.override_config(overrides).map_err(err)?;
        if self
            .inner
            .plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&manifest.name)
        {
            return Err(err(format!(
                "a plugin named {:?} is already loaded",
                manifest.name
            )));
        }
        let wasm_path = dir.join("plugin.wasm");
        let size = std::fs::metadata(&wasm_path)
            .map_err(|e| err(format!("plugin.wasm: {e}")))?
            .len();
        if size > MAX_COMPONENT_BYTES {
            return Err(err(format!(
                "plugin.wasm is {size} bytes (max {MAX_COMPONENT_BYTES})"
            )));
        }
        let wasm = std::fs::read(&wasm_path).map_err(|e| err(format!("plugin.wasm: {e}")))?;
        let engine = &self.inner.engine;
        let (component, cache) =
            load_component(engine, &self.inner.cfg.cache_dir, &wasm).map_err(err)?;
        let version = interface::check(engine, &component, &manifest).map_err(err)?;

        let cfg = &self.inner.cfg;
        let (linker, host_max) = match manifest.kind {
            PluginKind::Log => (&self.inner.log_linker, cfg.log_memory_limit),
            PluginKind::Network => (&self.inner.network_linker, cfg.network_memory_limit),
            PluginKind::Volume => (&self.inner.volume_linker, cfg.volume_memory_limit),
        };
        let memory_limit = match manifest.limits.memory_mib {
            Some(mib) => ((mib as usize) << 20).min(host_max),
            None => host_max,
        };
        let ipre = linker
            .instantiate_pre(&component)
            .map_err(|e| err(format!("linking: {e:#}")))?;
        let pre = match manifest.kind {
            PluginKind::Log => {
                Pre::Log(LogPluginPre::new(ipre).map_err(|e| err(format!("{e:#}")))?)
            }
            PluginKind::Network if version == InterfaceVersion::V0_3_0 => {
                Pre::Network3(NetworkPluginPre3::new(ipre).map_err(|e| err(format!("{e:#}")))?)
            }
            PluginKind::Network => {
                Pre::Network(NetworkPluginPre::new(ipre).map_err(|e| err(format!("{e:#}")))?)
            }
            PluginKind::Volume => {
                Pre::Volume(VolumePluginPre::new(ipre).map_err(|e| err(format!("{e:#}")))?)
            }
        };
        let root = cfg.data_root.join("plugin-data").join(&manifest.name);
        mkdir_private(&root).map_err(|e| err(e.to_string()))?;
        let root = root
            .canonicalize()
            .map_err(|e| err(format!("{}: {e}", root.display())))?;
        let kv = Kv::open(
            cfg.data_root
                .join("plugin-state")
                .join(format!("{}.kv.json", manifest.name)),
        );
        let shared = Arc::new(Shared {
            name: manifest.name.clone(),
            kind: manifest.kind,
            manifest: manifest.clone(),
            root,
            memory_limit,
            cfg: cfg.clone(),
            stderr: BoundedPipe::new(cfg.stderr_limit),
            kv: Mutex::new(kv),
            stats: Default::default(),
            circuit_open: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            sessions: Mutex::new(Default::default()),
            reads_logs: AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(cfg.queue_depth);
        let runner = Runner::new(shared.clone(), engine.clone(), pre);
        std::thread::Builder::new()
            .name(format!("plugin-{}", manifest.name))
            .spawn(move || run_worker(runner, rx))
            .map_err(|e| err(format!("spawning worker: {e}")))?;
        // Instantiate and init now so a broken plugin is reported at load time.
        let kind = manifest.kind;
        request_blocking(&shared, &tx, move |r| {
            r.ensure_live()?;
            if kind == PluginKind::Log {
                let yes = r.call(|s, i| {
                    i.log()
                        .berth_driver_log_driver()
                        .call_read_logs_supported(s)
                })?;
                r.shared.reads_logs.store(yes, Ordering::Relaxed);
            }
            Ok::<_, PluginError>(())
        })
        .map_err(|e| err(format!("starting plugin: {e}")))?;

        let info = PluginInfo {
            name: manifest.name.clone(),
            kind,
            interface_version: version.as_str().to_string(),
            dir: dir.to_path_buf(),
            cache_hit: cache == CacheOutcome::Hit,
        };
        tracing::info!(plugin = %info.name, kind = %kind, version = %info.interface_version, cache_hit = info.cache_hit, "plugin loaded");
        self.inner
            .plugins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                manifest.name,
                Loaded {
                    info: info.clone(),
                    shared,
                    tx,
                },
            );
        Ok(info)
    }

    /// Stop and forget a plugin (its worker flushes open log sessions, then exits).
    pub fn unload(&self, name: &str) -> bool {
        self.inner
            .plugins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .is_some()
    }

    /// All loaded plugins, sorted by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        self.inner
            .plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|l| l.info.clone())
            .collect()
    }

    /// Names of loaded plugins of one kind (`docker info` Plugins.Log / Plugins.Volume).
    pub fn names(&self, kind: PluginKind) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.name)
            .collect()
    }

    pub fn stats(&self, name: &str) -> Option<PluginStats> {
        self.inner
            .plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|l| l.shared.snapshot())
    }

    /// Host directory holding a plugin's data (its only WASI preopen).
    pub fn data_dir(&self, name: &str) -> Option<PathBuf> {
        self.inner
            .plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|l| l.shared.root.clone())
    }

    pub fn log_driver(&self, name: &str) -> Option<LogDriverHandle> {
        let map = self.inner.plugins.read().unwrap_or_else(|p| p.into_inner());
        let l = map.get(name).filter(|l| l.info.kind == PluginKind::Log)?;
        Some(LogDriverHandle {
            shared: l.shared.clone(),
            tx: l.tx.clone(),
        })
    }

    pub fn volume_driver(&self, name: &str) -> Option<VolumeDriverHandle> {
        let map = self.inner.plugins.read().unwrap_or_else(|p| p.into_inner());
        let l = map
            .get(name)
            .filter(|l| l.info.kind == PluginKind::Volume)?;
        Some(VolumeDriverHandle {
            shared: l.shared.clone(),
            tx: l.tx.clone(),
        })
    }

    pub fn network_driver(&self, name: &str) -> Option<NetworkDriverHandle> {
        let map = self.inner.plugins.read().unwrap_or_else(|p| p.into_inner());
        let l = map
            .get(name)
            .filter(|l| l.info.kind == PluginKind::Network)?;
        Some(NetworkDriverHandle {
            shared: l.shared.clone(),
            tx: l.tx.clone(),
        })
    }

    /// Time `iterations` in-worker calls of a trivial export (`read-logs-supported`
    /// or `get-capabilities`): the plugin-boundary cost without queueing (benches).
    pub fn bench_call_overhead(
        &self,
        name: &str,
        iterations: u32,
    ) -> Result<Vec<Duration>, PluginError> {
        let (shared, tx) = self.lookup(name)?;
        request_blocking(&shared, &tx, move |r| {
            let mut out = Vec::with_capacity(iterations as usize);
            for _ in 0..iterations {
                let t = Instant::now();
                r.call(|s, i| match i {
                    crate::plugin::Inst::Log(l) => l
                        .berth_driver_log_driver()
                        .call_read_logs_supported(s)
                        .map(|_| ()),
                    crate::plugin::Inst::Volume(v) => v
                        .berth_driver_volume_driver()
                        .call_get_capabilities(s)
                        .map(|_| ()),
                    crate::plugin::Inst::Network(n) => n
                        .berth_driver_network_driver()
                        .call_delete_network(
                            s,
                            &crate::network_wit::v2::network(&Default::default()),
                        )
                        .map(|_| ()),
                    crate::plugin::Inst::Network3(n) => n
                        .berth_driver_network_driver()
                        .call_delete_network(
                            s,
                            &crate::network_wit::v3::network(&Default::default()),
                        )
                        .map(|_| ()),
                })?;
                out.push(t.elapsed());
            }
            Ok(out)
        })
    }

    fn lookup(
        &self,
        name: &str,
    ) -> Result<(Arc<Shared>, std::sync::mpsc::SyncSender<Job>), PluginError> {
        let map = self.inner.plugins.read().unwrap_or_else(|p| p.into_inner());
        let l = map
            .get(name)
            .ok_or_else(|| PluginError::NotFound(format!("no plugin {name}")))?;
        Ok((l.shared.clone(), l.tx.clone()))
    }

    /// Time `iterations` fresh instantiations + `init` of a loaded plugin from its
    /// `InstancePre` (benches; the running instance is replaced each time).
    pub fn bench_instantiate(
        &self,
        name: &str,
        iterations: u32,
    ) -> Result<Vec<Duration>, PluginError> {
        let (shared, tx) = {
            let map = self.inner.plugins.read().unwrap_or_else(|p| p.into_inner());
            let l = map
                .get(name)
                .ok_or_else(|| PluginError::NotFound(format!("no plugin {name}")))?;
            (l.shared.clone(), l.tx.clone())
        };
        request_blocking(&shared, &tx, move |r| {
            let mut out = Vec::with_capacity(iterations as usize);
            for _ in 0..iterations {
                let t = Instant::now();
                r.reinstantiate()?;
                out.push(t.elapsed());
            }
            Ok(out)
        })
    }
}
