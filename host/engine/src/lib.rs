//! berth-engine: everything `berthd` does behind the HTTP layer — the image store,
//! containers, events and, later, the VM supervisor and plugin wiring.
//!
//! The API crate holds an `Arc<Engine>` and calls one engine verb per request.

pub mod build;
pub mod containers;
pub mod error;
pub mod events;
pub mod fsutil;
pub mod images;
pub mod isolation;
pub mod logs;
pub mod networks;
pub mod plugins;
pub mod userns;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::{Error, Result};

/// Engine-wide settings, filled by `berthd` from flags and its TOML config.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Persistent state: images, containers, volumes (dockerd's `--data-root`).
    pub data_root: PathBuf,
    /// Runtime state: sockets, per-container runtime dirs (dockerd's `--exec-root`).
    pub exec_root: PathBuf,
    /// The `berth-agent` binary; found next to `berthd` when unset.
    pub agent_bin: Option<PathBuf>,
    /// Directories of user-installed plugins (default `<data-root>/plugins`).
    pub plugin_dirs: Vec<PathBuf>,
    /// `--log-driver`: the daemon's default log driver.
    pub default_log_driver: Option<String>,
    /// `--storage-driver`: `overlay` or `copy` (probed when unset).
    pub storage_driver: Option<String>,
    /// `--default-isolation`: `process` (when unset) or `microvm`.
    pub default_isolation: Option<String>,
    /// `--vmm` and `--guest-kernel`.
    pub microvm: isolation::microvm::MicrovmConfig,
    /// `--max-download-size`: the cap of a URL import (default 16 GiB).
    pub max_download_bytes: Option<u64>,
    /// `--bridge`, `--bip`, `--fixed-cidr`, `--default-address-pool`, `--mtu`.
    pub network: networks::NetworkConfig,
    /// `--insecure-registry`, `--registry-mirror`, `--registry-certs-dir`.
    pub registry: images::trust::RegistryConfig,
    /// `--userns-remap`: `default`, `USER[:GROUP]`, or empty/unset for none.
    pub userns_remap: Option<String>,
}

pub struct Engine {
    pub config: EngineConfig,
    pub events: Arc<events::EventBus>,
    pub images: Arc<images::ImageStore>,
    pub containers: Arc<containers::Containers>,
    pub plugins: Option<Arc<berth_plugin_host::PluginHost>>,
    /// `docker plugin`: the user-installed WASM plugins.
    pub plugin_manager: Arc<plugins::PluginManager>,
    pub volumes: Arc<volumes::Volumes>,
    pub networks: Arc<networks::Networks>,
    pub builder: build::Builder,
    pub started: std::time::SystemTime,
    /// `--userns-remap`, resolved (`None`: off).
    pub userns: Option<userns::Remap>,
}

impl Engine {
    /// Open (or create) the state under the configured roots and clean up whatever a
    /// previous run left half-done.
    pub async fn open(config: EngineConfig) -> Result<Arc<Engine>> {
        std::fs::create_dir_all(&config.data_root)?;
        std::fs::create_dir_all(&config.exec_root)?;
        let userns = userns::resolve(config.userns_remap.as_deref().unwrap_or(""))?;
        let events = Arc::new(events::EventBus::new());
        let mut image_store =
            images::ImageStore::open(&config.data_root.join("images"), events.clone())?;
        if let Some(max) = config.max_download_bytes {
            image_store.max_download_bytes = max;
        }
        image_store.registry = config.registry.clone();
        let images = Arc::new(image_store);
        let containers = containers::Containers::open(
            containers::ContainerPaths {
                data_root: config.data_root.clone(),
                exec_root: config.exec_root.clone(),
                agent_bin: config
                    .agent_bin
                    .clone()
                    .unwrap_or_else(containers::runtime_default_agent_bin),
                storage_driver: config.storage_driver.clone(),
                default_isolation: config.default_isolation.clone(),
                microvm: config.microvm.clone(),
                userns: userns.clone(),
            },
            events.clone(),
            images.clone(),
        )?;
        {
            let c = Arc::downgrade(&containers);
            images.set_in_use_hook(Arc::new(move |id: &str| {
                c.upgrade().is_some_and(|c| c.image_in_use(id))
            }));
        }
        let plugin_dirs = if config.plugin_dirs.is_empty() {
            vec![config.data_root.join("plugins")]
        } else {
            config.plugin_dirs.clone()
        };
        let plugins = {
            let root = config.data_root.clone();
            tokio::task::spawn_blocking(move || plugins::open_host(&root))
                .await
                .map_err(Error::internal)?
        };
        if let Some(host) = &plugins {
            for name in host.names(berth_plugin_host::PluginKind::Log) {
                if let Some(h) = host.log_driver(&name) {
                    containers.register_log_driver(Arc::new(plugins::PluginLogDriver::new(h)));
                }
            }
        }
        // json-file, the default driver, is the WASM plugin (there is no second,
        // built-in implementation): without it the daemon still serves, and creating a
        // container that logs to it says what is missing, as the bridge network does.
        {
            let mut drivers = containers.log_drivers.write().unwrap();
            if drivers.get("json-file").is_err() {
                drivers.set_unavailable(
                    "json-file",
                    "the json-file log plugin is not loaded (build the plugins with \
                     scripts/build-plugins.sh, or pick another --log-driver)"
                        .into(),
                );
            }
        }
        let volumes = Arc::new(volumes::Volumes::open(
            &config.data_root,
            plugins.clone(),
            events.clone(),
        )?);
        {
            let c = Arc::downgrade(&containers);
            volumes.set_in_use_hook(Arc::new(move |name: &str| {
                c.upgrade()
                    .map(|c| c.volume_users(name))
                    .unwrap_or_default()
            }));
            containers.set_volumes(volumes.clone());
        }
        // User plugins: loaded after the default ones and before containers are
        // restored, so their log drivers are registered when logging resumes.
        let plugin_manager = {
            let (host, root, c, v) = (
                plugins.clone(),
                config.data_root.clone(),
                containers.clone(),
                volumes.clone(),
            );
            Arc::new(
                tokio::task::spawn_blocking(move || {
                    plugins::PluginManager::open(host, &root, &plugin_dirs, c, v)
                })
                .await
                .map_err(Error::internal)??,
            )
        };
        if let Some(d) = &config.default_log_driver {
            containers.log_drivers.read().unwrap().get(d)?;
            *containers.default_log_driver.write().unwrap() = d.clone();
        }
        let networks = networks::Networks::open(
            &config.data_root,
            &config.exec_root,
            &config.network,
            plugins.clone(),
            events.clone(),
        )?;
        containers.set_networks(networks.clone());
        networks.bring_up().await;
        containers.restore().await;
        let running: std::collections::HashSet<String> = containers
            .all()
            .iter()
            .filter(|c| c.status().is_running())
            .map(|c| c.id.clone())
            .collect();
        networks.reconcile(&running).await;
        let builder = build::Builder::open(&config.data_root, containers.clone());
        Ok(Arc::new(Engine {
            config,
            events,
            images,
            containers,
            plugins,
            plugin_manager,
            volumes,
            networks,
            builder,
            started: std::time::SystemTime::now(),
            userns,
        }))
    }

    /// Flush what the daemon holds before it exits: output pumps drain into the logs and
    /// close their log sessions, container records are saved. Containers keep running.
    pub async fn shutdown(&self) {
        self.containers.shutdown().await;
        tracing::info!("engine shut down");
    }
}
