//! Keys dockerd always sends, with its zero value, that the typed response models leave out
//! when unset (bollard-stubs skips `None`). Clients index some of them directly
//! (`HostConfig.Isolation`, `NetworkSettings.MacAddress`, `Image.ContainerConfig`), so every
//! response of these kinds gets the missing ones filled in. The lists come from responses
//! recorded from dockerd 20.10 (host/daemon/tests/fixtures/dockerd-20.10), which
//! `tests/inspect_keys.rs` compares against.

use serde_json::{json, Value};

/// Insert `value` at the dotted `path` where it is missing; parents that are missing or not
/// objects are left alone (an absent `NetworkSettings` stays absent).
fn fill(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let mut parts = path.split('.').peekable();
    while let Some(key) = parts.next() {
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if parts.peek().is_none() {
            obj.entry(key.to_string()).or_insert(value);
            return;
        }
        match obj.get_mut(key) {
            Some(next) => cur = next,
            None => return,
        }
    }
}

fn fill_all(v: &mut Value, list: &[(&str, Value)]) {
    for (path, value) in list {
        fill(v, path, value.clone());
    }
}

/// `GET /containers/{id}/json`. `runtime` is what `HostConfig.Runtime` shows.
pub fn container(v: &mut Value, runtime: &str) {
    fill_all(
        v,
        &[
            ("ExecIDs", Value::Null),
            ("Config.OnBuild", Value::Null),
            ("Config.Volumes", Value::Null),
            ("HostConfig.Binds", Value::Null),
            ("HostConfig.CapAdd", Value::Null),
            ("HostConfig.CapDrop", Value::Null),
            ("HostConfig.DeviceCgroupRules", Value::Null),
            ("HostConfig.DeviceRequests", Value::Null),
            ("HostConfig.ExtraHosts", Value::Null),
            ("HostConfig.GroupAdd", Value::Null),
            ("HostConfig.Isolation", json!("")),
            ("HostConfig.KernelMemory", json!(0)),
            ("HostConfig.KernelMemoryTCP", json!(0)),
            ("HostConfig.Links", Value::Null),
            ("HostConfig.MaskedPaths", Value::Null),
            ("HostConfig.ReadonlyPaths", Value::Null),
            ("HostConfig.Runtime", json!(runtime)),
            ("HostConfig.SecurityOpt", Value::Null),
            ("HostConfig.VolumesFrom", Value::Null),
            ("NetworkSettings.Bridge", json!("")),
            ("NetworkSettings.SandboxID", json!("")),
            ("NetworkSettings.HairpinMode", json!(false)),
            ("NetworkSettings.LinkLocalIPv6Address", json!("")),
            ("NetworkSettings.LinkLocalIPv6PrefixLen", json!(0)),
            ("NetworkSettings.Ports", json!({})),
            ("NetworkSettings.SandboxKey", json!("")),
            ("NetworkSettings.SecondaryIPAddresses", Value::Null),
            ("NetworkSettings.SecondaryIPv6Addresses", Value::Null),
            ("NetworkSettings.EndpointID", json!("")),
            ("NetworkSettings.Gateway", json!("")),
            ("NetworkSettings.GlobalIPv6Address", json!("")),
            ("NetworkSettings.GlobalIPv6PrefixLen", json!(0)),
            ("NetworkSettings.IPAddress", json!("")),
            ("NetworkSettings.IPPrefixLen", json!(0)),
            ("NetworkSettings.IPv6Gateway", json!("")),
            ("NetworkSettings.MacAddress", json!("")),
        ],
    );
}

/// `GET /images/{name}/json`; `VirtualSize` until API 1.44 removed it.
pub fn image(v: &mut Value, api_minor: u32) {
    fill_all(
        v,
        &[
            ("Container", json!("")),
            (
                "ContainerConfig",
                json!({
                    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false,
                    "AttachStdout": false, "AttachStderr": false, "Tty": false,
                    "OpenStdin": false, "StdinOnce": false, "Env": null, "Cmd": null,
                    "Image": "", "Volumes": null, "WorkingDir": "", "Entrypoint": null,
                    "OnBuild": null, "Labels": null
                }),
            ),
        ],
    );
    if api_minor < 44 {
        let size = v.get("Size").cloned().unwrap_or(json!(0));
        fill(v, "VirtualSize", size);
    }
}

/// One entry of `GET /images/json` or of `system/df`'s `Images`.
pub fn image_summary(v: &mut Value, api_minor: u32) {
    if api_minor < 44 {
        let size = v.get("Size").cloned().unwrap_or(json!(0));
        fill(v, "VirtualSize", size);
    }
}

/// `GET /system/df`.
pub fn system_df(v: &mut Value, api_minor: u32) {
    fill(v, "BuilderSize", json!(0));
    if let Some(images) = v.get_mut("Images").and_then(Value::as_array_mut) {
        for i in images {
            image_summary(i, api_minor);
        }
    }
}

/// `GET /info`.
pub fn info(v: &mut Value) {
    let commit = json!({ "ID": "", "Expected": "" });
    fill_all(
        v,
        &[
            ("BridgeNfIptables", json!(false)),
            ("BridgeNfIp6tables", json!(false)),
            ("KernelMemory", json!(false)),
            ("KernelMemoryTCP", json!(false)),
            ("HttpProxy", json!("")),
            ("HttpsProxy", json!("")),
            ("NoProxy", json!("")),
            ("GenericResources", Value::Null),
            ("ContainerdCommit", commit.clone()),
            ("RuncCommit", commit.clone()),
            ("InitCommit", commit),
            ("Plugins.Authorization", Value::Null),
            (
                "RegistryConfig",
                json!({
                    "AllowNondistributableArtifactsCIDRs": [],
                    "AllowNondistributableArtifactsHostnames": [],
                    "InsecureRegistryCIDRs": ["127.0.0.0/8"],
                    "IndexConfigs": {
                        "docker.io": {
                            "Name": "docker.io", "Mirrors": [], "Secure": true, "Official": true
                        }
                    },
                    "Mirrors": []
                }),
            ),
            ("Swarm.Error", json!("")),
            ("Swarm.RemoteManagers", Value::Null),
        ],
    );
}

/// `GET /exec/{id}/json`: `ExitCode` is null until the process has exited.
pub fn exec(v: &mut Value) {
    fill(v, "ExitCode", Value::Null);
}

/// `POST /containers/{id}/wait`: `Error` is null when the run ended without one.
pub fn wait(v: &mut Value) {
    fill(v, "Error", Value::Null);
}

/// `GET /containers/{id}/stats`: the cgroup v1 blkio lists and per-CPU usage.
pub fn stats(v: &mut Value) {
    for key in [
        "io_service_bytes_recursive",
        "io_serviced_recursive",
        "io_queue_recursive",
        "io_service_time_recursive",
        "io_wait_time_recursive",
        "io_merged_recursive",
        "io_time_recursive",
        "sectors_recursive",
    ] {
        fill(v, &format!("blkio_stats.{key}"), Value::Null);
    }
    fill(v, "cpu_stats.cpu_usage.percpu_usage", Value::Null);
    fill(v, "precpu_stats.cpu_usage.percpu_usage", Value::Null);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_only_what_is_missing_under_existing_parents() {
        let mut v = json!({"HostConfig": {"CapAdd": ["NET_ADMIN"]}});
        container(&mut v, "runc");
        assert_eq!(v["HostConfig"]["CapAdd"], json!(["NET_ADMIN"]));
        assert_eq!(v["HostConfig"]["Isolation"], "");
        assert_eq!(v["HostConfig"]["Runtime"], "runc");
        assert!(v.get("NetworkSettings").is_none());
        assert!(v.as_object().unwrap().contains_key("ExecIDs"));
    }
}
