//! NAT, port publishing and isolation between networks, in an nftables table berth owns
//! (`table ip berth`). The whole table is regenerated from the recorded state and replaced
//! in one nft transaction, so the kernel's rules always equal what the state says, even
//! after a crash in the middle of an earlier change. Applied through the `nftables` crate
//! (which drives `nft -j`).
//!
//! Published ports use kernel DNAT for every path, as dockerd with `userland-proxy=false`:
//! - from outside: `prerouting`, for packets to any local address;
//! - from the host itself, 127.0.0.1 included: `output` (127.0.0.1 needs `route_localnet`
//!   on the bridge, set by the executor, and a masquerade to the bridge);
//! - from containers to a published port on a host address (hairpin): `prerouting`, plus
//!   a masquerade so the reply comes back through the host.

use serde_json::{json, Value};

use super::model::NetState;
use crate::{Error, Result};

pub const TABLE: &str = "berth";
/// The ledger's name for `table ip6 berth`.
pub const TABLE6: &str = "ip6 berth";

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn chain(name: &str, typ: Option<(&str, &str, i32)>) -> Value {
    let mut c = json!({"family": "ip", "table": TABLE, "name": name});
    if let Some((t, hook, prio)) = typ {
        c["type"] = t.into();
        c["hook"] = hook.into();
        c["prio"] = prio.into();
        c["policy"] = "accept".into();
    }
    json!({"add": {"chain": c}})
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}

fn prefix(net: &super::ipam::Ipv4Net) -> Value {
    let n = net.network();
    json!({"prefix": {"addr": n.addr.to_string(), "len": n.prefix}})
}

fn ct_status_dnat() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}})
}

/// The full `table ip berth` for `state`, as an nft JSON document that first deletes the
/// previous table (the `add` before it makes the delete valid when there is none).
pub fn ruleset(state: &NetState) -> Value {
    let t = json!({"table": {"family": "ip", "name": TABLE}});
    let mut cmds = vec![
        json!({"add": t.clone()}),
        json!({"delete": t.clone()}),
        json!({"add": t}),
        chain("prerouting", Some(("nat", "prerouting", -100))),
        chain("output", Some(("nat", "output", -100))),
        chain("postrouting", Some(("nat", "postrouting", 100))),
        chain("forward", Some(("filter", "forward", 0))),
        chain("dnat", None),
    ];
    let local = eq(
        json!({"fib": {"result": "type", "flags": ["daddr"]}}),
        json!("local"),
    );
    let jump = json!({"jump": {"target": "dnat"}});
    cmds.push(rule("prerouting", vec![local.clone(), jump.clone()]));
    cmds.push(rule("output", vec![local, jump]));
    for p in &state.ports {
        let mut expr = Vec::new();
        if !p.host_ip.is_unspecified() {
            expr.push(eq(payload("ip", "daddr"), json!(p.host_ip.to_string())));
        }
        expr.push(eq(payload(&p.proto, "dport"), json!(p.host_port)));
        expr.push(json!({"counter": null}));
        expr.push(json!({"dnat": {"addr": p.container_ip.to_string(), "port": p.container_port}}));
        cmds.push(rule("dnat", expr));
    }
    let bridges: Vec<_> = state
        .networks
        .iter()
        .filter(|n| n.is_bridge() && n.subnet.is_some())
        .collect();
    cmds.push(rule(
        "forward",
        vec![
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
            json!({"accept": null}),
        ],
    ));
    // Published ports are reachable from every network, as through the host in Docker.
    cmds.push(rule(
        "forward",
        vec![ct_status_dnat(), json!({"accept": null})],
    ));
    for n in &bridges {
        let subnet = n.subnet.expect("filtered");
        let br = json!(n.bridge);
        if n.internal {
            cmds.push(rule(
                "forward",
                vec![
                    eq(meta("iifname"), br.clone()),
                    ne(meta("oifname"), br.clone()),
                    json!({"drop": null}),
                ],
            ));
            cmds.push(rule(
                "forward",
                vec![
                    eq(meta("oifname"), br.clone()),
                    ne(meta("iifname"), br.clone()),
                    json!({"drop": null}),
                ],
            ));
        } else {
            cmds.push(rule(
                "postrouting",
                vec![
                    eq(payload("ip", "saddr"), prefix(&subnet)),
                    ne(meta("oifname"), br.clone()),
                    json!({"masquerade": null}),
                ],
            ));
        }
        cmds.push(rule(
            "postrouting",
            vec![
                eq(meta("oifname"), br.clone()),
                eq(
                    payload("ip", "saddr"),
                    json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
                ),
                json!({"masquerade": null}),
            ],
        ));
        cmds.push(rule(
            "postrouting",
            vec![
                eq(meta("oifname"), br.clone()),
                eq(payload("ip", "saddr"), prefix(&subnet)),
                ct_status_dnat(),
                json!({"masquerade": null}),
            ],
        ));
        // Isolation between user networks: nothing is routed from one bridge to another.
        for other in &bridges {
            if other.id != n.id {
                cmds.push(rule(
                    "forward",
                    vec![
                        eq(meta("iifname"), br.clone()),
                        eq(meta("oifname"), json!(other.bridge)),
                        json!({"drop": null}),
                    ],
                ));
            }
        }
    }
    json!({"nftables": cmds})
}

/// `table ip6 berth`, only while some network has IPv6: the isolation of `--internal`
/// and of different networks, as the IPv4 table's forward rules (berthd turns IPv6
/// forwarding on for them). No IPv6 NAT or masquerade: dockerd 20.10 has none without
/// its experimental ip6tables, and published ports reach IPv6 through berthd's proxy.
/// `None` when no network has IPv6: the caller then deletes the table.
pub fn ruleset6(state: &NetState) -> Option<Value> {
    let nets: Vec<_> = state
        .networks
        .iter()
        .filter(|n| n.is_bridge() && n.ipv6().is_some())
        .collect();
    if nets.is_empty() {
        return None;
    }
    let t = json!({"table": {"family": "ip6", "name": TABLE}});
    let rule6 = |expr: Vec<Value>| json!({"add": {"rule": {"family": "ip6", "table": TABLE, "chain": "forward", "expr": expr}}});
    let mut cmds = vec![
        json!({"add": t.clone()}),
        json!({"delete": t.clone()}),
        json!({"add": t}),
        json!({"add": {"chain": {"family": "ip6", "table": TABLE, "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
    ];
    for n in &nets {
        let br = json!(n.bridge);
        if n.internal {
            cmds.push(rule6(vec![
                eq(meta("iifname"), br.clone()),
                ne(meta("oifname"), br.clone()),
                json!({"drop": null}),
            ]));
            cmds.push(rule6(vec![
                eq(meta("oifname"), br.clone()),
                ne(meta("iifname"), br.clone()),
                json!({"drop": null}),
            ]));
        }
        for other in &nets {
            if other.id != n.id {
                cmds.push(rule6(vec![
                    eq(meta("iifname"), br.clone()),
                    eq(meta("oifname"), json!(other.bridge)),
                    json!({"drop": null}),
                ]));
            }
        }
    }
    Some(json!({"nftables": cmds}))
}

/// Remove `table ip6 berth` (blocking). Absent is fine.
pub fn delete_table6() -> Result<()> {
    let t = json!({"table": {"family": "ip6", "name": TABLE}});
    apply(&json!({"nftables": [{"add": t.clone()}, {"delete": t}]}))
}

/// Replace berth's table with `doc` (blocking: runs `nft`).
pub fn apply(doc: &Value) -> Result<()> {
    let nft: nftables::schema::Nftables = serde_json::from_value(doc.clone())
        .map_err(|e| Error::internal(format!("nftables ruleset: {e}")))?;
    nftables::helper::apply_ruleset(&nft)
        .map_err(|e| Error::internal(format!("applying nftables rules (is nft installed?): {e}")))
}

/// Remove berth's table (blocking). Absent is fine.
pub fn delete_table() -> Result<()> {
    let t = json!({"table": {"family": "ip", "name": TABLE}});
    apply(&json!({"nftables": [{"add": t.clone()}, {"delete": t}]}))
}
