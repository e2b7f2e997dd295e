//! Host bindings, one module per supported `berth:driver` version. Released WIT
//! versions are frozen; a new version gets a new module here and a new variant in
//! [`crate::version::InterfaceVersion`].

pub mod v0_1_0 {
    pub mod log {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: "log-plugin",
        });
    }
    /// Network world: bound so its shape is checked by the host build; berthd does
    /// not load network plugins yet.
    pub mod network {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: "network-plugin",
            with: {
                "berth:driver/types": super::log::berth::driver::types,
                "berth:driver/host": super::log::berth::driver::host,
            },
        });
    }
    pub mod volume {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: "volume-plugin",
            with: {
                "berth:driver/types": super::log::berth::driver::types,
                "berth:driver/host": super::log::berth::driver::host,
            },
        });
    }
}

/// 0.2.0: the network world (driver + IPAM as pure decisions returning intents).
pub mod v0_2_0 {
    pub mod network {
        wasmtime::component::bindgen!({
            path: "../wit/0.2.0",
            world: "network-plugin",
        });
    }
}

/// 0.3.0: the network world with dual-stack records (`subnet6`/`gateway6` on a network,
/// `address6`/`gateway6` on an endpoint, `address6` on a bridge). 0.2.0 stays served
/// for IPv4-only network plugins.
pub mod v0_3_0 {
    pub mod network {
        wasmtime::component::bindgen!({
            path: "../wit/0.3.0",
            world: "network-plugin",
        });
    }
}
