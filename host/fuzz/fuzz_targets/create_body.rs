#![no_main]
//! `POST /containers/create`: the body's JSON decoded into bollard's model as the API
//! does, then every create-time check the engine applies before touching anything.

use berth_container_create::{body, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The name comes from the query string: any text.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = validate::validate_name(text);
        let _ = validate::validate_cgroup_parent(text);
        if let Some(set) = validate::parse_cpuset(text) {
            assert!(validate::cpuset_within(&set, &set));
        }
    }
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(decoded) = body::decode(raw) else {
        return;
    };
    let hc = decoded.body.host_config.unwrap_or_default();
    let _ = validate::validate_host_config(&hc);
    let _ = validate::validate_run_options(&hc);
    let _ = validate::host_namespaces(&hc);
});
