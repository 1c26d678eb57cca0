//! Helpers for the services' integration tests (feature `test-support`): every test gets its own
//! PostgreSQL database and its own Redis key prefix on the real servers, so tests run in parallel
//! without seeing each other, and a [`FaultyProxy`] puts a dependency's outage (or a stall)
//! between a running service and the real server. [`otlp::OtlpReceiver`] collects the spans the
//! services export.
//!
//! Leftovers are swept, not leaked: databases and keys carry the creating process's id, and a new
//! test removes those whose process has exited (nextest runs each test in its own process).

pub mod otlp;

use crate::store::postgres::PgConfig;
use crate::store::redis::RedisConfig;
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The server tests create their databases on (`TEST_DATABASE_URL`, a database to connect to for
/// `CREATE DATABASE`).
pub fn admin_database_url() -> String {
    crate::config::Env::process().string(
        "TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
        "the test server",
    )
}

/// The Redis tests use (`TEST_REDIS_URL`).
pub fn redis_url() -> String {
    crate::config::Env::process().string(
        "TEST_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "the test Redis",
    )
}

const DB_PREFIX: &str = "shop_test_";
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

fn unique_suffix() -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let random = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{}_{n}_{random}", std::process::id())
}

fn process_alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A fresh, empty database of its own on the real PostgreSQL.
pub struct TestDatabase {
    pub name: String,
    /// The database's URL, for `DATABASE_URL`.
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin_url = admin_database_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("tests need PostgreSQL at {admin_url}: {e}"));
        sweep_databases(&mut admin).await;
        let name = format!("{DB_PREFIX}{}", unique_suffix());
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// A service configuration for this database and `schema`.
    pub fn config(&self, schema: &str) -> PgConfig {
        PgConfig::for_tests(&self.url, schema)
    }
}

/// Drops the test databases whose creating process has exited.
async fn sweep_databases(admin: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'shop\\_test\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for name in names {
        let pid = name[DB_PREFIX.len()..].split('_').next().unwrap_or("");
        if !pid.is_empty() && !process_alive(pid) {
            // Another test may be sweeping the same one: errors are fine.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

/// A Redis key prefix of this test's own, on the real Redis.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    pub async fn create() -> Self {
        let url = redis_url();
        sweep_redis(&url).await;
        Self {
            prefix: format!("test:{}:", unique_suffix()),
            url,
        }
    }

    pub fn config(&self) -> RedisConfig {
        RedisConfig::for_tests(&self.url, &self.prefix)
    }
}

/// Deletes the keys of test processes that have exited.
async fn sweep_redis(url: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        panic!("tests need Redis at {url}");
    };
    let keys: Vec<String> = match redis::cmd("KEYS")
        .arg("test:*")
        .query_async(&mut connection)
        .await
    {
        Ok(keys) => keys,
        Err(_) => return,
    };
    let dead: Vec<&String> = keys
        .iter()
        .filter(|key| {
            let pid = key
                .split(':')
                .nth(1)
                .unwrap_or("")
                .split('_')
                .next()
                .unwrap_or("");
            !pid.is_empty() && !process_alive(pid)
        })
        .collect();
    for chunk in dead.chunks(500) {
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut connection)
            .await;
    }
}

/// A free port nobody listens on.
pub async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Bytes from the server are held back: requests arrive, answers do not.
    Stall,
    /// Every connection is closed and new ones are refused: the server is "down".
    Cut,
}

/// A TCP proxy in front of a real server (the broker, PostgreSQL, Redis), to put network faults
/// between a service and it.
pub struct FaultyProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
}

impl FaultyProxy {
    /// Proxies to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (mode, _) = watch::channel(Mode::Pass);
        let modes = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *modes.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, modes.subscribe()));
            }
        });
        Self { port, mode }
    }

    /// `url` with its `host:port` replaced by this proxy's address.
    pub fn url_for(&self, url: &str) -> String {
        let Some(scheme_end) = url.find("://") else {
            return url.to_string();
        };
        let rest = &url[scheme_end + 3..];
        let host_start = rest.rfind('@').map(|at| at + 1).unwrap_or(0);
        let host_end = rest[host_start..]
            .find(['/', '?'])
            .map(|i| host_start + i)
            .unwrap_or(rest.len());
        format!(
            "{}{}127.0.0.1:{}{}",
            &url[..scheme_end + 3],
            &rest[..host_start],
            self.port,
            &rest[host_end..]
        )
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn pipe(client: TcpStream, server: TcpStream, mode: watch::Receiver<Mode>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up_mode = mode.clone();
    let upstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                read = client_read.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if server_write.write_all(&buf[..n]).await.is_err() { return },
                },
                _ = wait_for(&mut up_mode, Mode::Cut) => return,
            }
        }
    };
    let mut down_mode = mode;
    let downstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                read = server_read.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                _ = wait_for(&mut down_mode, Mode::Cut) => return,
            };
            // Hold the bytes while stalled; give up if cut meanwhile.
            loop {
                let current = *down_mode.borrow_and_update();
                match current {
                    Mode::Pass => break,
                    Mode::Cut => return,
                    Mode::Stall => {
                        if down_mode.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either direction ending closes both sockets (both halves are dropped).
    tokio::select! {
        () = upstream => {},
        () = downstream => {},
    }
}

async fn wait_for(mode: &mut watch::Receiver<Mode>, wanted: Mode) {
    loop {
        if *mode.borrow_and_update() == wanted {
            return;
        }
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn proxy_urls_keep_credentials_path_and_query() {
        let proxy = FaultyProxy::start("127.0.0.1:5432").await;
        let p = proxy.port;
        assert_eq!(
            proxy.url_for("postgres://postgres@127.0.0.1:5432/shop_1"),
            format!("postgres://postgres@127.0.0.1:{p}/shop_1")
        );
        assert_eq!(
            proxy.url_for("amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=16384"),
            format!("amqp://guest:guest@127.0.0.1:{p}/%2f?frame_max=16384")
        );
        assert_eq!(
            proxy.url_for("redis://127.0.0.1:6379"),
            format!("redis://127.0.0.1:{p}")
        );
    }
}

/// A RabbitMQ node with a TLS listener and its throwaway certificate authorities, started (once,
/// shared by every test) by `scripts/rabbitmq-tls.sh up`.
#[derive(Debug, Clone)]
pub struct TlsBroker {
    /// `amqps://guest:guest@localhost:PORT/%2f`: the server's certificate names localhost.
    pub url: String,
    /// The CA that signed the node's certificate.
    pub ca_pem: String,
    /// An unrelated CA: a client that trusts only this one must refuse the node.
    pub wrong_ca_pem: String,
}

impl TlsBroker {
    /// Starts the node if it is not running (a few seconds the first time) and reads its
    /// settings. Panics with the script's output when it cannot: the amqps tests need it.
    pub fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/rabbitmq-tls.sh");
        let output = std::process::Command::new("bash")
            .arg(script)
            .arg("up")
            .output()
            .unwrap_or_else(|e| panic!("running {script}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{script} up failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let setting = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{script} up printed no {key}:\n{stdout}"))
                .to_string()
        };
        let read = |path: String| {
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
        };
        Self {
            url: setting("AMQPS_URL"),
            ca_pem: read(setting("AMQPS_CA_FILE")),
            wrong_ca_pem: read(setting("AMQPS_WRONG_CA_FILE")),
        }
    }
}
