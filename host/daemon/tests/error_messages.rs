//! Error answers as dockerd gives them. The bad requests in
//! `tests/fixtures/dockerd-20.10/errors.json` were sent to dockerd 20.10 (API 1.41) by
//! `record-errors.py` next to it, with the same objects as below; each is replayed against
//! berthd and its status and message must be dockerd's, apart from the deviations listed
//! here, each with its reason. A listed deviation that no longer differs fails too, so the
//! list stays true.

mod common;

use common::TestDaemon;

/// Where berthd answers differently on purpose. Most are where dockerd 20.10 still gave
/// a 500 or older wording that later dockerd versions (whose API versions berthd also
/// speaks) changed.
const DEVIATIONS: &[(&str, &str)] = &[
    (
        "create bad json",
        "dockerd 20.10 answers 500 with Go's decoder message; newer dockerd and berthd answer 400 (it is the client's input), berthd with serde's position",
    ),
    (
        "unpause not paused",
        "409 as in newer dockerd (a conflict with the container's state); 20.10 answered 500",
    ),
    (
        "remove running",
        "newer dockerd's wording (cannot remove container \"/name\": container is running: ...)",
    ),
    (
        "image inspect missing",
        "newer dockerd's message, without 20.10's doubled \"no such image: nosuch:\" prefix",
    ),
    (
        "image tag uppercase",
        "400 and the reference parser's newer message naming the normalised repository; 20.10 answered 500",
    ),
    (
        "images bad filter",
        "newer dockerd's lower-case \"invalid filter\"",
    ),
    (
        "containers filters not json",
        "400 (the client's input) with serde's message; 20.10 answered 500 with Go's decoder message",
    ),
    (
        "network create bad subnet",
        "400 (the client's input) where 20.10 answered 500; same message",
    ),
];

/// `<id>` for every 64- or 12-digit hex word, as the recorder writes them.
fn mask_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let hex = word
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex && (word.len() == 64 || word.len() == 12) {
            out.push_str("<id>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[test]
fn bad_requests_get_dockerds_status_and_message() {
    // The network requests need the default bridge; it lives in the test's own netns.
    let d = TestDaemon::start_in_netns(&[]);
    common::images::import_busybox(&d, "bb");
    d.docker_ok(&["create", "--name", "created1", "bb", "true"]);
    d.run_sleeper("running1", &["-v", "vol1:/v"]);

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dockerd-20.10");
    let recorded: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(format!("{fixtures}/errors.json")).unwrap())
            .unwrap();
    assert!(recorded.len() >= 40, "{} requests recorded", recorded.len());
    let mut differ = Vec::new();
    let mut stale = Vec::new();
    for r in &recorded {
        let name = r["name"].as_str().unwrap();
        let path = format!("/v1.41{}", r["path"].as_str().unwrap());
        let (status, body) = d.api(r["method"].as_str().unwrap(), &path, r["body"].as_str());
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string());
        let ours = (u64::from(status), mask_ids(&message));
        let theirs = (
            r["status"].as_u64().unwrap(),
            r["message"].as_str().unwrap().to_string(),
        );
        let accepted = DEVIATIONS.iter().any(|(n, _)| *n == name);
        match (ours == theirs, accepted) {
            (false, false) => differ.push(format!(
                "{name}: {} {}\n  dockerd: {} {}\n  berthd:  {} {}",
                r["method"], path, theirs.0, theirs.1, ours.0, ours.1
            )),
            (true, true) => stale.push(name.to_string()),
            _ => {}
        }
    }
    assert!(
        differ.is_empty(),
        "answers unlike dockerd's:\n{}",
        differ.join("\n")
    );
    assert!(
        stale.is_empty(),
        "listed as deviations but now answered as dockerd does: {stale:?}"
    );
    d.docker_ok(&["rm", "-f", "created1", "running1"]);
}
