//! Small filesystem helpers shared by the stores.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` so that a crash leaves either the old or the new content:
/// temp file in the same dir, fsync, rename, fsync the dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // A unique temp name: two saves of one file may run at once (and the prefix lets
    // clean_temp_files find what a crash left behind).
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("f");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64
}

/// Remove leftovers of interrupted [`write_atomic`] calls in `dir`.
pub fn clean_temp_files(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// RFC 3339 UTC with nanoseconds, as Docker prints times.
pub fn rfc3339_nanos(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

pub fn now_rfc3339() -> String {
    rfc3339_nanos(std::time::SystemTime::now())
}

/// Parse what [`rfc3339_nanos`] writes (UTC, `Z`) back to unix nanoseconds.
pub fn parse_rfc3339_utc(s: &str) -> Option<i128> {
    s.strip_suffix('Z')?;
    parse_rfc3339(s)
}

/// RFC 3339 (`Z` or `±HH:MM` offsets, optional fraction) to unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let (body, offset_secs) = match s.strip_suffix('Z') {
        Some(b) => (b, 0i64),
        None => {
            let pos = s.rfind(['+', '-']).filter(|p| *p > 10)?;
            let (b, tz) = s.split_at(pos);
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let (oh, om) = tz[1..].split_once(':')?;
            (
                b,
                sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
            )
        }
    };
    let (date, time) = body.split_once('T')?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let dd: i64 = d.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let se: i64 = t.next()?.parse().ok()?;
    // Client input: out-of-range fields are malformed, and must not overflow below.
    let valid = (0..=9999).contains(&y)
        && (1..=12).contains(&m)
        && (1..=31).contains(&dd)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0..=60).contains(&se)
        && offset_secs.abs() < 86400
        && t.next().is_none();
    if !valid {
        return None;
    }
    let mut nanos: i128 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += (c.to_digit(10)? as i128) * 10i128.pow(8 - i as u32);
    }
    let days = days_from_civil(y, m, dd);
    Some(((days * 86400 + h * 3600 + mi * 60 + se - offset_secs) as i128) * 1_000_000_000 + nanos)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Howard Hinnant's civil_from_days.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A point in time as Docker's `since`/`until` arguments give it: a unix timestamp with an
/// optional fraction (`1700000000.5`), RFC 3339 (with or without a zone, which then means
/// UTC, or a bare date), or a Go duration counted back from `now` (`10m`, `24h`). Unix
/// nanoseconds; `None` when malformed.
pub fn parse_docker_time(s: &str, now_nanos: i128) -> Option<i128> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let int_digits = int.strip_prefix('-').unwrap_or(int);
    if digits(int_digits) && (frac.is_empty() || digits(frac)) {
        let secs: i64 = int.parse().ok()?;
        let mut nanos: i128 = 0;
        for (i, c) in frac.bytes().take(9).enumerate() {
            nanos += ((c - b'0') as i128) * 10i128.pow(8 - i as u32);
        }
        let sign = if int.starts_with('-') { -1 } else { 1 };
        return Some(secs as i128 * 1_000_000_000 + sign * nanos);
    }
    if let Some(t) = parse_rfc3339(s) {
        return Some(t);
    }
    if s.contains('T') {
        if let Some(t) = parse_rfc3339(&format!("{s}Z")) {
            return Some(t);
        }
    } else if let Some(t) = parse_rfc3339(&format!("{s}T00:00:00Z")) {
        return Some(t);
    }
    parse_go_duration(s).map(|d| now_nanos - d as i128)
}

/// A Go `time.Duration` string (`1m30s`, `500ms`, `1.5h`) in nanoseconds, as Docker's
/// options and Dockerfile flags write durations. `None` when malformed or negative.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * nanos_per;
        rest = &rest[unit_len..];
    }
    (total <= i64::MAX as f64).then_some(total as i64)
}

/// A new 64-hex-digit id (containers, exec instances, anonymous volumes), as Docker's.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Bytes of the regular files under `p` (not following symlinks into other trees).
pub fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        total += m.len();
                    }
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_roundtrip() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        let s = rfc3339_nanos(t);
        assert_eq!(s, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(parse_rfc3339_utc(&s), Some(1_700_000_000_123_456_789));
        assert_eq!(
            parse_rfc3339_utc("0001-01-01T00:00:00Z").map(|n| n < 0),
            Some(true)
        );
    }

    #[test]
    fn atomic_write_replaces() {
        let d = std::env::temp_dir().join(format!("berth-fsutil-{}", std::process::id()));
        let p = d.join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        std::fs::write(d.join(".x.json.tmp-1"), b"junk").unwrap();
        clean_temp_files(&d);
        assert!(!d.join(".x.json.tmp-1").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("-1s"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn docker_times() {
        let now = 2_000_000_000i128 * 1_000_000_000;
        assert_eq!(
            parse_docker_time("1700000000.5", now),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(
            parse_docker_time("2023-11-14T22:13:20Z", now),
            Some(1_700_000_000 * 1_000_000_000)
        );
        assert_eq!(
            parse_docker_time("2023-11-14T22:13:20", now),
            parse_docker_time("2023-11-14T22:13:20Z", now)
        );
        assert_eq!(
            parse_docker_time("2023-11-14", now),
            Some(1_699_920_000 * 1_000_000_000)
        );
        assert_eq!(
            parse_docker_time("10m", now),
            Some(now - 600 * 1_000_000_000)
        );
        // Client input never panics: multibyte text, absurd years.
        for bad in [
            "é2023-11-14T22:13:20Z",
            "2023-11-14T22:1é:20Z",
            "99999999999999-01-01T00:00:00Z",
            "",
            "x",
        ] {
            assert_eq!(parse_docker_time(bad, now), None, "{bad}");
        }
    }
}
