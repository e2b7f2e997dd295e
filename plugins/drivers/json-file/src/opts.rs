//! `--log-opt` parsing with Docker's json-file rules and messages.

use crate::exports::berth::driver::log_driver::{DriverError, Options};

pub struct Opts {
    /// Bytes; 0 = unlimited.
    pub max_size: u64,
    pub max_file: u32,
    labels: Vec<String>,
}

const KNOWN: &[&str] = &["max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex", "tag"];

/// Docker's `units.FromHumanSize`: decimal multipliers, optional `b`/`B` suffix.
pub fn from_human_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t.strip_suffix(['b', 'B']).unwrap_or(t);
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1e3),
        'm' | 'M' => (&t[..t.len() - 1], 1e6),
        'g' | 'G' => (&t[..t.len() - 1], 1e9),
        't' | 'T' => (&t[..t.len() - 1], 1e12),
        'p' | 'P' => (&t[..t.len() - 1], 1e15),
        _ => (t, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * mult) as u64)
}

impl Opts {
    pub fn parse(opts: &Options) -> Result<Opts, DriverError> {
        let mut o = Opts { max_size: 0, max_file: 1, labels: Vec::new() };
        for (k, v) in opts {
            if !KNOWN.contains(&k.as_str()) {
                return Err(DriverError::Invalid(format!("unknown log opt '{k}' for json-file log driver")));
            }
            match k.as_str() {
                "max-size" if v != "-1" => {
                    o.max_size = from_human_size(v)
                        .filter(|&n| n > 0)
                        .ok_or_else(|| DriverError::Invalid(format!("invalid max-size {v:?}: must be a positive size")))?;
                }
                "max-file" => {
                    o.max_file = v
                        .parse::<u32>()
                        .ok()
                        .filter(|&n| (1..=1000).contains(&n))
                        .ok_or_else(|| DriverError::Invalid("max-file cannot be less than 1".into()))?;
                }
                "compress" if v != "false" => {
                    return Err(DriverError::Invalid("compress is not supported by this json-file driver".into()));
                }
                "labels" => o.labels = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
                _ => {}
            }
        }
        Ok(o)
    }

    /// `"attrs":{"label":"value",...},` for the labels selected by `--log-opt labels=`.
    pub fn attrs(&self, labels: &Options) -> Vec<u8> {
        let picked: Vec<_> = labels.iter().filter(|(k, _)| self.labels.contains(k)).collect();
        if picked.is_empty() {
            return Vec::new();
        }
        let mut out = b"\"attrs\":{".to_vec();
        for (i, (k, v)) in picked.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            crate::jsonl::push_json_str(&mut out, k.as_bytes(), false);
            out.push(b':');
            crate::jsonl::push_json_str(&mut out, v.as_bytes(), false);
        }
        out.extend_from_slice(b"},");
        out
    }
}
