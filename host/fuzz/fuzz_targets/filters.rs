#![no_main]
//! The `filters` query parameter of the list and prune endpoints, and the label rules
//! applied with it.

use std::collections::HashMap;

use berth_filters::Filters;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(f) = Filters::parse(Some(text)) else {
        return;
    };
    let labels: HashMap<String, String> = [("a", "b"), ("com.example", ""), ("é", "ü")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for k in f.keys().map(str::to_string).collect::<Vec<_>>() {
        let _ = f.get(&k);
        assert!(f.contains_key(&k));
        let _ = f.match_labels(&k, &labels);
    }
    let _ = f.validate(&["label", "dangling", "name"]);
    let _ = f.prune_excludes(&labels);
});
