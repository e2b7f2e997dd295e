//! A deliberately hostile authorization plugin (test fixture): it traps, loops
//! forever or denies on requests whose URI contains `when`, and allows the rest.

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../wit/authz-0.1.0",
    world: "authz-plugin",
});

use exports::berth::authz::authz::{Decision, Guest, Request, Response};

thread_local! {
    static CFG: RefCell<(String, String)> = RefCell::new(("allow".into(), String::new()));
}

fn misbehave(req: &Request) -> Decision {
    let (mode, when) = CFG.with(|c| c.borrow().clone());
    if !req.request_uri.contains(&when) {
        return Decision::Allow;
    }
    match mode.as_str() {
        "trap" => panic!("hostile-authz: trapping on {}", req.request_uri),
        "loop" => {
            let mut x = 1u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "deny" => Decision::Deny(format!("hostile-authz denies {}", req.request_uri)),
        _ => Decision::Allow,
    }
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        CFG.with(|c| {
            let mut c = c.borrow_mut();
            for (k, v) in config {
                match k.as_str() {
                    "mode" => c.0 = v,
                    "when" => c.1 = v,
                    _ => return Err(format!("unknown config key {k}")),
                }
            }
            Ok(())
        })
    }

    fn authz_req(req: Request) -> Decision {
        misbehave(&req)
    }

    fn authz_res(_req: Request, _res: Response) -> Decision {
        Decision::Allow
    }
}

export!(Plugin);
