//! Configuration comes only from environment variables, each with a sane default.
//!
//! A value that is present but invalid stops the service at start with a message naming the
//! variable: a typo in `FAILURE_RATE` must not silently become "no failures".

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid value for environment variable {name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(name: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// Reads a variable; unset or empty means "use the default".
pub fn raw(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parses `raw` (the variable's value, if set) with `parse`, or returns `default`.
pub fn parse_with<T>(
    name: &'static str,
    raw: Option<&str>,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match raw {
        None => Ok(default),
        Some(value) => parse(value.trim()).map_err(|reason| ConfigError::new(name, value, reason)),
    }
}

/// A `FromStr` variable with a default.
pub fn var<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    parse_with(name, raw(name).as_deref(), default, |v| {
        v.parse::<T>().map_err(|e| e.to_string())
    })
}

/// A count that must be at least 1 (a pool size, a threshold, a number of channels).
pub fn positive<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialEq + From<u8>,
    T::Err: Display,
{
    let value = var(name, default)?;
    if value == T::from(0) {
        return Err(ConfigError::new(name, "0", "must be at least 1"));
    }
    Ok(value)
}

/// A string variable with a default.
pub fn string(name: &str, default: &str) -> String {
    raw(name).unwrap_or_else(|| default.to_string())
}

/// A probability in `[0, 1]`, e.g. `FAILURE_RATE` or `DECLINE_RATE`.
pub fn parse_rate(v: &str) -> Result<f64, String> {
    let rate: f64 = v
        .parse()
        .map_err(|_| "expected a number between 0.0 and 1.0".to_string())?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be between 0.0 and 1.0".to_string())
    }
}

pub fn rate(name: &'static str, default: f64) -> Result<f64, ConfigError> {
    parse_with(name, raw(name).as_deref(), default, parse_rate)
}

/// An `http://` or `https://` base URL, stored without a trailing slash.
pub fn parse_base_url(v: &str) -> Result<String, String> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| "expected an http:// or https:// URL".to_string())?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL has no host".to_string());
    }
    Ok(v.trim_end_matches('/').to_string())
}

pub fn base_url(name: &'static str, default: &str) -> Result<String, ConfigError> {
    parse_with(
        name,
        raw(name).as_deref(),
        default.to_string(),
        parse_base_url,
    )
}

/// An `amqp://` or `amqps://` URL.
pub fn parse_amqp_url(v: &str) -> Result<String, String> {
    if v.starts_with("amqp://") || v.starts_with("amqps://") {
        Ok(v.to_string())
    } else {
        Err("expected an amqp:// or amqps:// URL".to_string())
    }
}

/// Hides the password of a URL (`scheme://user:password@host/...`) for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A URL whose scheme is one of `schemes` (e.g. `postgres://`, `redis://`).
pub fn parse_url_with_scheme(v: &str, schemes: &[&str]) -> Result<String, String> {
    let ok = schemes.iter().any(|scheme| {
        v.strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|rest| !rest.is_empty())
    });
    if ok {
        Ok(v.to_string())
    } else {
        let expected: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        Err(format!("expected a {} URL", expected.join(" or ")))
    }
}

/// An optional URL variable: unset means "not configured" (`None`), set but wrong is an error.
/// The error shows the value with its password hidden.
pub fn optional_url(name: &'static str, schemes: &[&str]) -> Result<Option<String>, ConfigError> {
    match raw(name) {
        None => Ok(None),
        Some(value) => parse_url_with_scheme(value.trim(), schemes)
            .map(Some)
            .map_err(|reason| ConfigError::new(name, redact_url(&value), reason)),
    }
}

/// A duration in milliseconds, e.g. `CCA_TIMEOUT_MS=2000`.
pub fn millis(name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    parse_with(name, raw(name).as_deref(), default, |v| {
        v.parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| "expected a whole number of milliseconds".to_string())
    })
}

/// A boolean: true/false, 1/0, yes/no.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

pub fn flag(name: &'static str, default: bool) -> Result<bool, ConfigError> {
    parse_with(name, raw(name).as_deref(), default, parse_bool)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json".to_string()),
        }
    }
}

/// The settings every HTTP service has.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `PORT`; 0 binds an ephemeral port (tests).
    pub port: u16,
    /// `INSTANCE_ID`, sent back in `x-served-by`.
    pub instance_id: String,
    /// `LOG_FORMAT`: text or json.
    pub log_format: LogFormat,
    /// `BODY_LIMIT_BYTES`: larger request bodies get 413.
    pub body_limit: usize,
    /// `SHUTDOWN_TIMEOUT_MS`: how long in-flight requests may take to drain on SIGTERM.
    pub shutdown_timeout: Duration,
}

impl ServiceConfig {
    pub fn from_env(service: &str, default_port: u16) -> Result<Self, ConfigError> {
        let port = var("PORT", default_port)?;
        let default_instance = format!("{service}-{port}");
        Ok(Self {
            port,
            instance_id: string("INSTANCE_ID", &default_instance),
            log_format: var("LOG_FORMAT", LogFormat::Text)?,
            body_limit: var("BODY_LIMIT_BYTES", 64 * 1024)?,
            shutdown_timeout: millis("SHUTDOWN_TIMEOUT_MS", Duration::from_secs(10))?,
        })
    }

    /// A configuration for tests: ephemeral port, short drain.
    pub fn for_tests(instance_id: &str) -> Self {
        Self {
            port: 0,
            instance_id: instance_id.to_string(),
            log_format: LogFormat::Text,
            body_limit: 64 * 1024,
            shutdown_timeout: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_variable_takes_the_default() {
        assert_eq!(parse_with("X", None, 0.1, parse_rate), Ok(0.1));
    }

    #[test]
    fn invalid_rate_names_the_variable() {
        let err = parse_with("FAILURE_RATE", Some("1.5"), 0.0, parse_rate).unwrap_err();
        assert_eq!(err.name, "FAILURE_RATE");
        assert!(err.to_string().contains("FAILURE_RATE=\"1.5\""), "{err}");
        assert!(parse_rate("abc").is_err());
        assert_eq!(parse_rate("0.5"), Ok(0.5));
    }

    #[test]
    fn base_urls_are_checked_and_normalised() {
        assert_eq!(
            parse_base_url("http://localhost:8081/"),
            Ok("http://localhost:8081".to_string())
        );
        assert!(parse_base_url("localhost:8081").is_err());
        assert!(parse_base_url("http://").is_err());
    }

    #[test]
    fn counts_must_be_at_least_one() {
        // Variable names of this test alone: the process environment is shared by the tests.
        std::env::set_var("COMMON_TEST_POSITIVE_ZERO", "0");
        std::env::set_var("COMMON_TEST_POSITIVE_SEVEN", "7");
        let zero = positive("COMMON_TEST_POSITIVE_ZERO", 5u16).unwrap_err();
        assert!(
            zero.to_string().contains("COMMON_TEST_POSITIVE_ZERO"),
            "{zero}"
        );
        assert!(zero.to_string().contains("must be at least 1"), "{zero}");
        assert_eq!(positive("COMMON_TEST_POSITIVE_SEVEN", 5usize).ok(), Some(7));
        assert_eq!(positive("COMMON_TEST_POSITIVE_UNSET", 5u32).ok(), Some(5));
    }

    #[test]
    fn log_format_and_bool_parse() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!(parse_bool("yes"), Ok(true));
        assert!(parse_bool("maybe").is_err());
        assert!(parse_amqp_url("amqps://u:p@host:5671/%2f").is_ok());
        assert!(parse_amqp_url("http://host").is_err());
    }

    #[test]
    fn store_urls_are_checked_and_redacted() {
        let pg = ["postgres", "postgresql"];
        assert!(parse_url_with_scheme("postgres://u@h:5432/shop", &pg).is_ok());
        assert!(parse_url_with_scheme("postgresql://h/shop", &pg).is_ok());
        assert!(parse_url_with_scheme("postgres://", &pg).is_err());
        let err = parse_url_with_scheme("mysql://h/shop", &pg).unwrap_err();
        assert!(err.contains("postgres:// or postgresql://"), "{err}");
        assert_eq!(
            redact_url("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        std::env::set_var("COMMON_TEST_BAD_URL", "http://user:s3cret@host");
        let err = optional_url("COMMON_TEST_BAD_URL", &["redis"]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert_eq!(optional_url("COMMON_TEST_UNSET_URL", &["redis"]), Ok(None));
    }
}
