//! Reaching a registry through its endpoints (trust.rs) in dockerd's order: the first
//! request of an operation goes to each endpoint in turn until one answers; the
//! rest of the operation stays on the one that did. Registry client errors become
//! engine errors here too.

use std::future::Future;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::Client;

use super::reference;
use super::reference::Reference;
use super::trust::{Endpoint, RegistryConfig};
use crate::{Error, Result};

/// The registry client for one endpoint.
pub(crate) fn client_for(ep: &Endpoint) -> Result<Client> {
    let cfg = ClientConfig {
        protocol: if ep.https {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        },
        rustls_config: Some(ep.tls.clone()),
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        connect_timeout: Some(Duration::from_secs(15)),
        use_monolithic_push: true,
        user_agent: concat!("berthd/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    // Not `Client::new`: on error it falls back to a default client, which would
    // ignore this endpoint's TLS settings.
    Client::try_from(cfg).map_err(|e| Error::internal(format!("registry client: {e}")))
}

/// `r` as named on endpoint `ep` (a mirror serves docker.io's repositories under its
/// own host).
fn ref_on(r: &Reference, ep: &Endpoint) -> oci_client::Reference {
    let o = oci_ref(r);
    if !ep.mirror {
        return o;
    }
    match o.digest() {
        Some(d) => oci_client::Reference::with_digest(
            ep.host.clone(),
            o.repository().to_string(),
            d.to_string(),
        ),
        None => oci_client::Reference::with_tag(
            ep.host.clone(),
            o.repository().to_string(),
            o.tag().unwrap_or("latest").to_string(),
        ),
    }
}

/// Whether the next endpoint should be tried after `e`: any failure of a mirror;
/// on the registry itself only a failure to speak to it (TLS refused, connection
/// refused), as a registry's own answer is final.
fn falls_through(ep: &Endpoint, e: &OciDistributionError) -> bool {
    ep.mirror || matches!(e, OciDistributionError::RequestError(_))
}

/// Run `first` (an operation's first request) against each endpoint of `r`'s
/// registry until one answers; return the client and reference to carry on with.
pub(crate) async fn connect<T, F, Fut>(
    cfg: &RegistryConfig,
    r: &Reference,
    pull: bool,
    first: F,
) -> Result<(Client, oci_client::Reference, T)>
where
    F: Fn(Client, oci_client::Reference) -> Fut,
    Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
{
    let eps = cfg.endpoints(&r.domain, pull).await?;
    let mut last: Option<Error> = None;
    for (i, ep) in eps.iter().enumerate() {
        let client = client_for(ep)?;
        let oref = ref_on(r, ep);
        match first(client.clone(), oref.clone()).await {
            Ok(v) => return Ok((client, oref, v)),
            Err(e) if i + 1 < eps.len() && falls_through(ep, &e) => {
                tracing::info!(
                    "registry endpoint {} failed, trying the next: {e}",
                    ep.url("")
                );
                last = Some(registry_err(r, e));
            }
            Err(e) => return Err(registry_err(r, e)),
        }
    }
    Err(last.unwrap_or_else(|| Error::internal("no registry endpoint")))
}

pub(crate) fn oci_ref(r: &Reference) -> oci_client::Reference {
    match (&r.tag, &r.digest) {
        (_, Some(d)) => {
            oci_client::Reference::with_digest(r.domain.clone(), r.path.clone(), d.clone())
        }
        (Some(t), None) => {
            oci_client::Reference::with_tag(r.domain.clone(), r.path.clone(), t.clone())
        }
        (None, None) => oci_client::Reference::with_tag(
            r.domain.clone(),
            r.path.clone(),
            reference::DEFAULT_TAG.into(),
        ),
    }
}

/// Turn a registry client error into an engine error a user can act on.
pub(crate) fn registry_err(r: &Reference, e: OciDistributionError) -> Error {
    use OciDistributionError as E;
    let shown = r.familiar();
    match e {
        E::ImageManifestNotFoundError(_) => Error::not_found(format!(
            "manifest for {shown} not found: manifest unknown: manifest unknown"
        )),
        E::RegistryError { envelope, .. } => {
            let text = envelope
                .errors
                .iter()
                .map(|x| format!("{}: {}", code_text(&x.code), x.message))
                .collect::<Vec<_>>()
                .join(", ");
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                )
            }) {
                Error::not_found(format!("manifest for {shown} not found: {text}"))
            } else if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            }) {
                Error::Unauthorized(format!("{shown}: {text}"))
            } else {
                Error::internal(format!("{shown}: {text}"))
            }
        }
        E::AuthenticationFailure(m) => {
            Error::Unauthorized(format!("{shown}: authentication failed: {m}"))
        }
        E::UnauthorizedError { url } => {
            Error::Unauthorized(format!("{shown}: unauthorized: {url}"))
        }
        E::ServerError { code: 404, .. } => Error::not_found(format!(
            "manifest for {shown} not found: manifest unknown: manifest unknown"
        )),
        E::RequestError(re) => {
            let mut msg = format!("{re}");
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&re);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            if re.is_connect() || re.is_timeout() {
                Error::Unavailable(format!("registry {} unreachable: {msg}", r.domain))
            } else {
                Error::internal(format!("registry {}: {msg}", r.domain))
            }
        }
        other => Error::internal(format!("{shown}: {other}")),
    }
}

/// `ManifestUnknown` → `manifest unknown` (the registry's own wording for the code).
fn code_text(code: &oci_client::errors::OciErrorCode) -> String {
    let dbg = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in dbg.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
