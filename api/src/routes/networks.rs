//! `/networks`: Docker's network API over the engine's network model.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_engine::networks::model::NetworkRecord;
use bollard_stubs::models::{
    ConfigReference, EndpointResource, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkCreateResponse, NetworkDisconnectRequest, NetworkInspect,
    NetworkPruneResponse, NetworkSummary,
};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::query::{parse_bool, Filters, JsonBody, Q};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/networks", get(list))
        .route("/networks/create", post(create))
        .route("/networks/prune", post(prune))
        .route("/networks/{id}", get(inspect).delete(remove))
        .route("/networks/{id}/connect", post(connect))
        .route("/networks/{id}/disconnect", post(disconnect))
}

fn ipam(n: &NetworkRecord) -> Ipam {
    let mut config: Vec<IpamConfig> = n
        .subnet
        .map(|s| {
            vec![IpamConfig {
                subnet: Some(s.network().to_string()),
                gateway: n.gateway.map(|g| g.to_string()),
                ip_range: n.ip_range.map(|r| r.to_string()),
                auxiliary_addresses: (!n.aux_addresses.is_empty()).then(|| {
                    n.aux_addresses
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_string()))
                        .collect()
                }),
            }]
        })
        .unwrap_or_default();
    // The IPv6 config second, with its gateway only when one was given (dockerd's
    // inspect).
    if let Some(s6) = n.subnet6 {
        config.push(IpamConfig {
            subnet: Some(s6.network().to_string()),
            gateway: n
                .gateway6
                .filter(|_| n.gateway6_explicit)
                .map(|g| g.to_string()),
            ip_range: n.ip_range6.map(|r| r.to_string()),
            auxiliary_addresses: None,
        });
    }
    Ipam {
        driver: Some(n.ipam_driver.clone()),
        config: Some(config),
        options: Some(n.ipam_options.clone()),
    }
}

fn summary(n: &NetworkRecord) -> NetworkSummary {
    NetworkSummary {
        name: Some(n.name.clone()),
        id: Some(n.id.clone()),
        created: Some(n.created.clone()),
        scope: Some("local".into()),
        driver: Some(n.driver.clone()),
        enable_ipv4: Some(true),
        enable_ipv6: Some(n.enable_ipv6),
        ipam: Some(ipam(n)),
        internal: Some(n.internal),
        attachable: Some(n.attachable),
        ingress: Some(false),
        config_from: Some(ConfigReference {
            network: Some(String::new()),
        }),
        config_only: Some(false),
        options: Some(n.options.clone()),
        labels: Some(n.labels.clone()),
        ..Default::default()
    }
}

fn inspect_model(engine: &AppState, n: &NetworkRecord) -> NetworkInspect {
    let containers: HashMap<String, EndpointResource> = engine
        .networks
        .endpoints(&n.id)
        .into_iter()
        .map(|e| {
            (
                e.container_id.clone(),
                EndpointResource {
                    name: Some(e.container_name.clone()),
                    endpoint_id: Some(e.id.clone()),
                    mac_address: Some(e.mac.clone()),
                    ipv4_address: Some(format!("{}/{}", e.ip, e.prefix)),
                    ipv6_address: Some(
                        e.ip6
                            .map(|a| format!("{a}/{}", e.prefix6))
                            .unwrap_or_default(),
                    ),
                },
            )
        })
        .collect();
    let s = summary(n);
    NetworkInspect {
        name: s.name,
        id: s.id,
        created: s.created,
        scope: s.scope,
        driver: s.driver,
        enable_ipv4: s.enable_ipv4,
        enable_ipv6: s.enable_ipv6,
        ipam: s.ipam,
        internal: s.internal,
        attachable: s.attachable,
        ingress: s.ingress,
        config_from: s.config_from,
        config_only: s.config_only,
        options: s.options,
        labels: s.labels,
        containers: Some(containers),
        ..Default::default()
    }
}

fn matches(f: &Filters, n: &NetworkRecord, dangling: bool) -> bool {
    let any = |key: &str, pred: &dyn Fn(&str) -> bool| {
        let v = f.get(key);
        v.is_empty() || v.iter().any(|x| pred(x))
    };
    any("name", &|x| n.name.contains(x))
        && any("id", &|x| n.id.starts_with(x))
        && any("driver", &|x| n.driver == x)
        && any("scope", &|x| x == "local")
        && any("type", &|x| match x {
            "builtin" => n.predefined,
            "custom" => !n.predefined,
            _ => false,
        })
        && any("dangling", &|x| parse_bool(x) == dangling)
        && f.match_labels("label", &n.labels)
}

#[derive(Deserialize)]
struct ListQuery {
    filters: Option<String>,
}

async fn list(
    State(engine): State<AppState>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let f = Filters::parse(q.filters.as_deref())?;
    f.validate(&["name", "id", "driver", "label", "type", "scope", "dangling"])?;
    for t in f.get("type") {
        if t != "custom" && t != "builtin" {
            return Err(ApiError::bad_request(format!(
                "invalid filter: 'type'='{t}'"
            )));
        }
    }
    let out = engine
        .networks
        .list()
        .iter()
        .filter(|n| {
            let dangling = !n.predefined
                && engine.networks.endpoints(&n.id).is_empty()
                && engine.containers.network_users(&n.id).is_empty();
            matches(&f, n, dangling)
        })
        .map(|n| {
            // dockerd's list carries an empty `Containers` (the model has no such field).
            let mut v = serde_json::to_value(summary(n)).unwrap_or_default();
            v["Containers"] = serde_json::json!({});
            v
        })
        .collect();
    Ok(Json(out))
}

async fn inspect(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<NetworkInspect>> {
    let n = engine.networks.get(&id)?;
    Ok(Json(inspect_model(&engine, &n)))
}

async fn create(
    State(engine): State<AppState>,
    JsonBody(req): JsonBody<NetworkCreateRequest>,
) -> ApiResult<Response> {
    let (id, warning) = engine.networks.create(req).await?;
    Ok((
        StatusCode::CREATED,
        Json(NetworkCreateResponse { id, warning }),
    )
        .into_response())
}

async fn remove(State(engine): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    engine.networks.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn connect(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NetworkConnectRequest>,
) -> ApiResult<StatusCode> {
    let c = engine.containers.get(&req.container)?;
    engine
        .containers
        .connect_network(&c, &id, req.endpoint_config)
        .await?;
    Ok(StatusCode::OK)
}

async fn disconnect(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NetworkDisconnectRequest>,
) -> ApiResult<StatusCode> {
    let c = engine.containers.get(&req.container)?;
    engine.containers.disconnect_network(&c, &id).await?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct PruneQuery {
    filters: Option<String>,
}

/// `until` as unix seconds or RFC 3339, to unix nanoseconds.
fn parse_until(v: &str) -> Result<i128, ApiError> {
    if let Ok(secs) = v.parse::<i64>() {
        return Ok(secs as i128 * 1_000_000_000);
    }
    berth_engine::fsutil::parse_rfc3339(v)
        .ok_or_else(|| ApiError::bad_request(format!("invalid filter 'until={v}'")))
}

async fn prune(
    State(engine): State<AppState>,
    Q(q): Q<PruneQuery>,
) -> ApiResult<Json<NetworkPruneResponse>> {
    let f = Filters::parse(q.filters.as_deref())?;
    f.validate(&["until", "label", "label!"])?;
    let until = f
        .get("until")
        .iter()
        .map(|v| parse_until(v))
        .collect::<Result<Vec<_>, _>>()?;
    let deleted = engine
        .networks
        .prune(move |n| {
            let created = berth_engine::fsutil::parse_rfc3339(&n.created).unwrap_or(0);
            f.prune_excludes(&n.labels) || until.iter().any(|u| created >= *u)
        })
        .await;
    Ok(Json(NetworkPruneResponse {
        networks_deleted: Some(deleted),
    }))
}

/// What `NetworkSettings` shows of a container: its networks (live addresses while it
/// runs) and ports.
pub(crate) struct ContainerNet {
    pub networks: HashMap<String, bollard_stubs::models::EndpointSettings>,
    pub ports: bollard_stubs::models::PortMap,
    pub summary_ports: Vec<bollard_stubs::models::PortSummary>,
    /// The default bridge's endpoint (Docker's legacy top-level fields).
    pub bridge: Option<berth_engine::networks::model::EndpointRecord>,
    pub sandbox_key: String,
}

pub(crate) fn container_net(
    engine: &AppState,
    r: &berth_engine::containers::ContainerRecord,
) -> ContainerNet {
    use bollard_stubs::models::{
        EndpointIpamConfig, EndpointSettings, PortBinding, PortSummary, PortSummaryTypeEnum,
    };
    let (eps, maps) = engine.networks.view(&r.id);
    let mut networks = HashMap::new();
    let mut bridge = None;
    let mode = r.host_config.network_mode.clone().unwrap_or_default();
    if mode == "host" || mode == "none" {
        if let Ok(n) = engine.networks.get(&mode) {
            networks.insert(
                n.name.clone(),
                EndpointSettings {
                    network_id: Some(n.id.clone()),
                    ..Default::default()
                },
            );
        }
    }
    for a in &r.networks {
        let live = eps.iter().find(|(n, _)| n.id == a.network_id);
        let user_net = live
            .map(|(n, _)| !n.is_default_bridge())
            .unwrap_or(a.network_name != "bridge");
        let mut es = EndpointSettings {
            network_id: Some(a.network_id.clone()),
            aliases: (!a.aliases.is_empty()).then(|| a.aliases.clone()),
            ipam_config: (a.ipv4.is_some() || a.ipv6.is_some()).then(|| EndpointIpamConfig {
                ipv4_address: a.ipv4.map(|ip| ip.to_string()),
                ipv6_address: a.ipv6.map(|ip| ip.to_string()),
                ..Default::default()
            }),
            mac_address: Some(a.mac.clone().unwrap_or_default()),
            gw_priority: Some(0),
            endpoint_id: Some(String::new()),
            gateway: Some(String::new()),
            ip_address: Some(String::new()),
            ip_prefix_len: Some(0),
            ipv6_gateway: Some(String::new()),
            global_ipv6_address: Some(String::new()),
            global_ipv6_prefix_len: Some(0),
            dns_names: user_net.then(|| {
                let mut d = vec![r.name.clone(), r.id[..12].to_string()];
                d.extend(a.aliases.iter().cloned());
                d
            }),
            ..Default::default()
        };
        if let Some((n, e)) = live {
            es.endpoint_id = Some(e.id.clone());
            es.gateway = Some(e.gateway.map(|g| g.to_string()).unwrap_or_default());
            es.ip_address = Some(e.ip.to_string());
            es.ip_prefix_len = Some(e.prefix as i64);
            if let Some(ip6) = e.ip6 {
                es.global_ipv6_address = Some(ip6.to_string());
                es.global_ipv6_prefix_len = Some(e.prefix6 as i64);
                es.ipv6_gateway = Some(e.gateway6.map(|g| g.to_string()).unwrap_or_default());
            }
            es.mac_address = Some(e.mac.clone());
            if n.is_default_bridge() {
                bridge = Some(e.clone());
            }
        }
        networks.insert(a.network_name.clone(), es);
    }
    let mut ports: bollard_stubs::models::PortMap = HashMap::new();
    for p in r.config.exposed_ports.clone().unwrap_or_default() {
        ports.insert(p, None);
    }
    let mut summary_ports = Vec::new();
    for m in &maps {
        let key = format!("{}/{}", m.container_port, m.proto);
        // dockerd 20.10 lists a port published on every address twice: its IPv4 side and
        // the IPv6 one (`::`), where berthd serves it too.
        let v6 = engine.networks.published_on_v6(m).then_some("::");
        for host_ip in std::iter::once(m.host_ip.to_string()).chain(v6.map(String::from)) {
            ports
                .entry(key.clone())
                .or_insert(None)
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(host_ip.clone()),
                    host_port: Some(m.host_port.to_string()),
                });
            summary_ports.push(PortSummary {
                ip: Some(host_ip),
                private_port: m.container_port,
                public_port: Some(m.host_port),
                typ: Some(if m.proto == "udp" {
                    PortSummaryTypeEnum::UDP
                } else {
                    PortSummaryTypeEnum::TCP
                }),
            });
        }
    }
    for (k, v) in &ports {
        if v.is_none() {
            if let Ok((port, proto)) = berth_engine::networks::ports::parse_port_key(k) {
                summary_ports.push(PortSummary {
                    ip: None,
                    private_port: port,
                    public_port: None,
                    typ: Some(if proto == "udp" {
                        PortSummaryTypeEnum::UDP
                    } else {
                        PortSummaryTypeEnum::TCP
                    }),
                });
            }
        }
    }
    let sandbox_key = if eps.is_empty() {
        String::new()
    } else {
        engine.networks.sandbox_key(&r.id)
    };
    ContainerNet {
        networks,
        ports,
        summary_ports,
        bridge,
        sandbox_key,
    }
}

/// Docker's `NetworkSettings` object for inspect, legacy top-level fields included.
pub(crate) fn network_settings_json(
    engine: &AppState,
    r: &berth_engine::containers::ContainerRecord,
) -> serde_json::Value {
    let n = container_net(engine, r);
    let b = n.bridge.as_ref();
    serde_json::json!({
        "Bridge": "",
        "SandboxID": if n.sandbox_key.is_empty() { String::new() } else { r.id.clone() },
        "SandboxKey": n.sandbox_key,
        "HairpinMode": false,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": n.ports,
        "SecondaryIPAddresses": null,
        "SecondaryIPv6Addresses": null,
        "EndpointID": b.map(|e| e.id.clone()).unwrap_or_default(),
        "Gateway": b.and_then(|e| e.gateway).map(|g| g.to_string()).unwrap_or_default(),
        "GlobalIPv6Address": b.and_then(|e| e.ip6).map(|a| a.to_string()).unwrap_or_default(),
        "GlobalIPv6PrefixLen": b.filter(|e| e.ip6.is_some()).map(|e| e.prefix6).unwrap_or(0),
        "IPAddress": b.map(|e| e.ip.to_string()).unwrap_or_default(),
        "IPPrefixLen": b.map(|e| e.prefix).unwrap_or(0),
        "IPv6Gateway": b.and_then(|e| e.gateway6).map(|g| g.to_string()).unwrap_or_default(),
        "MacAddress": b.map(|e| e.mac.clone()).unwrap_or_default(),
        "Networks": n.networks,
    })
}
