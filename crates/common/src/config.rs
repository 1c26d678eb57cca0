//! Configuration comes only from environment variables, each with a sane default.
//!
//! A value that is present but invalid stops the service at start with a message naming the
//! variable: a typo in `FAILURE_RATE` must not silently become "no failures".

use crate::auth::AuthConfig;
use crate::ratelimit::RateLimitConfig;
use crate::secret::Secret;
use crate::telemetry::TracingConfig;
use std::collections::HashMap;
use std::fmt::{self, Display};
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

/// Where a service's settings come from, and a record of every variable asked for.
///
/// Every service reads its settings through one `Env`, calling one method per variable with
/// the variable's default and a line of help. Because `--help` runs the very same reading code
/// against [`Env::defaults`] and prints what was asked for, the list of variables, their defaults
/// and their meaning cannot drift from what the service really reads. Tests read from
/// [`Env::from_pairs`] instead of changing the process's environment (shared by every test).
#[derive(Debug)]
pub struct Env {
    source: Source,
    asked: Vec<Variable>,
    /// A problem with the settings as a whole, reported once every variable has been read (so
    /// that `--help` still lists them all, and a bad value names its own variable first).
    deferred: Option<ConfigError>,
}

#[derive(Debug)]
enum Source {
    Process,
    Pairs(HashMap<String, String>),
    /// `--help`: nothing is set, so every default is taken.
    Nothing,
}

/// One variable a service reads, as `--help` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    /// The default as the user would write it; empty when unset means "off" or "not used".
    pub default: String,
    pub help: &'static str,
}

impl Env {
    /// The process's environment variables.
    pub fn process() -> Self {
        Self::new(Source::Process)
    }

    /// Only these variables are set (tests).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::new(Source::Pairs(pairs))
    }

    /// Nothing is set: reading gives every default (and `--help` its list).
    pub fn defaults() -> Self {
        Self::new(Source::Nothing)
    }

    fn new(source: Source) -> Self {
        Self {
            source,
            asked: Vec::new(),
            deferred: None,
        }
    }

    /// Records a problem to report after the whole configuration is read (the first one wins).
    pub fn defer(&mut self, err: ConfigError) {
        self.deferred.get_or_insert(err);
    }

    /// The deferred problem, if any: [`settings_or_exit`] stops the start on it.
    pub fn take_deferred(&mut self) -> Option<ConfigError> {
        self.deferred.take()
    }

    /// Every variable asked for so far, in the order first asked.
    pub fn variables(&self) -> &[Variable] {
        &self.asked
    }

    /// Records `name` (the first ask wins: two sections may share one variable) and returns its
    /// value; unset or empty means "use the default".
    fn lookup(
        &mut self,
        name: &'static str,
        default: String,
        help: &'static str,
    ) -> Option<String> {
        if !self.asked.iter().any(|v| v.name == name) {
            self.asked.push(Variable {
                name,
                default,
                help,
            });
        }
        let value = match &self.source {
            Source::Process => std::env::var(name).ok(),
            Source::Pairs(pairs) => pairs.get(name).cloned(),
            Source::Nothing => None,
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// Lists a variable read by something else (say `RUST_LOG`, read by the log filter).
    pub fn document(&mut self, name: &'static str, default: &str, help: &'static str) {
        self.lookup(name, default.to_string(), help);
    }

    /// A variable parsed by `parse`; `shown` is the default as `--help` prints it.
    pub fn parse_with<T>(
        &mut self,
        name: &'static str,
        default: T,
        shown: &str,
        help: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.lookup(name, shown.to_string(), help) {
            None => Ok(default),
            Some(value) => {
                parse(value.trim()).map_err(|reason| ConfigError::new(name, value, reason))
            }
        }
    }

    /// A secret variable (a URL with a password, say) parsed by `parse`: held as a [`Secret`],
    /// and shown in an error only through `redact`.
    pub fn secret_with<T>(
        &mut self,
        name: &'static str,
        default: T,
        shown: &str,
        help: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
        redact: impl FnOnce(&str) -> String,
    ) -> Result<Secret<T>, ConfigError> {
        match self.lookup(name, shown.to_string(), help) {
            None => Ok(Secret::new(default)),
            Some(value) => parse(value.trim())
                .map(Secret::new)
                .map_err(|reason| ConfigError::new(name, redact(&value), reason)),
        }
    }

    /// A `FromStr` variable with a default.
    pub fn var<T>(
        &mut self,
        name: &'static str,
        default: T,
        help: &'static str,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + Display,
        T::Err: Display,
    {
        let shown = default.to_string();
        self.parse_with(name, default, &shown, help, |v| {
            v.parse::<T>().map_err(|e| e.to_string())
        })
    }

    /// A count that must be at least 1 (a pool size, a threshold, a number of channels).
    pub fn positive<T>(
        &mut self,
        name: &'static str,
        default: T,
        help: &'static str,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + Display + PartialEq + From<u8>,
        T::Err: Display,
    {
        let value = self.var(name, default, help)?;
        if value == T::from(0) {
            return Err(ConfigError::new(name, "0", "must be at least 1"));
        }
        Ok(value)
    }

    /// A string variable with a default.
    pub fn string(&mut self, name: &'static str, default: &str, help: &'static str) -> String {
        self.lookup(name, default.to_string(), help)
            .unwrap_or_else(|| default.to_string())
    }

    /// A probability in `[0, 1]`, e.g. `FAILURE_RATE` or `DECLINE_RATE`.
    pub fn rate(
        &mut self,
        name: &'static str,
        default: f64,
        help: &'static str,
    ) -> Result<f64, ConfigError> {
        self.parse_with(name, default, &default.to_string(), help, parse_rate)
    }

    /// An `http://` or `https://` base URL, stored without a trailing slash.
    pub fn base_url(
        &mut self,
        name: &'static str,
        default: &str,
        help: &'static str,
    ) -> Result<String, ConfigError> {
        self.parse_with(name, default.to_string(), default, help, parse_base_url)
    }

    /// A duration in milliseconds, e.g. `CCA_TIMEOUT_MS=2000`.
    pub fn millis(
        &mut self,
        name: &'static str,
        default: Duration,
        help: &'static str,
    ) -> Result<Duration, ConfigError> {
        let shown = default.as_millis().to_string();
        self.parse_with(name, default, &shown, help, |v| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| "expected a whole number of milliseconds".to_string())
        })
    }

    /// A duration in milliseconds that must not be zero.
    pub fn positive_millis(
        &mut self,
        name: &'static str,
        default: Duration,
        help: &'static str,
    ) -> Result<Duration, ConfigError> {
        let value = self.millis(name, default, help)?;
        if value.is_zero() {
            return Err(ConfigError::new(name, "0", "must be at least 1"));
        }
        Ok(value)
    }

    /// A boolean: true/false, 1/0, yes/no, on/off.
    pub fn flag(
        &mut self,
        name: &'static str,
        default: bool,
        help: &'static str,
    ) -> Result<bool, ConfigError> {
        self.parse_with(name, default, &default.to_string(), help, parse_bool)
    }

    /// An optional URL: unset means "not configured" (`None`), set but wrong is an error. The
    /// error shows the value with its password hidden.
    pub fn optional_url(
        &mut self,
        name: &'static str,
        schemes: &[&str],
        help: &'static str,
    ) -> Result<Option<String>, ConfigError> {
        match self.lookup(name, String::new(), help) {
            None => Ok(None),
            Some(value) => parse_url_with_scheme(value.trim(), schemes)
                .map(Some)
                .map_err(|reason| ConfigError::new(name, redact_url(&value), reason)),
        }
    }

    /// The `--help` text: what the binary is, then every variable it reads with its default.
    pub fn help(&self, binary: &str, about: &str) -> String {
        let width = self.asked.iter().map(|v| v.name.len()).max().unwrap_or(0);
        let shown_width = self
            .asked
            .iter()
            .map(|v| shown_default(&v.default).len())
            .max()
            .unwrap_or(0)
            .min(40);
        let mut text = format!(
            "{binary}: {about}\n\n\
             Usage: {binary}              start the service\n\
             \x20      {binary} healthcheck  probe a running instance's /health (container checks)\n\
             \x20      {binary} --help       this text\n\n\
             Configured only by environment variables. Unset or empty takes the default; an\n\
             invalid value stops the start with exit code 1, naming the variable.\n\n"
        );
        text.push_str(&format!(
            "  {:<width$}  {:<shown_width$}  {}\n",
            "VARIABLE", "DEFAULT", "MEANING"
        ));
        for v in &self.asked {
            text.push_str(&format!(
                "  {:<width$}  {:<shown_width$}  {}\n",
                v.name,
                shown_default(&v.default),
                v.help
            ));
        }
        text
    }
}

fn shown_default(default: &str) -> &str {
    if default.is_empty() {
        "(unset)"
    } else {
        default
    }
}

/// The settings a binary starts with. `--help` (or `-h`) prints every variable `read` asks for,
/// with its default, and exits 0; any other argument is refused with exit code 2; a variable with
/// an invalid value is named on stderr with exit code 1.
pub fn settings_or_exit<S>(
    binary: &str,
    about: &str,
    read: impl Fn(&mut Env) -> Result<S, ConfigError>,
) -> S {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            let mut env = Env::defaults();
            // The defaults are valid by construction; were one not, the list is still worth
            // printing, and the start would say which.
            let _ = read(&mut env);
            print!("{}", env.help(binary, about));
            std::process::exit(0);
        }
        Some(other) => {
            eprintln!(
                "{binary}: unexpected argument {other:?}: the configuration comes from environment \
                 variables (see {binary} --help)"
            );
            std::process::exit(2);
        }
    }
    let mut env = Env::process();
    match read(&mut env).and_then(|settings| match env.take_deferred() {
        Some(err) => Err(err),
        None => Ok(settings),
    }) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{binary}: {err}");
            std::process::exit(1);
        }
    }
}

/// The variables a `--help` text lists (its table's first column).
pub fn listed_variables(help: &str) -> Vec<&str> {
    help.lines()
        .filter(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            *name != "VARIABLE"
                && name.len() > 1
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

/// For the services' tests: runs `binary --help` with an empty environment and returns the
/// variables it lists, or why it is wrong: it did not exit 0, or it lists a variable that none
/// of `docs` (the READMEs' texts) names, so the docs have drifted from the code.
pub fn check_help(binary: &str, docs: &[&str]) -> Result<Vec<String>, String> {
    let output = std::process::Command::new(binary)
        .arg("--help")
        .env_clear()
        .output()
        .map_err(|e| format!("{binary} --help: {e}"))?;
    let help = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("{binary} --help exited with {}", output.status));
    }
    let listed = listed_variables(&help);
    let undocumented: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|name| !docs.iter().any(|doc| doc.contains(&format!("`{name}`"))))
        .collect();
    if !undocumented.is_empty() {
        return Err(format!(
            "{binary} --help lists variables no README documents (as `NAME`): {undocumented:?}"
        ));
    }
    Ok(listed.into_iter().map(String::from).collect())
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

/// A boolean: true/false, 1/0, yes/no.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
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
    /// `RATE_LIMIT_RPS`, `RATE_LIMIT_BURST`, `TRUSTED_PROXY_HOPS`.
    pub rate_limit: RateLimitConfig,
    /// `AUTH_MODE`, `API_KEYS`, `JWT_*`.
    pub auth: AuthConfig,
    /// `OTEL_*`: where traces are exported, if anywhere.
    pub tracing: TracingConfig,
}

impl ServiceConfig {
    /// The common variables, with `service`'s default port.
    pub fn read(env: &mut Env, service: &str, default_port: u16) -> Result<Self, ConfigError> {
        let port = env.var(
            "PORT",
            default_port,
            "HTTP port to listen on (0: any free port)",
        )?;
        let default_instance = format!("{service}-{port}");
        let settings = Self {
            port,
            instance_id: env.string(
                "INSTANCE_ID",
                &default_instance,
                "this instance's name, sent back in the x-served-by header",
            ),
            log_format: env.var("LOG_FORMAT", LogFormat::Text, "log lines as text or json")?,
            body_limit: env.var(
                "BODY_LIMIT_BYTES",
                64 * 1024,
                "request bodies larger than this are answered 413",
            )?,
            shutdown_timeout: env.millis(
                "SHUTDOWN_TIMEOUT_MS",
                Duration::from_secs(10),
                "on SIGTERM, how long requests in flight may take to finish",
            )?,
            rate_limit: RateLimitConfig::read(env)?,
            auth: AuthConfig::read(env)?,
            tracing: TracingConfig::read(env)?,
        };
        env.document(
            "RUST_LOG",
            "info",
            "log filter, tracing's EnvFilter syntax (e.g. info,cart_service=debug)",
        );
        Ok(settings)
    }

    /// A configuration for tests: ephemeral port, short drain.
    pub fn for_tests(instance_id: &str) -> Self {
        Self {
            port: 0,
            instance_id: instance_id.to_string(),
            log_format: LogFormat::Text,
            body_limit: 64 * 1024,
            shutdown_timeout: Duration::from_secs(2),
            rate_limit: RateLimitConfig::off(),
            auth: AuthConfig::off(),
            tracing: TracingConfig::off(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_variables_take_the_default() {
        let mut env = Env::from_pairs([("EMPTY", " ")]);
        assert_eq!(env.rate("UNSET", 0.1, "a rate"), Ok(0.1));
        assert_eq!(env.rate("EMPTY", 0.2, "a rate"), Ok(0.2));
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let mut env = Env::from_pairs([("FAILURE_RATE", "1.5"), ("CCA_TIMEOUT_MS", "2s")]);
        let err = env.rate("FAILURE_RATE", 0.0, "share").unwrap_err();
        assert_eq!(err.name, "FAILURE_RATE");
        assert!(err.to_string().contains("FAILURE_RATE=\"1.5\""), "{err}");
        let err = env
            .millis("CCA_TIMEOUT_MS", Duration::from_secs(1), "timeout")
            .unwrap_err();
        assert!(err.to_string().contains("milliseconds"), "{err}");
        assert!(parse_rate("abc").is_err());
        assert_eq!(parse_rate("0.5"), Ok(0.5));
    }

    #[test]
    fn set_values_are_parsed() {
        let mut env = Env::from_pairs([
            ("N", " 7 "),
            ("ON", "yes"),
            ("WAIT_MS", "250"),
            ("NAME", "x"),
            ("BASE", "http://localhost:8081/"),
        ]);
        assert_eq!(env.var("N", 1u32, "n"), Ok(7));
        assert_eq!(env.flag("ON", false, "on"), Ok(true));
        assert_eq!(
            env.millis("WAIT_MS", Duration::ZERO, "wait"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(env.string("NAME", "y", "name"), "x");
        assert_eq!(
            env.base_url("BASE", "http://a", "base"),
            Ok("http://localhost:8081".to_string())
        );
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
    fn counts_and_durations_must_be_at_least_one() {
        let mut env = Env::from_pairs([("ZERO", "0"), ("SEVEN", "7"), ("ZERO_MS", "0")]);
        let zero = env.positive("ZERO", 5u16, "count").unwrap_err();
        assert!(zero.to_string().contains("ZERO"), "{zero}");
        assert!(zero.to_string().contains("must be at least 1"), "{zero}");
        assert_eq!(env.positive("SEVEN", 5usize, "count").ok(), Some(7));
        assert_eq!(env.positive("UNSET", 5u32, "count").ok(), Some(5));
        assert!(env
            .positive_millis("ZERO_MS", Duration::from_secs(1), "wait")
            .is_err());
    }

    #[test]
    fn log_format_and_bool_parse() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(
            LogFormat::Json.to_string().parse::<LogFormat>(),
            Ok(LogFormat::Json)
        );
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
        let mut env = Env::from_pairs([("BAD_URL", "http://user:s3cret@host")]);
        let err = env.optional_url("BAD_URL", &["redis"], "url").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert_eq!(env.optional_url("UNSET_URL", &["redis"], "url"), Ok(None));
    }

    #[test]
    fn help_lists_every_variable_asked_for_once_with_its_default() {
        let mut env = Env::defaults();
        let service = ServiceConfig::read(&mut env, "demo", 8099).expect("defaults are valid");
        assert_eq!(service.port, 8099);
        assert_eq!(service.instance_id, "demo-8099");
        env.millis("SHUTDOWN_TIMEOUT_MS", Duration::from_secs(1), "asked again")
            .expect("default");
        env.optional_url("DATABASE_URL", &["postgres"], "the database")
            .expect("unset");
        let names: Vec<&str> = env.variables().iter().map(|v| v.name).collect();
        assert_eq!(
            names,
            [
                "PORT",
                "INSTANCE_ID",
                "LOG_FORMAT",
                "BODY_LIMIT_BYTES",
                "SHUTDOWN_TIMEOUT_MS",
                "RATE_LIMIT_RPS",
                "RATE_LIMIT_BURST",
                "TRUSTED_PROXY_HOPS",
                "AUTH_MODE",
                "API_KEYS",
                "JWT_JWKS",
                "JWT_ISSUER",
                "JWT_AUDIENCE",
                "JWT_LEEWAY_SECS",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_TRACES_SAMPLER_ARG",
                "OTEL_TRACES_SAMPLER",
                "OTEL_SDK_DISABLED",
                "OTEL_SERVICE_NAME",
                "OTEL_RESOURCE_ATTRIBUTES",
                "OTEL_BSP_MAX_QUEUE_SIZE",
                "RUST_LOG",
                "DATABASE_URL"
            ]
        );
        let help = env.help("demo", "a demo service.");
        assert!(help.starts_with("demo: a demo service."), "{help}");
        let port_line = help
            .lines()
            .find(|l| l.trim_start().starts_with("PORT"))
            .expect("PORT");
        assert!(port_line.contains("8099"), "{port_line}");
        let shutdown = help
            .lines()
            .find(|l| l.trim_start().starts_with("SHUTDOWN_TIMEOUT_MS"))
            .expect("listed");
        assert!(
            shutdown.contains("10000"),
            "the first ask's default wins: {shutdown}"
        );
        let db = help
            .lines()
            .find(|l| l.contains("DATABASE_URL"))
            .expect("listed");
        assert!(db.contains("(unset)"), "{db}");
    }

    #[test]
    fn the_defaults_ignore_the_process_environment() {
        // PATH is set in every process; reading with defaults must not see it.
        let mut env = Env::defaults();
        assert_eq!(env.string("PATH", "none", "not really"), "none");
    }
}
