//! Re-validation of everything a plugin hands back, and host-side caps.

/// Largest log line accepted from or passed to a plugin.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Largest `partial-meta.id`.
pub const MAX_PARTIAL_ID: usize = 256;
/// Most volumes a `list` reply may carry.
pub const MAX_VOLUMES: usize = 65_536;
/// Most `status` pairs per volume, and the size of each key/value.
pub const MAX_STATUS_PAIRS: usize = 64;
pub const MAX_STATUS_BYTES: usize = 4096;
/// Longest relative path a volume plugin may return.
pub const MAX_PATH_BYTES: usize = 4096;

/// Cut `s` to at most `max` bytes on a char boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Docker object names / IDs as the host passes them to plugins.
pub fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 255 {
        return Err(format!("{what} must be 1..=255 bytes"));
    }
    if s.bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_control())
        || s == "."
        || s == ".."
    {
        return Err(format!("{what} {s:?} contains forbidden characters"));
    }
    Ok(())
}

/// A plugin-relative path: non-empty, relative, no `.`/`..` components, no NUL.
pub fn check_relative_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_PATH_BYTES {
        return Err(format!(
            "path length {} not in 1..={MAX_PATH_BYTES}",
            p.len()
        ));
    }
    if p.as_bytes().contains(&0) {
        return Err("path contains NUL".into());
    }
    if p.starts_with('/') {
        return Err(format!(
            "absolute path {p:?} (must be relative to the plugin root)"
        ));
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!("path {p:?} has '.' or '..' components"));
    }
    Ok(())
}

pub fn check_options(opts: &[(String, String)]) -> Result<(), String> {
    if opts.len() > MAX_STATUS_PAIRS {
        return Err(format!(
            "{} option pairs (max {MAX_STATUS_PAIRS})",
            opts.len()
        ));
    }
    if opts
        .iter()
        .any(|(k, v)| k.len() > MAX_STATUS_BYTES || v.len() > MAX_STATUS_BYTES)
    {
        return Err(format!(
            "option key or value longer than {MAX_STATUS_BYTES} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert!(check_relative_path("volumes/a/_data").is_ok());
        for bad in ["", "/etc", "../x", "a/../../x", "a/./b", "a\0b"] {
            assert!(check_relative_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_relative_path(&"a/".repeat(5000)).is_err());
    }

    #[test]
    fn truncation_keeps_utf8() {
        let s = truncate("ééééé".to_string(), 3);
        assert_eq!(s, "é…");
    }
}
