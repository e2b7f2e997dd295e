//! One wasmtime engine per daemon: Cranelift, epoch interruption driven by a ticker
//! thread, the pooling allocator when the address-space probe passes, and a
//! precompiled-component cache keyed by content hash.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::HostError;

/// Epoch tick; per-call deadlines are whole ticks.
pub const TICK: Duration = Duration::from_millis(10);

fn base_config() -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.max_wasm_stack(256 << 10);
    c
}

/// Build the engine, trying the pooling allocator first (it reserves address space
/// up front and may fail on small-VA hosts); returns whether pooling is in use.
pub fn build_engine(
    pooling: bool,
    max_memory: usize,
    max_instances: u32,
) -> Result<(Engine, bool), HostError> {
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(max_instances)
            .total_core_instances(max_instances * 4)
            .total_memories(max_instances * 2)
            .total_tables(max_instances * 4)
            .max_memory_size(max_memory)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_core_instances_per_component(16);
        let mut c = base_config();
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&c) {
            Ok(e) => return Ok((e, true)),
            Err(e) => {
                tracing::warn!("pooling allocator unavailable, using on-demand allocation: {e:#}")
            }
        }
    }
    let e = Engine::new(&base_config()).map_err(|e| HostError::Engine(format!("{e:#}")))?;
    Ok((e, false))
}

/// Increment the engine's epoch every [`TICK`] until the engine is dropped.
pub fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    let _ = std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            match weak.upgrade() {
                Some(e) => e.increment_epoch(),
                None => break,
            }
        });
}

pub fn ticks(d: Duration) -> u64 {
    (d.as_millis() as u64)
        .div_ceil(TICK.as_millis() as u64)
        .max(1)
}

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Compiled,
}

fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let digest = Sha256::digest(wasm);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{:016x}", h.finish())
}

pub fn cache_path(cache_dir: &Path, engine: &Engine, wasm: &[u8]) -> PathBuf {
    cache_dir.join(format!("{}.cwasm", cache_key(engine, wasm)))
}

/// Compile `wasm` once per content hash and engine configuration; later loads map
/// the cached artifact. Only artifacts this process wrote into `cache_dir` are
/// deserialized (they are native code).
pub fn load_component(
    engine: &Engine,
    cache_dir: &Path,
    wasm: &[u8],
) -> Result<(Component, CacheOutcome), String> {
    let path = cache_path(cache_dir, engine, wasm);
    if path.exists() {
        // SAFETY: the file is in the daemon-owned cache dir and named by the hash of
        // its source plus the engine's compatibility hash; we wrote it below.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok((c, CacheOutcome::Hit)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "dropping unusable cached component: {e:#}");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let bytes = engine
        .precompile_component(wasm)
        .map_err(|e| format!("compiling component: {e:#}"))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{seq}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    // SAFETY: as above; just produced by precompile_component on this engine.
    let c = unsafe { Component::deserialize_file(engine, &path) }
        .map_err(|e| format!("loading compiled component: {e:#}"))?;
    Ok((c, CacheOutcome::Compiled))
}
