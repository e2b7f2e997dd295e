//! URIs: the API path without its version prefix, and forcing a label into the
//! `filters` query parameter of list and prune requests.

use serde_json::{Map, Value};

/// `/v1.50/containers/abc/json?x=1` → `["containers", "abc", "json"]`.
pub fn segments(uri: &str) -> Vec<String> {
    let path = uri.split(['?', '#']).next().unwrap_or("");
    let mut segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    if segs.first().is_some_and(|s| {
        s.len() > 1 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit() || b == b'.')
    }) {
        segs.remove(0);
    }
    segs
}

/// One query parameter's decoded value.
pub fn query_param(uri: &str, name: &str) -> Option<String> {
    let q = uri.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// The URI with `label=<label>` added to its `filters` (ANDed with the client's own
/// label filters, as Docker ANDs label filters).
pub fn force_label_filter(uri: &str, label: &str) -> Result<String, String> {
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, q),
        None => (uri, ""),
    };
    let mut filters: Map<String, Value> = match query_param(uri, "filters") {
        Some(f) if !f.is_empty() => match serde_json::from_str(&f) {
            Ok(Value::Object(m)) => m,
            _ => return Err("filters is not a JSON object".into()),
        },
        _ => Map::new(),
    };
    let entry = filters
        .entry("label")
        .or_insert_with(|| Value::Object(Map::new()));
    match entry {
        Value::Object(m) => {
            m.insert(label.to_string(), Value::Bool(true));
        }
        Value::Array(a) => a.push(Value::String(label.to_string())),
        _ => return Err("filters.label is neither an object nor a list".into()),
    }
    let encoded = percent_encode(&Value::Object(filters).to_string());
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| percent_decode(kv.split('=').next().unwrap_or("")) != "filters")
        .map(str::to_string)
        .collect();
    parts.push(format!("filters={encoded}"));
    Ok(format!("{path}?{}", parts.join("&")))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
