//! A value that must never be printed: a password, a URL with one inside, a key.
//!
//! `Debug` and `Display` show `[redacted]`, so a secret that ends up in a settings struct's
//! `{:?}`, a `tracing` field or a panic message gives nothing away; [`Secret::expose`] is the one
//! way to read it, and the places that call it are the ones to review.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself: for the one call that needs it (a connect, a hash comparison).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret::new("amqp://guest:hunter2@broker/%2f".to_string());
        #[derive(Debug)]
        #[allow(dead_code)] // read only through Debug
        struct Settings {
            url: Secret<String>,
        }
        let settings = Settings {
            url: secret.clone(),
        };
        for shown in [
            format!("{secret}"),
            format!("{secret:?}"),
            format!("{settings:?}"),
            format!("{settings:#?}"),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        assert_eq!(secret.expose(), "amqp://guest:hunter2@broker/%2f");
    }
}
