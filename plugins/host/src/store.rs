//! Per-instance store state: WASI context (nothing granted but the plugin's root),
//! resource limits, and the host imports every plugin sees, each rate-limited.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{
    Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::v0_1_0::log::berth::driver::{host, types};
use crate::bindings::v0_1_0::volume::berth::driver::volume_host;
use crate::engine::TICK;
use crate::manifest::PluginKind;
use crate::resolve::{self, Expect};
use crate::shared::Shared;

type DriverError = types::DriverError;

/// Simple token bucket for host-import rate limits.
pub struct Bucket {
    tokens: f64,
    cap: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Bucket {
            tokens: burst,
            cap: burst,
            per_sec,
            last: Instant::now(),
        }
    }
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `StoreLimits` plus a running total of linear memory, so the host can recycle an
/// instance whose memory grew large (wasm memories never shrink).
pub struct Limiter {
    inner: StoreLimits,
    pub memory_bytes: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok {
            self.memory_bytes = self
                .memory_bytes
                .saturating_add(desired.saturating_sub(current));
        }
        Ok(ok)
    }
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: Limiter,
    pub plugin: Arc<Shared>,
    log_bucket: Bucket,
    kv_bucket: Bucket,
    op_bucket: Bucket,
    /// Ticks spent blocked in host imports during the current call; the epoch
    /// callback grants them back once so slow host work is not billed to the plugin.
    pub grace_ticks: u64,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Build a fresh store for one instance of `plugin`.
pub fn new_store(engine: &Engine, plugin: &Arc<Shared>) -> anyhow::Result<Store<StoreState>> {
    let mut b = WasiCtxBuilder::new();
    // Defaults: no env, no args, stdin closed, stdout discarded, no sockets.
    b.stderr(plugin.stderr.clone());
    b.allow_blocking_current_thread(true);
    if plugin.kind != PluginKind::Network {
        b.preopened_dir(&plugin.root, "/data", FsPerms::ReadWrite)?;
    }
    if !plugin.manifest.network_allow.is_empty() {
        let allow = plugin.manifest.network_allow.clone();
        b.allow_tcp(true);
        b.allow_udp(false);
        b.allow_ip_name_lookup(false);
        b.socket_addr_check(move |addr, use_| {
            let ok = match use_ {
                // connect() first binds implicitly to the wildcard address.
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                SocketAddrUse::TcpConnect => allow.contains(&addr),
                _ => false,
            };
            Box::pin(async move { ok })
        });
    }
    let limits = StoreLimitsBuilder::new()
        .memory_size(plugin.memory_limit)
        .instances(16)
        .tables(16)
        .memories(4)
        .table_elements(100_000)
        .trap_on_grow_failure(true)
        .build();
    let state = StoreState {
        wasi: b.build(),
        table: ResourceTable::new(),
        limits: Limiter {
            inner: limits,
            memory_bytes: 0,
        },
        plugin: plugin.clone(),
        log_bucket: Bucket::new(100.0, 200.0),
        kv_bucket: Bucket::new(200.0, 400.0),
        op_bucket: Bucket::new(10.0, 20.0),
        grace_ticks: 0,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|mut cx| {
        let grace = std::mem::take(&mut cx.data_mut().grace_ticks);
        if grace > 0 {
            Ok(UpdateDeadline::Continue(grace))
        } else {
            Err(Trap::Interrupt.into())
        }
    });
    Ok(store)
}

impl StoreState {
    fn bill_blocking(&mut self, started: Instant) {
        let t = started.elapsed().as_millis() as u64 / TICK.as_millis() as u64 + 1;
        self.grace_ticks += t;
    }
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    fn log(&mut self, level: host::Level, msg: String) {
        if !self.log_bucket.take() {
            self.plugin
                .stats
                .log_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let msg = crate::validate::truncate(msg, 1024);
        let name = self.plugin.name.as_str();
        match level {
            host::Level::Trace => tracing::trace!(plugin = name, "{msg}"),
            host::Level::Debug => tracing::debug!(plugin = name, "{msg}"),
            host::Level::Info => tracing::info!(plugin = name, "{msg}"),
            host::Level::Warn => tracing::warn!(plugin = name, "{msg}"),
            host::Level::Error => tracing::error!(plugin = name, "{msg}"),
        }
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.plugin
            .kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<(), DriverError> {
        if !self.kv_bucket.take() {
            return Err(DriverError::Denied("kv-set rate limit exceeded".into()));
        }
        self.plugin
            .kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(key, value)
            .map_err(DriverError::Denied)
    }

    fn kv_delete(&mut self, key: String) {
        if self.kv_bucket.take() {
            self.plugin
                .kv
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .delete(&key);
        }
    }

    fn kv_keys(&mut self, prefix: String) -> Vec<String> {
        self.plugin
            .kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys(&prefix)
    }
}

/// Largest disk image a volume plugin may create.
const MAX_DISK: u64 = 1 << 40;

fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<(), String> {
    let name = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(format!("{name} failed ({st}): {}", err.trim()));
            }
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{name} timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
}

impl volume_host::Host for StoreState {
    fn create_disk_image(
        &mut self,
        path: String,
        size_bytes: u64,
        format: volume_host::ImageFormat,
        fs: volume_host::FsKind,
    ) -> Result<(), DriverError> {
        if !self.op_bucket.take() {
            return Err(DriverError::Busy(
                "create-disk-image rate limit exceeded".into(),
            ));
        }
        if format != volume_host::ImageFormat::Raw {
            return Err(DriverError::Unsupported(
                "only raw disk images are supported".into(),
            ));
        }
        if !(1 << 20..=MAX_DISK).contains(&size_bytes) {
            return Err(DriverError::Invalid(format!(
                "disk size {size_bytes} outside 1 MiB..=1 TiB"
            )));
        }
        let started = Instant::now();
        let root = self.plugin.root.clone();
        let (file, host_path) = resolve::create_file(&root, &path).map_err(DriverError::Denied)?;
        let made = file
            .set_len(size_bytes)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                drop(file);
                let mkfs = match fs {
                    volume_host::FsKind::Ext4 => "mkfs.ext4",
                    volume_host::FsKind::Xfs => "mkfs.xfs",
                    volume_host::FsKind::None => return Ok(()),
                };
                let mut cmd = Command::new(mkfs);
                if fs == volume_host::FsKind::Ext4 {
                    cmd.args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"]);
                } else {
                    cmd.args(["-q", "-f"]);
                }
                cmd.arg(&host_path);
                run_with_timeout(cmd, Duration::from_secs(60))
            });
        self.bill_blocking(started);
        made.map_err(|e| {
            let _ = std::fs::remove_file(&host_path);
            DriverError::Failed(format!("creating disk image {path}: {e}"))
        })
    }

    fn resize_disk_image(&mut self, path: String, size_bytes: u64) -> Result<(), DriverError> {
        Err(DriverError::Unsupported(format!(
            "resize-disk-image {path} to {size_bytes}: not implemented by this host"
        )))
    }

    fn set_quota(&mut self, dir: String, _bytes: Option<u64>) -> Result<(), DriverError> {
        Err(DriverError::Unsupported(format!(
            "set-quota {dir}: not implemented by this host"
        )))
    }

    fn disk_usage(&mut self, path: String) -> Result<u64, DriverError> {
        if !self.op_bucket.take() {
            return Err(DriverError::Busy("disk-usage rate limit exceeded".into()));
        }
        let started = Instant::now();
        let root = self.plugin.root.clone();
        let top = resolve::resolve(&root, &path, Expect::Dir)
            .or_else(|_| resolve::resolve(&root, &path, Expect::File))
            .map_err(DriverError::Denied)?;
        let mut total = 0u64;
        let mut stack = vec![top];
        let mut seen = 0usize;
        use std::os::unix::fs::MetadataExt;
        while let Some(p) = stack.pop() {
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            total += md.blocks() * 512;
            seen += 1;
            if seen > 1_000_000 {
                break;
            }
            if md.is_dir() {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.filter_map(|e| Some(e.ok()?.path())));
                }
            }
        }
        self.bill_blocking(started);
        Ok(total)
    }
}
