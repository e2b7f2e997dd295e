//! Docker image references: parsing and normalization the way `distribution/reference`
//! does it (`bb` → `docker.io/library/bb:latest`), and the "familiar" form clients see.

use std::fmt;

use crate::{Error, Result};

pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
pub const DEFAULT_TAG: &str = "latest";
const NAME_MAX: usize = 255;

/// A normalized reference: full domain and path, plus a tag and/or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn invalid(detail: &str) -> Error {
    if detail.is_empty() {
        Error::invalid("invalid reference format")
    } else {
        Error::invalid(format!("invalid reference format: {detail}"))
    }
}

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        if b[i] == b'-' {
            while i < b.len() && b[i] == b'-' {
                i += 1;
            }
        } else if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'_' {
            i += 1;
            if i < b.len() && b[i] == b'_' {
                i += 1;
            }
        } else {
            return false;
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_domain(d: &str) -> bool {
    // host[:port], host = labels of [a-zA-Z0-9-] separated by dots, or [ipv6].
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p))
                if !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() || c == ':') =>
            {
                (
                    None,
                    p.strip_prefix(':').map(Some).unwrap_or(if p.is_empty() {
                        None
                    } else {
                        Some("x")
                    }),
                )
            }
            _ => return false,
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    match host {
        None => true,
        Some(h) => {
            !h.is_empty()
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        }
    }
}

pub fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .map(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .unwrap_or(false)
}

pub fn is_full_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

impl Reference {
    /// Parse and normalize (`ParseNormalizedNamed`). No default tag is added.
    pub fn parse(s: &str) -> Result<Reference> {
        if s.is_empty() {
            return Err(invalid(""));
        }
        if is_full_hex_id(s) {
            return Err(invalid("cannot specify 64-byte hexadecimal strings"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !is_digest(d) {
                    return Err(invalid(""));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // The tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(t) = &tag {
            if !is_valid_tag(t) {
                return Err(invalid(""));
            }
        }
        if name.is_empty() {
            return Err(invalid(""));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        let domain = if domain == LEGACY_DOMAIN {
            DEFAULT_DOMAIN.to_string()
        } else {
            domain
        };
        if !is_domain(&domain) {
            return Err(invalid(""));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path
        };
        if path.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid(&format!(
                "repository name ({path}) must be lowercase"
            )));
        }
        if !path.split('/').all(is_path_component) {
            return Err(invalid(""));
        }
        if domain.len() + 1 + path.len() > NAME_MAX {
            return Err(invalid(
                "repository name must not be more than 255 characters",
            ));
        }
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// Parse and add `:latest` when there is neither tag nor digest (`TagNameOnly`).
    pub fn parse_tagged(s: &str) -> Result<Reference> {
        let mut r = Self::parse(s)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.into());
        }
        Ok(r)
    }

    /// `docker.io/library/bb`
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `bb`, `user/app`, `127.0.0.1:5000/bb`
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix(OFFICIAL_PREFIX)
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.name()
        }
    }

    /// `bb:latest`, `bb@sha256:…` (what `RepoTags`/`RepoDigests` and messages show).
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The same repository with only a tag.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.into()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository with only a digest.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest.into()),
            ..self.clone()
        }
    }
}

/// Full form, `docker.io/library/bb:latest`: the key the store persists.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Registries Docker talks to over plain HTTP without configuration: loopback ones.
pub fn is_insecure_loopback(domain: &str) -> bool {
    let host = if let Some(rest) = domain.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        domain.rsplit_once(':').map(|(h, _)| h).unwrap_or(domain)
    };
    if host == "localhost" {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse_tagged(s).unwrap().to_string()
    }

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(norm("bb"), "docker.io/library/bb:latest");
        assert_eq!(norm("bb:1.0"), "docker.io/library/bb:1.0");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("index.docker.io/library/bb:2"),
            "docker.io/library/bb:2"
        );
        assert_eq!(norm("127.0.0.1:5000/bb:1"), "127.0.0.1:5000/bb:1");
        assert_eq!(norm("localhost/a/b"), "localhost/a/b:latest");
        assert_eq!(norm("localhost:5000/a"), "localhost:5000/a:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse_tagged(&format!("bb@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.familiar(), format!("bb@{d}"));
        let r = Reference::parse("127.0.0.1:5000/x/y:t").unwrap();
        assert_eq!(r.familiar(), "127.0.0.1:5000/x/y:t");
        assert_eq!(Reference::parse("foo/bar").unwrap().familiar(), "foo/bar");
        assert_eq!(
            Reference::parse("a__b.c-d--e").unwrap().path,
            "library/a__b.c-d--e"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            ":",
            "bb:",
            "Bb",
            "bb:-x",
            "bb::1",
            "a/",
            "/a",
            "a//b",
            "a..b",
            "a-",
            "-a",
            "bb@sha256:abc",
            "bb@md5:x",
            "bb:t@",
            "a b",
            "a___b",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}");
            assert!(
                e.to_string().starts_with("invalid reference format"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            Reference::parse("Upper").unwrap_err().to_string(),
            "invalid reference format: repository name (library/Upper) must be lowercase"
        );
        assert!(Reference::parse(&"a".repeat(64)).is_err());
        assert!(Reference::parse(&format!("bb:{}", "t".repeat(129))).is_err());
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_insecure_loopback("127.0.0.1:5000"));
        assert!(is_insecure_loopback("127.3.2.1"));
        assert!(is_insecure_loopback("localhost:5000"));
        assert!(is_insecure_loopback("[::1]:5000"));
        assert!(!is_insecure_loopback("docker.io"));
        assert!(!is_insecure_loopback("10.0.0.1:5000"));
    }
}
