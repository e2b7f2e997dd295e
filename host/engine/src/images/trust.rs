//! Which registries berthd talks to, over what, trusting whom: dockerd's rules.
//!
//! - Every registry is tried over HTTPS first, verified against the system roots plus
//!   the `*.crt` CAs in `<certs.d>/<host:port>/` (dockerd's /etc/docker/certs.d), with
//!   `client.cert` + `client.key` there presented for mutual TLS.
//! - Insecure registries (loopback ones, and `--insecure-registry` entries: CIDRs or
//!   `host[:port]`) are tried over HTTPS without verifying the certificate, then over
//!   plain HTTP if HTTPS cannot be spoken.
//! - `docker.io` pulls go to the `--registry-mirror`s first.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

pub const DEFAULT_CERTS_DIR: &str = "/etc/docker/certs.d";

/// dockerd's registry options (`--insecure-registry`, `--registry-mirror`, and where
/// per-registry certificates live).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// CIDRs (`10.0.0.0/8`) and registry names (`r.example:5000`).
    pub insecure: Vec<String>,
    /// Mirror URLs (`https://mirror.example`) for docker.io pulls, tried in order.
    pub mirrors: Vec<String>,
    pub certs_dir: PathBuf,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            mirrors: Vec::new(),
            certs_dir: PathBuf::from(DEFAULT_CERTS_DIR),
        }
    }
}

/// One way to reach a registry: the host to name in requests, the scheme, the TLS
/// configuration, and whether it is a mirror (any failure there falls through).
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub https: bool,
    pub mirror: bool,
    pub tls: rustls::ClientConfig,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.host)
    }

    /// An HTTP client speaking to this endpoint (and to the token server it names).
    pub fn http_client(&self) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .connect_timeout(std::time::Duration::from_secs(15))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(Error::internal)
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn in_cidr(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// `host` of `host:port` / `[v6]:port` / `host`.
fn host_part(domain: &str) -> &str {
    if let Some(rest) = domain.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match domain.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => domain,
    }
}

impl RegistryConfig {
    /// Reject entries dockerd would reject, at startup rather than at the first pull.
    pub fn validate(&self) -> Result<()> {
        for e in &self.insecure {
            if e.contains('/') {
                if e.contains("://") || parse_cidr(e).is_none() {
                    return Err(Error::invalid(format!(
                        "insecure registry {e} is not a valid CIDR or host[:port]"
                    )));
                }
            } else if e.is_empty() || e.contains(char::is_whitespace) {
                return Err(Error::invalid(format!("invalid insecure registry {e:?}")));
            }
        }
        for m in &self.mirrors {
            mirror_host(m)?;
        }
        Ok(())
    }

    /// `docker info`'s `RegistryConfig`, in dockerd's shape.
    pub fn info(&self) -> serde_json::Value {
        let mut cidrs = vec!["::1/128".to_string(), "127.0.0.0/8".to_string()];
        let mut index = serde_json::Map::new();
        for e in &self.insecure {
            if e.contains('/') {
                cidrs.push(e.clone());
            } else {
                index.insert(
                    e.clone(),
                    serde_json::json!({ "Name": e, "Mirrors": [], "Secure": false, "Official": false }),
                );
            }
        }
        let mirrors: Vec<String> = self
            .mirrors
            .iter()
            .map(|m| format!("{}/", m.trim_end_matches('/')))
            .collect();
        index.insert(
            "docker.io".into(),
            serde_json::json!({ "Name": "docker.io", "Mirrors": mirrors, "Secure": true, "Official": true }),
        );
        serde_json::json!({
            "AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": cidrs,
            "IndexConfigs": index,
            "Mirrors": mirrors,
        })
    }

    /// Loopback, a listed name, or (by its addresses) inside a listed CIDR.
    async fn is_insecure(&self, domain: &str) -> bool {
        if super::reference::is_insecure_loopback(domain) {
            return true;
        }
        if self.insecure.iter().any(|e| e == domain) {
            return true;
        }
        let cidrs: Vec<_> = self.insecure.iter().filter_map(|e| parse_cidr(e)).collect();
        if cidrs.is_empty() {
            return false;
        }
        let host = host_part(domain);
        let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match tokio::net::lookup_host((host, 0)).await {
                Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                Err(_) => Vec::new(),
            },
        };
        ips.iter()
            .any(|ip| cidrs.iter().any(|c| in_cidr(ip.to_canonical(), *c)))
    }

    /// The TLS configuration for `domain`: certs.d trust and client certificate, and
    /// no verification at all for an insecure registry (as dockerd).
    pub fn tls_config(&self, domain: &str, insecure: bool) -> Result<rustls::ClientConfig> {
        let dir = self.certs_dir.join(domain);
        let certs = read_certs_dir(&dir)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::internal)?;
        let builder = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        } else {
            let mut roots = system_roots().clone();
            for ca in certs.cas {
                roots.add(ca).map_err(|e| {
                    Error::invalid(format!("bad CA certificate in {}: {e}", dir.display()))
                })?;
            }
            builder.with_root_certificates(roots)
        };
        let mut cfg = match certs.client {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::invalid(format!(
                    "client certificate and key in {} do not match: {e}",
                    dir.display()
                ))
            })?,
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// The ways to reach `domain`, in the order dockerd tries them.
    pub async fn endpoints(&self, domain: &str, pull: bool) -> Result<Vec<Endpoint>> {
        let mut out = Vec::new();
        if pull && domain == super::reference::DEFAULT_DOMAIN {
            for m in &self.mirrors {
                let (host, https) = mirror_host(m)?;
                let insecure = self.is_insecure(&host).await;
                out.push(Endpoint {
                    tls: self.tls_config(&host, insecure)?,
                    host,
                    https,
                    mirror: true,
                });
            }
        }
        let insecure = self.is_insecure(domain).await;
        let tls = self.tls_config(domain, insecure)?;
        out.push(Endpoint {
            host: domain.to_string(),
            https: true,
            mirror: false,
            tls: tls.clone(),
        });
        if insecure {
            out.push(Endpoint {
                host: domain.to_string(),
                https: false,
                mirror: false,
                tls,
            });
        }
        Ok(out)
    }
}

/// `https://mirror.example[:port][/]` → (`mirror.example[:port]`, https?).
fn mirror_host(url: &str) -> Result<(String, bool)> {
    let bad = || {
        Error::invalid(format!(
            "invalid mirror {url:?}: want http(s)://host[:port]"
        ))
    };
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host.to_string(), https))
}

/// The system's trust anchors, read once.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("system CA certificates: {e}");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!("system CA certificates: {added} loaded, {ignored} unparsable");
        roots
    })
}

/// A reqwest client builder verifying against the system roots, for plain web
/// downloads (`docker import URL`, `ADD URL`).
pub fn web_client_builder() -> reqwest::ClientBuilder {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(system_roots().clone())
    .with_no_client_auth();
    reqwest::Client::builder().tls_backend_preconfigured(cfg)
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

#[derive(Default)]
struct CertsDir {
    cas: Vec<CertificateDer<'static>>,
    client: Option<ClientCert>,
}

/// dockerd's `ReadCertsDirectory`: `*.crt` are CAs; each `X.cert` needs its `X.key`
/// (and a key without its certificate is an error). A missing directory is no trust.
fn read_certs_dir(dir: &Path) -> Result<CertsDir> {
    let mut out = CertsDir::default();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let pem_err = |p: &Path, e: rustls::pki_types::pem::Error| {
        Error::invalid(format!("read {}: {e}", p.display()))
    };
    for n in &names {
        let p = dir.join(n);
        if n.ends_with(".crt") {
            for c in CertificateDer::pem_file_iter(&p).map_err(|e| pem_err(&p, e))? {
                out.cas.push(c.map_err(|e| pem_err(&p, e))?);
            }
        } else if let Some(base) = n.strip_suffix(".cert") {
            let key_name = format!("{base}.key");
            if !names.contains(&key_name) {
                return Err(Error::invalid(format!(
                    "missing key {key_name} for client certificate {n} in {}",
                    dir.display()
                )));
            }
            if out.client.is_none() {
                let chain = CertificateDer::pem_file_iter(&p)
                    .map_err(|e| pem_err(&p, e))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| pem_err(&p, e))?;
                let kp = dir.join(&key_name);
                let key = PrivateKeyDer::from_pem_file(&kp).map_err(|e| pem_err(&kp, e))?;
                out.client = Some((chain, key));
            }
        } else if let Some(base) = n.strip_suffix(".key") {
            if !names.contains(&format!("{base}.cert")) {
                return Err(Error::invalid(format!(
                    "missing client certificate {base}.cert for key {n} in {}",
                    dir.display()
                )));
            }
        }
    }
    Ok(out)
}

/// An insecure registry's certificate is not checked (dockerd's InsecureSkipVerify);
/// the handshake's own signatures still are.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn insecure_entries_like_dockerd() {
        let c = RegistryConfig {
            insecure: vec!["10.1.0.0/16".into(), "r.example:5000".into()],
            ..Default::default()
        };
        c.validate().unwrap();
        assert!(c.is_insecure("127.0.0.1:5000").await);
        assert!(c.is_insecure("10.1.2.3:443").await);
        assert!(!c.is_insecure("10.2.0.1:443").await);
        assert!(c.is_insecure("r.example:5000").await);
        assert!(!c.is_insecure("r.example:5001").await);
        let bad = RegistryConfig {
            insecure: vec!["10.0.0.0/40".into()],
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        assert_eq!(
            mirror_host("http://127.0.0.1:5000/").unwrap(),
            ("127.0.0.1:5000".into(), false)
        );
        assert!(mirror_host("mirror.example").is_err());
    }

    #[tokio::test]
    async fn endpoints_order() {
        let c = RegistryConfig {
            mirrors: vec!["http://127.0.0.1:1".into()],
            certs_dir: PathBuf::from("/nonexistent"),
            ..Default::default()
        };
        let hosts = |v: Vec<Endpoint>| v.iter().map(|e| e.url("")).collect::<Vec<_>>().join(" ");
        assert_eq!(
            hosts(c.endpoints("docker.io", true).await.unwrap()),
            "http://127.0.0.1:1 https://docker.io"
        );
        assert_eq!(
            hosts(c.endpoints("docker.io", false).await.unwrap()),
            "https://docker.io"
        );
        assert_eq!(
            hosts(c.endpoints("127.0.0.1:5000", true).await.unwrap()),
            "https://127.0.0.1:5000 http://127.0.0.1:5000"
        );
    }

    #[test]
    fn key_without_cert_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("client.key"), "x").unwrap();
        assert!(read_certs_dir(d.path()).is_err());
        assert!(read_certs_dir(&d.path().join("none"))
            .unwrap()
            .cas
            .is_empty());
    }
}
