//! `docker login` (`POST /auth`): the credentials are checked against the registry's
//! `/v2/` endpoint, directly for Basic auth or through the token server its
//! `WWW-Authenticate: Bearer` challenge names. berthd keeps nothing: the client stores
//! the credentials and sends them with each pull and push, as with dockerd.

use super::RegistryAuth;
use crate::{Error, Result};

/// The registry host of a login's `serveraddress` (`https://r.example/v1/`, `r:5000`).
fn registry_host(server: &str) -> Result<String> {
    let s = server.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(Error::invalid("no registry address to log in to"));
    }
    Ok(match host {
        "index.docker.io" | "registry-1.docker.io" => "registry-1.docker.io".into(),
        h => h.to_string(),
    })
}

/// The error chain of a failed request (reqwest's own message hides the TLS cause).
fn unreachable(host: &str, e: reqwest::Error) -> Error {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::Unavailable(format!("registry {host} unreachable: {msg}"))
}

/// `realm`, `service` and `scope` of a Bearer challenge.
fn bearer_params(challenge: &str) -> Option<Vec<(String, String)>> {
    let rest = challenge.trim().strip_prefix("Bearer ")?;
    let mut out = Vec::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        out.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
    }
    Some(out)
}

impl super::ImageStore {
    /// Check `auth` against its registry; `Ok` is dockerd's "Login Succeeded".
    pub async fn login(&self, auth: &RegistryAuth) -> Result<()> {
        let host = registry_host(&auth.server_address)?;
        let (user, password) = match auth.basic() {
            Some(c) => c,
            None => {
                return Err(Error::invalid(
                    "a username and a password are required to log in",
                ))
            }
        };
        let eps = self.registry.endpoints(&host, false).await?;
        let refused = |url: &str, status: reqwest::StatusCode| {
            Error::Unauthorized(format!(
                "login attempt to {url} failed with status: {status}"
            ))
        };
        // HTTPS first; plain HTTP only where trust.rs allows it, and only when HTTPS
        // could not be spoken at all.
        let mut found = None;
        for (i, ep) in eps.iter().enumerate() {
            let url = ep.url("/v2/");
            let client = ep.http_client()?;
            match client
                .get(&url)
                .basic_auth(&user, Some(&password))
                .send()
                .await
            {
                Ok(resp) => {
                    found = Some((url, client, resp));
                    break;
                }
                Err(e) if i + 1 < eps.len() => {
                    tracing::info!("login: {url} failed, trying the next endpoint: {e}");
                }
                Err(e) => return Err(unreachable(&host, e)),
            }
        }
        let Some((url, client, resp)) = found else {
            return Err(Error::internal("no registry endpoint"));
        };
        if resp.status().is_success() {
            return Ok(());
        }
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Err(refused(&url, resp.status()));
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // Basic: the registry itself just said no to these credentials.
        let Some(params) = bearer_params(&challenge) else {
            return Err(refused(&url, resp.status()));
        };
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "registry {host} sent a token challenge without a realm"
                ))
            })?;
        let mut query: Vec<(String, String)> =
            params.into_iter().filter(|(k, _)| k != "realm").collect();
        query.push(("account".into(), user.clone()));
        let token = client
            .get(&realm)
            .query(&query)
            .basic_auth(&user, Some(&password))
            .send()
            .await
            .map_err(|e| unreachable(&host, e))?;
        if token.status().is_success() {
            Ok(())
        } else {
            Err(refused(&url, token.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_and_challenges() {
        assert_eq!(
            registry_host("https://index.docker.io/v1/").unwrap(),
            "registry-1.docker.io"
        );
        assert_eq!(registry_host("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(registry_host("http://r.example/x").unwrap(), "r.example");
        assert!(registry_host("").is_err());
        let p = bearer_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example""#,
        )
        .unwrap();
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1], ("service".into(), "registry.example".into()));
        assert!(bearer_params(r#"Basic realm="x""#).is_none());
    }
}
