//! [`Secret`]: a value (an API key) that is sent where it is needed and
//! printed nowhere.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a [`Secret`] prints instead of itself.
pub const REDACTED: &str = "[redacted]";

/// A secret string, such as an LM provider's API key.
///
/// `Debug` and `Display` print [`REDACTED`], so a secret inside a
/// configuration, a command or an error never reaches a log line by
/// accident. It serialises as the plain string, because the one place it
/// must appear is the frame that hands it to a worker; the code that sends
/// it decides when (the pool sends an LM's configuration to a worker once per
/// LM generation, not with every request).
///
/// ```
/// use dspex_protocol::Secret;
///
/// let key = Secret::new("sk-live-1234");
/// assert_eq!(format!("{key} {key:?}"), "[redacted] Secret([redacted])");
/// assert_eq!(key.expose(), "sk-live-1234");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Every call site is a place the secret leaves its
    /// wrapper: keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Whether a configuration key names a secret (`api_key`,
/// `aws_secret_access_key`, `token`, `password`, ...): its value is redacted
/// wherever the configuration is printed.
pub fn is_secret_key(key: &str) -> bool {
    const WORDS: [&str; 8] = [
        "key",
        "apikey",
        "secret",
        "token",
        "password",
        "passwd",
        "credential",
        "credentials",
    ];
    key.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| WORDS.contains(&word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_redacted_and_serialise_plain() {
        let secret = Secret::from("hunter2");
        assert!(!format!("{secret:?}{secret}{secret:#?}").contains("hunter2"));
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"hunter2\"");
        let back: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(back, secret);
    }

    #[test]
    fn secret_keys_are_recognised() {
        for key in [
            "api_key",
            "aws_secret_access_key",
            "vertex_credentials",
            "token",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["model", "temperature", "api_base", "max_tokens", "keywords"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }
}
