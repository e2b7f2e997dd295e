//! An authorization plugin for berthd (`berth:authz@0.1.0`, Docker's AuthZ protocol
//! as a component). berthd calls `authz_req` before every API request and
//! `authz_res` after it; `Decision::Deny(msg)` makes the client see
//! "authorization denied by plugin NAME: msg" with status 403.
//!
//! The template allows everything except one example rule (no `--privileged`
//! containers). Put your policy in `policy` below.

wit_bindgen::generate!({
    path: "wit",
    world: "authz-plugin",
});

use std::cell::RefCell;

use exports::berth::authz::authz::{Decision, Guest, Request, Response};

thread_local! {
    /// `[config]` from authz.toml, with `berthd --authz-opt NAME.KEY=VALUE` applied.
    static CONFIG: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

fn config(key: &str) -> Option<String> {
    CONFIG.with(|c| {
        c.borrow()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    })
}

/// The request's path without the API version prefix and the query.
fn path(uri: &str) -> &str {
    let p = uri.split('?').next().unwrap_or(uri);
    match p.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            rest.find('/').map_or(p, |i| &rest[i..])
        }
        _ => p,
    }
}

/// The policy: Ok allows the request, Err(message) refuses it.
fn policy(req: &Request) -> Result<(), String> {
    // Example rule: refuse privileged containers (`docker run --privileged`).
    if req.request_method == "POST"
        && path(&req.request_uri) == "/containers/create"
        && config("deny-privileged").as_deref() != Some("false")
    {
        // The body is withheld only when it is over the host's 1 MiB limit; a
        // create the policy cannot read is refused rather than waved through.
        let Some(body) = req.request_body.as_deref() else {
            return Err("container create body too large to check".into());
        };
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("unreadable create body: {e}"))?;
        if v.pointer("/HostConfig/Privileged") == Some(&serde_json::Value::Bool(true)) {
            return Err("privileged containers are not allowed".into());
        }
    }
    Ok(())
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }

    fn authz_req(req: Request) -> Decision {
        match policy(&req) {
            Ok(()) => Decision::Allow,
            Err(msg) => Decision::Deny(msg),
        }
    }

    /// Responses pass unchanged; return `Decision::Deny` to withhold one.
    fn authz_res(_req: Request, _res: Response) -> Decision {
        Decision::Allow
    }
}

export!(Plugin);
