//! Docker's registry credentials as clients send them (`X-Registry-Auth`,
//! `X-Registry-Config`), and their form for the registry client.

use base64::Engine as _;
use serde::Deserialize;

/// `null` (which clients send for unset fields) reads as "".
fn null_str<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Docker's `AuthConfig` from the `X-Registry-Auth` header.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RegistryAuth {
    #[serde(default, alias = "Username", deserialize_with = "null_str")]
    pub username: String,
    #[serde(default, alias = "Password", deserialize_with = "null_str")]
    pub password: String,
    #[serde(default, alias = "Auth", deserialize_with = "null_str")]
    pub auth: String,
    #[serde(
        default,
        alias = "IdentityToken",
        alias = "identitytoken",
        deserialize_with = "null_str"
    )]
    pub identity_token: String,
    #[serde(
        default,
        alias = "RegistryToken",
        alias = "registrytoken",
        deserialize_with = "null_str"
    )]
    pub registry_token: String,
    #[serde(
        default,
        alias = "ServerAddress",
        alias = "serveraddress",
        deserialize_with = "null_str"
    )]
    pub server_address: String,
}

/// A credentials header: base64url JSON (standard base64 accepted too). Empty or
/// undecodable means anonymous, as in Docker.
fn decode_header<T: serde::de::DeserializeOwned>(h: &str) -> Option<T> {
    let h = h.trim();
    if h.is_empty() {
        return None;
    }
    let engines = [
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    engines
        .iter()
        .filter_map(|e| e.decode(h).ok())
        .find_map(|raw| serde_json::from_slice(&raw).ok())
}

impl RegistryAuth {
    /// Decode the header (base64url JSON; standard base64 accepted too). An empty or
    /// undecodable header means anonymous, as in Docker.
    pub fn from_header(h: &str) -> RegistryAuth {
        decode_header(h).unwrap_or_default()
    }

    /// `X-Registry-Config` (`docker build`): base64 JSON of registry → credentials.
    pub fn configs_from_header(h: &str) -> std::collections::HashMap<String, RegistryAuth> {
        decode_header(h).unwrap_or_default()
    }

    /// Username and password, given as such or as the base64 `auth` field.
    pub fn basic(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if !self.auth.is_empty() {
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&self.auth) {
                if let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':') {
                    return Some((u.to_string(), p.to_string()));
                }
            }
        }
        None
    }

    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth as A;
        if !self.registry_token.is_empty() {
            return A::Bearer(self.registry_token.clone());
        }
        match self.basic() {
            Some((u, p)) => A::Basic(u, p),
            None => A::Anonymous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_header_decodes() {
        let h = base64::engine::general_purpose::URL_SAFE
            .encode(br#"{"username":"u","password":"p?>","serveraddress":"x"}"#);
        let a = RegistryAuth::from_header(&h);
        assert_eq!(a.username, "u");
        assert!(
            matches!(a.to_oci(), oci_client::secrets::RegistryAuth::Basic(u, p) if u == "u" && p == "p?>")
        );
        assert!(matches!(
            RegistryAuth::from_header("e30=").to_oci(),
            oci_client::secrets::RegistryAuth::Anonymous
        ));
        let h = base64::engine::general_purpose::URL_SAFE
            .encode(br#"{"auth":"dTpw","email":null,"username":null}"#);
        assert!(
            matches!(RegistryAuth::from_header(&h).to_oci(), oci_client::secrets::RegistryAuth::Basic(u, _) if u == "u")
        );
    }
}
