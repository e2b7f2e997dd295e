//! `docker login` (`POST /auth`): the credentials are checked against the registry's
//! `/v2/` endpoint, directly for Basic auth or through the token server its
//! `WWW-Authenticate: Bearer` challenge names. berthd keeps nothing: the client stores
//! the credentials and sends them with each pull and push, as with dockerd.

use std::time::Duration;

use super::reference::is_insecure_loopback;
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
        let scheme = if is_insecure_loopback(&host) {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{host}/v2/");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(Error::internal)?;
        let unreachable =
            |e: reqwest::Error| Error::Unavailable(format!("registry {host} unreachable: {e}"));
        let refused = |status: reqwest::StatusCode| {
            Error::Unauthorized(format!(
                "login attempt to {url} failed with status: {status}"
            ))
        };
        let resp = client
            .get(&url)
            .basic_auth(&user, Some(&password))
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status().is_success() {
            return Ok(());
        }
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Err(refused(resp.status()));
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // Basic: the registry itself just said no to these credentials.
        let Some(params) = bearer_params(&challenge) else {
            return Err(refused(resp.status()));
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
            .map_err(unreachable)?;
        if token.status().is_success() {
            Ok(())
        } else {
            Err(refused(token.status()))
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
