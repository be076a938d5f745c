//! [`Config`]: regrelay's one typed configuration.
//!
//! Layers, lowest first: the embedded `config.default.toml` (which is also the reference), the file
//! given with `--config` or `REGRELAY_CONFIG`, then `REGRELAY_*` environment variables. Validation
//! runs once, after layering, so a bad value is reported with its key before anything starts.
//!
//! Every secret ([`SECRET_KEYS`]) can instead be given as a file: `REGRELAY_<KEY>_FILE` names it
//! (a Kubernetes secret mount, a Docker secret); its content, less one trailing newline, is the
//! value, at the environment's layer. Setting both `REGRELAY_<KEY>` and `REGRELAY_<KEY>_FILE` is
//! an error naming both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The embedded defaults.
pub const DEFAULTS: &str = include_str!("config.default.toml");

/// Keys whose `REGRELAY_*` value is used verbatim, never parsed as a number, bool or list.
const TEXT_KEYS: &[&str] = &[
    "amqp_url",
    "queue_prefix",
    "database_url",
    "admin_user",
    "admin_password",
    "api_token",
    "ingest_token",
    "secrets_key",
    "log_level",
    "otlp_endpoint",
    "amqp_ca_file",
    "amqp_client_cert_file",
    "amqp_client_key_file",
];

/// Keys that hold secrets: each can also be read from the file `REGRELAY_<KEY>_FILE` names.
/// Every one is also in [`TEXT_KEYS`].
pub const SECRET_KEYS: &[&str] = &[
    "amqp_url",
    "database_url",
    "admin_password",
    "api_token",
    "ingest_token",
    "secrets_key",
];

#[derive(Debug, Deserialize)]
pub struct Config {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// RabbitMQ URL (holds a password), or several separated by commas (a cluster).
    pub amqp_url: SecretString,
    /// PEM CA certificates trusted for `amqps://` besides the system roots.
    pub amqp_ca_file: Option<PathBuf>,
    /// PEM client certificate for `amqps://` brokers that require one.
    pub amqp_client_cert_file: Option<PathBuf>,
    /// The client certificate's PEM private key.
    pub amqp_client_key_file: Option<PathBuf>,
    /// Prefix of every exchange and queue name.
    pub queue_prefix: String,
    /// Confirm-mode publishing channels.
    pub publish_channels: usize,
    /// How long ingest waits for confirms.
    #[serde(with = "humantime_serde")]
    pub publish_confirm_timeout: Duration,
    /// How long the consumer waits in all for late confirms before publishing again.
    #[serde(with = "humantime_serde")]
    pub publish_confirm_patience: Duration,
    /// Upper bound of one broker connect attempt.
    #[serde(with = "humantime_serde")]
    pub broker_connect_timeout: Duration,
    /// First delay after a failed broker connect.
    #[serde(with = "humantime_serde")]
    pub broker_reconnect_min_delay: Duration,
    /// Largest delay between broker connect attempts.
    #[serde(with = "humantime_serde")]
    pub broker_reconnect_max_delay: Duration,
    /// PostgreSQL URL (may hold a password).
    pub database_url: SecretString,
    /// Pool size per process.
    pub database_max_connections: usize,
    /// Administrator user of the policy API.
    pub admin_user: String,
    /// Administrator password; required by the api role.
    pub admin_password: Option<SecretString>,
    /// Optional bearer token for the policy API.
    pub api_token: Option<SecretString>,
    /// Total attempts per delivery (Harbor's `webhook_job_max_retry`).
    #[serde(default = "default_max_attempts", alias = "webhook_job_max_retry")]
    pub max_attempts: u32,
    /// Per-attempt timeout (Harbor's `webhook_job_http_client_timeout`, seconds).
    #[serde(
        default = "default_http_timeout",
        alias = "webhook_job_http_client_timeout",
        deserialize_with = "duration_or_seconds"
    )]
    pub http_timeout: Duration,
    /// First retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_initial_delay: Duration,
    /// Largest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// Growth of the retry delay per failure.
    pub retry_multiplier: f64,
    /// Allow deliveries to private addresses (development, tests).
    pub allow_private_targets: bool,
    /// Prefetch of the matching stage.
    pub matching_prefetch: u16,
    /// Prefetch of the delivery stage.
    pub delivery_prefetch: u16,
    /// Attempts in flight per target.
    pub per_target_concurrency: usize,
    /// Tasks waiting per target before deferral.
    pub per_target_max_waiting: usize,
    /// Wait of a deferred task.
    #[serde(with = "humantime_serde")]
    pub deferral_delay: Duration,
    /// The matching stage makes first attempts to fast targets itself.
    pub direct_first_attempt: bool,
    /// Policy cache refresh interval.
    #[serde(with = "humantime_serde")]
    pub policy_refresh_interval: Duration,
    /// How often each consumer reads its queues' depths (`regrelay_queue_messages`); `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub queue_depth_interval: Duration,
    /// Consecutive failed attempts that open a target's circuit; 0 turns the breaker off.
    pub breaker_failures: u32,
    /// The first probe of an open circuit; later ones double, up to `retry_max_delay`.
    #[serde(with = "humantime_serde")]
    pub breaker_probe_interval: Duration,
    /// A target whose circuit stays open this long is disabled; `0s` (the default) never.
    #[serde(with = "humantime_serde")]
    pub auto_disable_after: Duration,
    /// How long a stage waits out a database or broker outage holding a message, before it parks
    /// the message in a delay queue.
    #[serde(with = "humantime_serde")]
    pub outage_hold: Duration,
    /// How long an attempted delivery waits for its history record while the database is down,
    /// before it is settled without it.
    #[serde(with = "humantime_serde")]
    pub history_outage_hold: Duration,
    /// Bytes of message bodies each consumer stage may hold at once.
    pub max_in_flight_bytes: usize,
    /// Record delivery history in PostgreSQL.
    pub history_enabled: bool,
    /// Most history records written in one transaction.
    pub history_batch_size: usize,
    /// Longest a history record waits for its batch to fill.
    #[serde(with = "humantime_serde")]
    pub history_linger: Duration,
    /// History batches written at once (each its own transaction).
    pub history_write_concurrency: usize,
    /// Finished executions kept per policy by the retention sweep.
    pub history_keep_per_policy: usize,
    /// Finished executions older than this are swept.
    #[serde(with = "humantime_serde")]
    pub history_max_age: Duration,
    /// Time between retention sweeps; 0 turns the sweep off in this process.
    #[serde(with = "humantime_serde")]
    pub history_sweep_interval: Duration,
    /// Rows deleted per sweep statement.
    pub history_sweep_batch: usize,
    /// Vacuum the history tables after a sweep that deleted rows.
    pub history_sweep_vacuum: bool,
    /// After each sweep delete batch, pause this many times as long as it took (0: no pauses).
    pub history_sweep_pause_ratio: f64,
    /// Spread each sweep's deletions over this share of `history_sweep_interval` (0: a burst).
    pub history_sweep_spread: f64,
    /// Compact (copy the kept rows aside, truncate, put them back) when what a sweep keeps is at
    /// most this share of the executions; 0 never compacts.
    pub history_sweep_compact_share: f64,
    /// How often the consumer reads the dead-letter queue's depth for its gauge.
    #[serde(with = "humantime_serde")]
    pub dead_letter_depth_interval: Duration,
    /// Bearer token of the ingest endpoint; required.
    pub ingest_token: Option<SecretString>,
    /// Keys sealing policy credentials at rest: `id:base64(32 bytes)[,...]`, the first seals.
    pub secrets_key: Option<SecretString>,
    /// Largest ingest body in bytes.
    pub max_body_bytes: usize,
    /// Longest an HTTP request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's head; then the connection is closed.
    #[serde(with = "humantime_serde")]
    pub http_header_read_timeout: Duration,
    /// A keep-alive connection idle this long between requests is closed.
    #[serde(with = "humantime_serde")]
    pub http_idle_timeout: Duration,
    /// HTTP connections served at once; over it the server stops accepting until one closes.
    pub http_max_connections: usize,
    /// Drain time after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Default log filter when RUST_LOG is unset.
    pub log_level: String,
    /// OTLP/HTTP base URL of an OpenTelemetry collector; `None` turns trace export off.
    pub otlp_endpoint: Option<String>,
    /// Longest one span export request may take.
    #[serde(with = "humantime_serde")]
    pub otlp_timeout: Duration,
    /// Share of new traces recorded (parent-based: a sampled parent is always followed).
    pub trace_sample_ratio: f64,
}

/// A text key's value from the environment, verbatim: `REGRELAY_<KEY>`, or for a secret the
/// content of the file `REGRELAY_<KEY>_FILE` names, less one trailing newline (`echo` and most
/// editors add one; a Kubernetes secret mount keeps the bytes as given).
fn text_from_env(key: &str) -> Result<Option<String>, ConfigError> {
    let plain = format!("REGRELAY_{}", key.to_ascii_uppercase());
    let file = format!("{plain}_FILE");
    let from_file = match std::env::var_os(&file) {
        Some(path) if SECRET_KEYS.contains(&key) => Some(path),
        _ => None,
    };
    match (std::env::var(&plain), from_file) {
        (Ok(_), Some(_)) => Err(ConfigError::BothSet { plain, file }),
        (Ok(value), None) => Ok(Some(value)),
        (Err(_), None) => Ok(None),
        (Err(_), Some(path)) => {
            let content =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
                    var: file,
                    path: Path::new(&path).display().to_string(),
                    source,
                })?;
            let value = match content.strip_suffix('\n') {
                Some(line) => line.strip_suffix('\r').unwrap_or(line),
                None => &content,
            };
            Ok(Some(value.to_owned()))
        }
    }
}

/// Whether `var` is `REGRELAY_<KEY>_FILE` for a `<KEY>` that is a setting but not a secret (e.g.
/// `REGRELAY_QUEUE_PREFIX_FILE`): a file would be silently ignored. Keys that themselves end in
/// `_file` (`REGRELAY_AMQP_CA_FILE` is `amqp_ca_file`) are not this.
fn names_a_file_of_a_plain_key(var: &str) -> bool {
    let Some(key) = var
        .strip_prefix("REGRELAY_")
        .and_then(|rest| rest.strip_suffix("_FILE"))
        .map(str::to_ascii_lowercase)
    else {
        return false;
    };
    !SECRET_KEYS.contains(&key.as_str()) && reference_keys().any(|known| known == key)
}

/// Every key of the defaults file (commented-out optional ones included), plus the two whose
/// defaults live in code.
fn reference_keys() -> impl Iterator<Item = &'static str> {
    DEFAULTS
        .lines()
        .filter_map(|line| {
            let line = line.strip_prefix("# ").unwrap_or(line);
            let (key, _) = line.split_once(" = ")?;
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
                .then_some(key)
        })
        .chain(["max_attempts", "http_timeout"])
}

fn default_max_attempts() -> u32 {
    10
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(3)
}

/// A duration written as text (`"3s"`, `"500ms"`) or, as Harbor's setting is, a number of seconds.
fn duration_or_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => match t.trim().parse::<u64>() {
            Ok(s) => Ok(Duration::from_secs(s)),
            Err(_) => humantime_serde::re::humantime::parse_duration(&t)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?}: {e}"))),
        },
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(String),
    // Not `#[source]`: figment's message already holds the whole story, and a source would
    // print it twice in the binary's cause chain.
    #[error("invalid configuration: {0}")]
    Parse(Box<figment::Error>),
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("invalid configuration: {plain} and {file} are both set; set only one of them")]
    BothSet { plain: String, file: String },
    #[error("invalid configuration: cannot read {path}, the file {var} names")]
    SecretFile {
        var: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid configuration: {var}: only secret settings can be read from a file ({})",
        SECRET_KEYS.join(", ")
    )]
    NotASecret { var: String },
}

impl Config {
    /// Loads the layered configuration; `file` is the `--config` argument, if any.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file(path));
        }
        // REGRELAY_CONFIG names the file itself; it is not a key. Figment parses environment
        // values (`12345` becomes a number, `true` a bool, `"x"` loses its quotes), which would
        // refuse or alter a token or password that happens to look like one: text keys are
        // taken verbatim instead.
        let file_keys: Vec<String> = SECRET_KEYS.iter().map(|k| format!("{k}_file")).collect();
        let mut ignored = vec!["config"];
        ignored.extend_from_slice(TEXT_KEYS);
        ignored.extend(file_keys.iter().map(String::as_str));
        figment = figment.merge(Env::prefixed("REGRELAY_").ignore(&ignored));
        let mut verbatim = figment::value::Dict::new();
        for key in TEXT_KEYS {
            if let Some(value) = text_from_env(key)? {
                verbatim.insert((*key).to_owned(), value.into());
            }
        }
        if let Some(var) = std::env::vars_os()
            .filter_map(|(var, _)| var.into_string().ok())
            .find(|var| names_a_file_of_a_plain_key(var))
        {
            return Err(ConfigError::NotASecret { var });
        }
        figment = figment.merge(Serialized::defaults(verbatim));
        let config: Config = figment
            .extract()
            .map_err(|error| ConfigError::Parse(Box::new(error)))?;
        config.validate()?;
        Ok(config)
    }

    /// The TLS files of `amqps://` addresses.
    pub fn broker_tls(&self) -> regrelay_producer::BrokerTls {
        // An empty value (as the chart renders an unset key) is no file.
        let file = |path: &Option<PathBuf>| path.clone().filter(|p| !p.as_os_str().is_empty());
        regrelay_producer::BrokerTls {
            ca_file: file(&self.amqp_ca_file),
            client_cert_file: file(&self.amqp_client_cert_file),
            client_key_file: file(&self.amqp_client_key_file),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        const MAX_HOLD: Duration = Duration::from_secs(25 * 60);
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        let tls = self.broker_tls();
        if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
            return Err(invalid(
                "amqp_client_cert_file",
                "amqp_client_cert_file and amqp_client_key_file must be set together",
            ));
        }
        for amqp in regrelay_producer::broker::addresses(self.amqp_url.expose_secret()) {
            if !(amqp.starts_with("amqp://") || amqp.starts_with("amqps://")) {
                return Err(invalid(
                    "amqp_url",
                    "must start with amqp:// or amqps:// (several addresses: separated by commas, each a whole URL)",
                ));
            }
        }
        if let Err(error) = regrelay_producer::Topology::new(self.queue_prefix.clone()) {
            return Err(invalid("queue_prefix", &error.to_string()));
        }
        if self.publish_channels == 0 || self.publish_channels > 64 {
            return Err(invalid("publish_channels", "must be between 1 and 64"));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        if self.broker_reconnect_min_delay > self.broker_reconnect_max_delay {
            return Err(invalid(
                "broker_reconnect_min_delay",
                "must not exceed broker_reconnect_max_delay",
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > 1000 {
            return Err(invalid("max_attempts", "must be between 1 and 1000"));
        }
        if !(self.history_sweep_pause_ratio >= 0.0 && self.history_sweep_pause_ratio <= 10.0) {
            return Err(invalid(
                "history_sweep_pause_ratio",
                "must be between 0.0 and 10.0",
            ));
        }
        if !(self.history_sweep_spread >= 0.0 && self.history_sweep_spread <= 0.95) {
            return Err(invalid(
                "history_sweep_spread",
                "must be between 0.0 and 0.95",
            ));
        }
        if !(self.history_sweep_compact_share >= 0.0 && self.history_sweep_compact_share <= 1.0) {
            return Err(invalid(
                "history_sweep_compact_share",
                "must be between 0.0 and 1.0",
            ));
        }
        if !(self.retry_multiplier >= 1.0 && self.retry_multiplier <= 100.0) {
            return Err(invalid("retry_multiplier", "must be between 1.0 and 100.0"));
        }
        if self.retry_initial_delay > self.retry_max_delay {
            return Err(invalid(
                "retry_initial_delay",
                "must not exceed retry_max_delay",
            ));
        }
        // RabbitMQ closes a channel that holds a message unacked for `consumer_timeout` (30 min by
        // default) and re-sends everything it held: stay well below it.
        for (key, hold) in [
            ("outage_hold", self.outage_hold),
            ("history_outage_hold", self.history_outage_hold),
        ] {
            if hold > MAX_HOLD {
                return Err(invalid(
                    key,
                    "must be at most 25m (RabbitMQ's consumer_timeout is 30 min)",
                ));
            }
        }
        if self.max_in_flight_bytes < 65536 {
            return Err(invalid("max_in_flight_bytes", "must be at least 65536"));
        }
        if self.matching_prefetch == 0 || self.delivery_prefetch == 0 {
            return Err(invalid(
                "delivery_prefetch",
                "matching_prefetch and delivery_prefetch must be at least 1",
            ));
        }
        if self.per_target_concurrency == 0 {
            return Err(invalid("per_target_concurrency", "must be at least 1"));
        }
        if self.http_max_connections == 0 {
            return Err(invalid("http_max_connections", "must be at least 1"));
        }
        if self.http_idle_timeout > self.http_header_read_timeout {
            return Err(invalid(
                "http_idle_timeout",
                "must not exceed http_header_read_timeout: the header-read timer also runs while a keep-alive connection waits for its next request, so a longer idle timeout would never be reached",
            ));
        }
        if self.database_max_connections == 0 {
            return Err(invalid("database_max_connections", "must be at least 1"));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let valid = url::Url::parse(endpoint)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
            if !valid {
                return Err(invalid(
                    "otlp_endpoint",
                    "must be an http:// or https:// URL, the collector's OTLP/HTTP base (e.g. http://otel-collector:4318)",
                ));
            }
        }
        self.secrets_keyring()?;
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(invalid("trace_sample_ratio", "must be between 0.0 and 1.0"));
        }
        for (key, value) in [
            ("otlp_timeout", self.otlp_timeout),
            ("publish_confirm_timeout", self.publish_confirm_timeout),
            ("publish_confirm_patience", self.publish_confirm_patience),
            ("broker_connect_timeout", self.broker_connect_timeout),
            ("request_timeout", self.request_timeout),
            ("http_header_read_timeout", self.http_header_read_timeout),
            ("http_idle_timeout", self.http_idle_timeout),
            ("http_timeout", self.http_timeout),
            ("retry_initial_delay", self.retry_initial_delay),
            ("policy_refresh_interval", self.policy_refresh_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        Ok(())
    }

    /// The administrator password, required by roles that serve the policy API.
    pub fn require_admin_password(&self) -> Result<SecretString, ConfigError> {
        match &self.admin_password {
            Some(password) if !password.expose_secret().is_empty() => Ok(password.clone()),
            _ => Err(ConfigError::Invalid {
                key: "admin_password",
                message: "is not set; set REGRELAY_ADMIN_PASSWORD (or admin_password in the config file) for the policy API's administrator".into(),
            }),
        }
    }

    /// The keys of `secrets_key`; `None` when it is unset or empty (credentials stored as given).
    pub fn secrets_keyring(&self) -> Result<Option<regrelay_history::SecretsKeyring>, ConfigError> {
        match &self.secrets_key {
            Some(keys) if !keys.expose_secret().trim().is_empty() => {
                regrelay_history::SecretsKeyring::parse(keys.expose_secret())
                    .map(Some)
                    .map_err(|error| ConfigError::Invalid {
                        key: "secrets_key",
                        message: error.to_string(),
                    })
            }
            _ => Ok(None),
        }
    }

    /// The ingest token, required by roles that serve the ingest endpoint.
    pub fn require_ingest_token(&self) -> Result<SecretString, ConfigError> {
        match &self.ingest_token {
            Some(token) if !token.expose_secret().trim().is_empty() => Ok(token.clone()),
            _ => Err(ConfigError::Invalid {
                key: "ingest_token",
                message: "is not set; set REGRELAY_INGEST_TOKEN (or ingest_token in the config file) to the bearer token producers will send".into(),
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return its large error type.
mod tests {
    use super::*;

    #[test]
    fn secrets_and_other_text_from_the_environment_are_taken_verbatim() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("REGRELAY_INGEST_TOKEN", "12345");
            jail.set_env("REGRELAY_ADMIN_PASSWORD", "true");
            jail.set_env("REGRELAY_API_TOKEN", "\"quoted\"");
            jail.set_env("REGRELAY_ADMIN_USER", "[ops]");
            // Not a text key: still parsed as a number.
            jail.set_env("REGRELAY_TRACE_SAMPLE_RATIO", "0.25");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            let secret =
                |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
            assert_eq!(secret(&config.ingest_token).as_deref(), Some("12345"));
            assert_eq!(secret(&config.admin_password).as_deref(), Some("true"));
            assert_eq!(secret(&config.api_token).as_deref(), Some("\"quoted\""));
            assert_eq!(config.admin_user, "[ops]");
            assert_eq!(config.trace_sample_ratio, 0.25);
            Ok(())
        });
    }

    #[test]
    fn secrets_can_be_read_from_files() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("database_url", "postgres://app:s3cret@db/regrelay\n")?;
            jail.create_file("ingest_token", "token-without-newline")?;
            jail.create_file("admin_password", "two-newlines\n\n")?;
            jail.create_file("api_token", "crlf\r\n")?;
            let dir = jail.directory().to_owned();
            let path = |name: &str| dir.join(name).display().to_string();
            jail.set_env("REGRELAY_DATABASE_URL_FILE", path("database_url"));
            jail.set_env("REGRELAY_INGEST_TOKEN_FILE", path("ingest_token"));
            jail.set_env("REGRELAY_ADMIN_PASSWORD_FILE", path("admin_password"));
            jail.set_env("REGRELAY_API_TOKEN_FILE", path("api_token"));
            let config = Config::load(None).map_err(|e| e.to_string())?;
            let secret =
                |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
            assert_eq!(
                config.database_url.expose_secret(),
                "postgres://app:s3cret@db/regrelay"
            );
            assert_eq!(
                secret(&config.ingest_token).as_deref(),
                Some("token-without-newline")
            );
            // Only one trailing newline is the file's end; the rest is the value.
            assert_eq!(
                secret(&config.admin_password).as_deref(),
                Some("two-newlines\n")
            );
            assert_eq!(secret(&config.api_token).as_deref(), Some("crlf"));
            // A file beats the config file's value, as the environment does.
            jail.create_file(
                "regrelay.toml",
                "database_url = \"postgres://other@elsewhere/x\"\n",
            )?;
            let config =
                Config::load(Some(Path::new("regrelay.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                config.database_url.expose_secret(),
                "postgres://app:s3cret@db/regrelay"
            );
            Ok(())
        });
    }

    #[test]
    fn a_secret_set_twice_or_a_missing_file_is_refused_by_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("token", "from-file")?;
            jail.set_env("REGRELAY_INGEST_TOKEN", "from-env");
            jail.set_env("REGRELAY_INGEST_TOKEN_FILE", "token");
            let error = Config::load(None).unwrap_err();
            let text = error.to_string();
            assert!(matches!(error, ConfigError::BothSet { .. }), "{text}");
            assert!(
                text.contains("REGRELAY_INGEST_TOKEN and REGRELAY_INGEST_TOKEN_FILE"),
                "{text}"
            );
            assert!(
                !text.contains("from-env") && !text.contains("from-file"),
                "{text}"
            );

            // The jail restores it afterwards: it set it.
            std::env::remove_var("REGRELAY_INGEST_TOKEN");
            jail.set_env("REGRELAY_INGEST_TOKEN_FILE", "/nonexistent/token");
            let text = Config::load(None).unwrap_err().to_string();
            assert!(text.contains("/nonexistent/token"), "{text}");
            assert!(text.contains("REGRELAY_INGEST_TOKEN_FILE"), "{text}");

            jail.set_env("REGRELAY_INGEST_TOKEN_FILE", "token");
            jail.set_env("REGRELAY_QUEUE_PREFIX_FILE", "token");
            let text = Config::load(None).unwrap_err().to_string();
            assert!(text.contains("REGRELAY_QUEUE_PREFIX_FILE"), "{text}");
            Ok(())
        });
        // A key whose own name ends in _file is not a file variable.
        assert!(!names_a_file_of_a_plain_key("REGRELAY_AMQP_CA_FILE"));
        assert!(!names_a_file_of_a_plain_key("REGRELAY_DATABASE_URL_FILE"));
        assert!(!names_a_file_of_a_plain_key("REGRELAY_NO_SUCH_KEY_FILE"));
        assert!(names_a_file_of_a_plain_key("REGRELAY_LOG_LEVEL_FILE"));
        figment::Jail::expect_with(|jail| {
            jail.create_file("ca.pem", "")?;
            jail.set_env("REGRELAY_AMQP_CA_FILE", "ca.pem");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert!(config.amqp_ca_file.is_some());
            Ok(())
        });
    }

    #[test]
    fn trace_settings_are_validated() {
        figment::Jail::expect_with(|jail| {
            assert!(Config::load(None)
                .map_err(|e| e.to_string())?
                .otlp_endpoint
                .is_none());
            jail.set_env("REGRELAY_OTLP_ENDPOINT", "otel-collector:4318");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("otlp_endpoint"), "{error}");
            jail.set_env("REGRELAY_OTLP_ENDPOINT", "http://otel-collector:4318");
            jail.set_env("REGRELAY_TRACE_SAMPLE_RATIO", "1.5");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("trace_sample_ratio"), "{error}");
            jail.set_env("REGRELAY_TRACE_SAMPLE_RATIO", "0.1");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                config.otlp_endpoint.as_deref(),
                Some("http://otel-collector:4318")
            );
            Ok(())
        });
    }

    #[test]
    fn every_key_is_documented_and_has_a_helm_value() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let values = std::fs::read_to_string(root.join("helm/regrelay/values.yaml")).unwrap();
        let keys: Vec<&str> = reference_keys().collect();
        assert!(keys.len() > 40, "{keys:?}");
        for key in &keys {
            assert!(
                docs.contains(&format!("| `{key}`")),
                "{key} has no row in docs/configuration.md"
            );
            assert!(
                values
                    .lines()
                    .any(|line| line.trim_start().starts_with(&format!("{key}:"))),
                "{key} has no entry in helm/regrelay/values.yaml"
            );
        }
    }

    // figment::Jail serialises environment changes between tests and restores them afterwards.
    #[test]
    fn defaults_load_and_env_overrides() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(config.queue_prefix, "regrelay");
            assert_eq!(config.publish_confirm_timeout, Duration::from_secs(5));
            assert!(config.require_ingest_token().is_err());

            jail.set_env("REGRELAY_LISTEN", "0.0.0.0:9999");
            jail.set_env("REGRELAY_QUEUE_PREFIX", "acme");
            jail.set_env("REGRELAY_INGEST_TOKEN", "s3cret");
            jail.set_env("REGRELAY_PUBLISH_CONFIRM_TIMEOUT", "250ms");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.listen.to_string(), "0.0.0.0:9999");
            assert_eq!(config.queue_prefix, "acme");
            assert_eq!(config.publish_confirm_timeout, Duration::from_millis(250));
            assert_eq!(
                config
                    .require_ingest_token()
                    .map_err(|e| e.to_string())?
                    .expose_secret(),
                "s3cret"
            );
            Ok(())
        });
    }

    #[test]
    fn file_layers_under_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "regrelay.toml",
                "queue_prefix = \"fromfile\"\nmax_body_bytes = 4096\n",
            )?;
            let config =
                Config::load(Some(Path::new("regrelay.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.queue_prefix, "fromfile");
            assert_eq!(config.max_body_bytes, 4096);
            jail.set_env("REGRELAY_QUEUE_PREFIX", "fromenv");
            let config =
                Config::load(Some(Path::new("regrelay.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.queue_prefix, "fromenv");
            Ok(())
        });
    }

    #[test]
    fn http_connection_limits_load_and_are_validated() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.http_header_read_timeout, Duration::from_secs(10));
            assert_eq!(config.http_idle_timeout, Duration::from_secs(5));
            assert_eq!(config.http_max_connections, 1024);
            jail.set_env("REGRELAY_HTTP_IDLE_TIMEOUT", "30s");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("http_idle_timeout"), "{error}");
            jail.set_env("REGRELAY_HTTP_HEADER_READ_TIMEOUT", "1m");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.http_idle_timeout, Duration::from_secs(30));
            jail.set_env("REGRELAY_HTTP_MAX_CONNECTIONS", "0");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("http_max_connections"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("REGRELAY_QUEUE_PREFIX", "has space");
            let error = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("queue_prefix"), "{error}");
            jail.set_env("REGRELAY_QUEUE_PREFIX", "ok");
            jail.set_env("REGRELAY_REQUEST_TIMEOUT", "soon");
            let error = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            // figment names environment keys as written there (REQUEST_TIMEOUT).
            assert!(error.to_lowercase().contains("request_timeout"), "{error}");
            Ok(())
        });
        let missing = Config::load(Some(Path::new("/nonexistent/regrelay.toml")));
        assert!(matches!(missing, Err(ConfigError::MissingFile(_))));
    }

    #[test]
    fn harbor_setting_names_are_accepted() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.max_attempts, 10);
            assert_eq!(config.http_timeout, Duration::from_secs(3));
            jail.create_file(
                "harbor.toml",
                "webhook_job_max_retry = 3\nwebhook_job_http_client_timeout = 7\n",
            )?;
            let config = Config::load(Some(Path::new("harbor.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.max_attempts, 3);
            assert_eq!(config.http_timeout, Duration::from_secs(7));
            jail.set_env("REGRELAY_HTTP_TIMEOUT", "500ms");
            jail.set_env("REGRELAY_MAX_ATTEMPTS", "5");
            jail.create_file("regrelay.toml", "")?;
            let config =
                Config::load(Some(Path::new("regrelay.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.http_timeout, Duration::from_millis(500));
            assert_eq!(config.max_attempts, 5);
            jail.set_env("REGRELAY_HTTP_TIMEOUT", "2");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.http_timeout, Duration::from_secs(2));
            Ok(())
        });
    }

    #[test]
    fn debug_output_hides_secrets() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("REGRELAY_INGEST_TOKEN", "topsecret-token");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            let shown = format!("{config:?}");
            assert!(!shown.contains("topsecret-token"));
            assert!(!shown.contains("guest:guest"));
            Ok(())
        });
    }
}
