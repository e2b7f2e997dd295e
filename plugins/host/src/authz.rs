//! Authorization plugins (`berth:authz` world): Docker's AuthZReq/AuthZRes as a
//! sandboxed component. Everything here fails closed: a plugin that cannot be loaded
//! is an error at start-up, and a trap, a timeout or a bad reply is a denial.
//!
//! Unlike driver plugins these run on the caller's thread (which must not be an
//! async runtime worker: WASI's sync bindings block on futures) from a small pool
//! of instances, so concurrent requests are authorized in parallel. Each call has an epoch
//! deadline; a trapped instance is dropped and a fresh one made from `InstancePre`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::engine::{build_engine, load_component, spawn_ticker, ticks};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/authz-0.1.0",
        world: "authz-plugin",
    });
}

pub use bindings::berth::authz::types::{Decision, Object, ObjectKind, Request, Response, Rewrite};
use bindings::berth::authz::{host, types};
use bindings::{AuthzPlugin as Bound, AuthzPluginPre};

/// The interface this host serves (the export a plugin must have).
pub const AUTHZ_INTERFACE: &str = "berth:authz/authz@0.1.0";
/// Largest request or response body handed to a plugin (dockerd's authz limit).
pub const MAX_BODY: usize = 1 << 20;
const MAX_COMPONENT_BYTES: u64 = 64 << 20;
const MAX_MSG: usize = 1024;

/// berthd's view of its objects, for the plugin's `lookup` import.
pub trait Lookup: Send + Sync {
    fn lookup(&self, kind: ObjectKind, name_or_id: &str) -> Option<Object>;
}

/// Host-wide settings for authorization plugins.
#[derive(Debug, Clone)]
pub struct AuthzConfig {
    /// Precompiled component cache (shared with the driver plugins is fine).
    pub cache_dir: PathBuf,
    /// Epoch deadline per call.
    pub call_timeout: Duration,
    /// Linear memory cap per instance.
    pub memory_limit: usize,
    /// Idle instances kept per plugin (about one per concurrent request).
    pub pool: usize,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            cache_dir: PathBuf::new(),
            call_timeout: Duration::from_millis(250),
            memory_limit: 32 << 20,
            pool: 8,
        }
    }
}

/// `authz.toml` next to `plugin.wasm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthzManifest {
    name: String,
    kind: String,
    interface: String,
    #[serde(default)]
    config: std::collections::BTreeMap<String, toml::Value>,
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    lookup: Option<Arc<dyn Lookup>>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for State {}

impl host::Host for State {
    fn lookup(&mut self, kind: ObjectKind, name_or_id: String) -> Option<Object> {
        if name_or_id.len() > 1024 {
            return None;
        }
        self.lookup.as_ref()?.lookup(kind, &name_or_id)
    }
}

struct Live {
    store: Store<State>,
    inst: Bound,
}

/// Counters since load.
#[derive(Debug, Default)]
pub struct AuthzStats {
    pub calls: AtomicU64,
    pub instantiations: AtomicU64,
    pub failures: AtomicU64,
}

/// The engine and linker every authorization plugin shares.
pub struct AuthzHost {
    engine: Engine,
    linker: Linker<State>,
    cfg: AuthzConfig,
}

/// One loaded authorization plugin. Calls block (bounded by the epoch deadline):
/// make them from a blocking thread; concurrent calls each take their own instance.
pub struct AuthzPluginHandle {
    name: String,
    engine: Engine,
    pre: AuthzPluginPre<State>,
    config: Vec<(String, String)>,
    cfg: AuthzConfig,
    idle: Mutex<Vec<Live>>,
    pub stats: AuthzStats,
}

/// `[config]` values reach the plugin as strings; tables and arrays are refused.
fn config_value(k: &str, v: &toml::Value) -> Result<String, String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => {
            return Err(format!(
                "authz.toml: config key {k:?} must be a string, number or boolean"
            ))
        }
    })
}

impl AuthzHost {
    pub fn new(cfg: AuthzConfig) -> Result<AuthzHost, String> {
        std::fs::create_dir_all(&cfg.cache_dir)
            .map_err(|e| format!("{}: {e}", cfg.cache_dir.display()))?;
        // On-demand allocation: a handful of small instances, no address-space probe.
        let (engine, _) = build_engine(false, cfg.memory_limit, 0).map_err(|e| e.to_string())?;
        spawn_ticker(&engine);
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| format!("{e:#}"))?;
        Bound::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| format!("{e:#}"))?;
        Ok(AuthzHost {
            engine,
            linker,
            cfg,
        })
    }

    /// Load `<dir>/{authz.toml,plugin.wasm}`, check its imports and exports, and
    /// instantiate it once (running `init`) so a broken plugin fails here.
    /// `overrides` replace `[config]` keys the manifest declares. Blocking.
    pub fn load(
        &self,
        dir: &Path,
        overrides: &[(String, String)],
    ) -> Result<Arc<AuthzPluginHandle>, String> {
        let text = std::fs::read_to_string(dir.join("authz.toml"))
            .map_err(|e| format!("{}: {e}", dir.join("authz.toml").display()))?;
        let m: AuthzManifest = toml::from_str(&text).map_err(|e| format!("authz.toml: {e}"))?;
        if m.kind != "authz" || m.interface != "berth:authz@0.1.0" {
            return Err(format!(
                "authz.toml: kind {:?} interface {:?}; want \"authz\" and \"berth:authz@0.1.0\"",
                m.kind, m.interface
            ));
        }
        let mut config: Vec<(String, String)> = m
            .config
            .iter()
            .map(|(k, v)| Ok((k.clone(), config_value(k, v)?)))
            .collect::<Result<_, String>>()?;
        for (k, v) in overrides {
            match config.iter_mut().find(|(ck, _)| ck == k) {
                Some(slot) => slot.1 = v.clone(),
                None => {
                    return Err(format!(
                        "plugin {} has no config key {k:?} (it has: {})",
                        m.name,
                        m.config.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                }
            }
        }
        let wasm_path = dir.join("plugin.wasm");
        let size = std::fs::metadata(&wasm_path)
            .map_err(|e| format!("{}: {e}", wasm_path.display()))?
            .len();
        if size > MAX_COMPONENT_BYTES {
            return Err(format!(
                "plugin.wasm is {size} bytes (max {MAX_COMPONENT_BYTES})"
            ));
        }
        let wasm = std::fs::read(&wasm_path).map_err(|e| format!("plugin.wasm: {e}"))?;
        let (component, _) = load_component(&self.engine, &self.cfg.cache_dir, &wasm)?;
        check_component(&self.engine, &component)?;
        let ipre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("linking: {e:#}"))?;
        let pre = AuthzPluginPre::new(ipre).map_err(|e| format!("{e:#}"))?;
        let handle = Arc::new(AuthzPluginHandle {
            name: m.name,
            engine: self.engine.clone(),
            pre,
            config,
            cfg: self.cfg.clone(),
            idle: Mutex::new(Vec::new()),
            stats: AuthzStats::default(),
        });
        let live = handle
            .instantiate()
            .map_err(|e| format!("starting plugin: {e}"))?;
        handle.put_back(live);
        Ok(handle)
    }
}

/// Exports must be the authz interface; imports only its host interface and WASI
/// without sockets. Rust's std always imports wasi:filesystem; with nothing
/// preopened it reaches no file.
fn check_component(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    if ty.get_export(engine, AUTHZ_INTERFACE).is_none() {
        let got: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        return Err(format!(
            "component does not export {AUTHZ_INTERFACE} (exports: {})",
            got.join(", ")
        ));
    }
    let refused: Vec<String> = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .filter(|n| {
            let iface = n.split('@').next().unwrap_or(n);
            !(iface == "berth:authz/host"
                || iface == "berth:authz/types"
                || crate::interface::WASI_BASE.contains(&iface)
                || crate::interface::WASI_FS.contains(&iface))
        })
        .collect();
    if !refused.is_empty() {
        return Err(format!(
            "imports not allowed for an authz plugin: {}",
            refused.join(", ")
        ));
    }
    Ok(())
}

impl AuthzPluginHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn instantiate(&self) -> Result<Live, String> {
        // Nothing granted: no env, args, preopens or sockets; stdio closed/discarded.
        let wasi = WasiCtxBuilder::new().build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.cfg.memory_limit)
            .instances(16)
            .tables(16)
            .memories(4)
            .table_elements(100_000)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            State {
                wasi,
                table: ResourceTable::new(),
                limits,
                lookup: None,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(ticks(self.cfg.call_timeout));
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let inst = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.failure(e))?;
        store.set_epoch_deadline(ticks(self.cfg.call_timeout));
        match inst.berth_authz_authz().call_init(&mut store, &self.config) {
            Ok(Ok(())) => Ok(Live { store, inst }),
            Ok(Err(msg)) => Err(format!("init refused its config: {}", clip(msg))),
            Err(e) => Err(self.failure(e)),
        }
    }

    fn put_back(&self, live: Live) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.cfg.pool {
            idle.push(live);
        }
    }

    fn failure(&self, e: wasmtime::Error) -> String {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let why = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => format!(
                "plugin did not answer within {} ms",
                self.cfg.call_timeout.as_millis()
            ),
            _ => format!("plugin trapped: {}", clip(format!("{e:#}"))),
        };
        tracing::warn!(plugin = %self.name, "{why}; instance dropped");
        why
    }

    /// Run one export on an idle (or fresh) instance. `Err` is a plugin failure,
    /// which the caller must treat as a denial.
    fn call<R>(
        &self,
        lookup: Option<Arc<dyn Lookup>>,
        f: impl FnOnce(&mut Store<State>, &Bound) -> wasmtime::Result<R>,
    ) -> Result<R, String> {
        let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut live = match popped {
            Some(l) => l,
            None => self.instantiate()?,
        };
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        live.store.data_mut().lookup = lookup;
        live.store.set_epoch_deadline(ticks(self.cfg.call_timeout));
        let r = f(&mut live.store, &live.inst);
        live.store.data_mut().lookup = None;
        match r {
            Ok(v) => {
                self.put_back(live);
                Ok(v)
            }
            // The instance is dead after a trap; it is simply not returned.
            Err(e) => Err(self.failure(e)),
        }
    }

    /// AuthZReq. Blocking.
    pub fn authz_req(
        &self,
        req: &Request,
        lookup: Option<Arc<dyn Lookup>>,
    ) -> Result<Decision, String> {
        let d = self.call(lookup, |s, i| i.berth_authz_authz().call_authz_req(s, req))?;
        check_decision(d)
    }

    /// AuthZRes. Blocking.
    pub fn authz_res(
        &self,
        req: &Request,
        res: &Response,
        lookup: Option<Arc<dyn Lookup>>,
    ) -> Result<Decision, String> {
        let d = self.call(lookup, |s, i| {
            i.berth_authz_authz().call_authz_res(s, req, res)
        })?;
        check_decision(d)
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_MSG {
        let mut cut = MAX_MSG;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Replies are bounded before the host acts on them.
fn check_decision(d: Decision) -> Result<Decision, String> {
    match d {
        Decision::Deny(msg) => Ok(Decision::Deny(clip(msg))),
        Decision::AllowRewritten(rw) => {
            if rw.body.as_ref().is_some_and(|b| b.len() > MAX_BODY) {
                return Err(format!("rewritten body over {MAX_BODY} bytes"));
            }
            if rw.uri.as_ref().is_some_and(|u| u.len() > 8192) {
                return Err("rewritten URI over 8192 bytes".into());
            }
            Ok(Decision::AllowRewritten(rw))
        }
        Decision::Allow => Ok(Decision::Allow),
    }
}

/// Where `--authorization-plugin NAME` is looked for: `<dir>/NAME/authz.toml` in
/// each of `dirs`, first match wins.
pub fn find_plugin(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    if !crate::manifest::valid_plugin_name(name) {
        return None;
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|d| d.join("authz.toml").is_file())
}
