//! The staging database's credentials: generated once, when the Secret does not exist yet, so a
//! retry never changes them; never logged, never in outputs or errors.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::error::{Error, Result};
use crate::staging::engine::{Engine, SECRET_KEY_PASSWORD, SECRET_KEY_USERNAME};

/// Characters of a generated password: letters and digits (safe in URIs and shells).
const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const PASSWORD_LEN: usize = 32;

/// A username and password. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// New random credentials for `user` (the OS's random source through ring).
    pub fn generate(user: &str) -> Result<Self> {
        let provider = rustls::crypto::ring::default_provider();
        let mut password = String::with_capacity(PASSWORD_LEN);
        let mut buf = [0u8; 64];
        while password.len() < PASSWORD_LEN {
            provider
                .secure_random
                .fill(&mut buf)
                .map_err(|_| Error::Internal("no random source for the credentials".into()))?;
            // Rejection sampling keeps every character equally likely.
            for b in buf {
                if usize::from(b) < 248 && password.len() < PASSWORD_LEN {
                    password.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
                }
            }
        }
        Ok(Self {
            username: user.to_string(),
            password,
        })
    }

    /// The rendered (data-less) Secret with these credentials as its data.
    pub fn into_secret(self, rendered: &Secret) -> Secret {
        let mut s = rendered.clone();
        s.data = Some(BTreeMap::from([
            (
                SECRET_KEY_USERNAME.to_string(),
                ByteString(self.username.into_bytes()),
            ),
            (
                SECRET_KEY_PASSWORD.to_string(),
                ByteString(self.password.into_bytes()),
            ),
        ]));
        s
    }
}

/// The user the image creates on an empty data directory (the restored data keeps its own).
pub fn username(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgresql => "postgres",
        Engine::Mysql => "root",
        Engine::Mongodb => "admin",
        // No Secret is made for an application: it keeps its own users.
        Engine::Jenkins | Engine::Nexus => "",
    }
}

/// Checks an existing Secret can be kept as it is: it has both keys the database reads.
pub fn check_existing(secret: &Secret, namespace: &str) -> Result<()> {
    let data = secret.data.as_ref();
    let has = |k: &str| {
        data.and_then(|d| d.get(k)).is_some_and(|v| !v.0.is_empty())
            || secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(k))
                .is_some_and(|v| !v.is_empty())
    };
    let missing: Vec<&str> = [SECRET_KEY_USERNAME, SECRET_KEY_PASSWORD]
        .into_iter()
        .filter(|k| !has(k))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Configuration(format!(
        "Secret {namespace}/{} exists without the key(s) {}: snapstage keeps an existing Secret as it is (credentials never change on a retry); add the keys or delete the Secret",
        secret.metadata.name.as_deref().unwrap_or_default(),
        missing.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_random_and_hidden() {
        let a = Credentials::generate(username(Engine::Postgresql)).unwrap();
        let b = Credentials::generate(username(Engine::Postgresql)).unwrap();
        assert_eq!(a.password.len(), PASSWORD_LEN);
        assert!(a.password.bytes().all(|c| ALPHABET.contains(&c)));
        assert_ne!(a.password, b.password);
        assert_eq!(a.username, "postgres");
        let shown = format!("{a:?}");
        assert!(
            !shown.contains(&a.password) && shown.contains("redacted"),
            "{shown}"
        );
    }

    #[test]
    fn the_secret_gets_both_keys() {
        let c = Credentials::generate(username(Engine::Mysql)).unwrap();
        let password = c.password.clone();
        let s = c.into_secret(&Secret::default());
        let data = s.data.clone().unwrap();
        assert_eq!(data["username"].0, b"root");
        assert_eq!(data["password"].0, password.as_bytes());
        check_existing(&s, "ns").unwrap();
        let e = check_existing(&Secret::default(), "ns").unwrap_err();
        assert!(e.to_string().contains("username, password"), "{e}");
    }
}
