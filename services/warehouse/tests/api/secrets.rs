//! Secrets stay out of the logs: the real binary, started with a password in `AMQP_URL` (a wrong
//! one, so the broker refuses it and the error paths run), in `DATABASE_URL`, and the API key
//! hashes in `API_KEYS`, never prints any of them, on stdout or stderr, at debug level.

use crate::helpers::unique_queue;
use common::testing::TestDatabase;
use std::process::Command;

const AMQP_PASSWORD: &str = "amqp-pw-never-printed";
const DB_PASSWORD: &str = "db-pw-never-printed";
/// SHA-256 of "a warehouse admin key": only its hash is configured, and the hash is a secret too.
const KEY_HASH: &str = "3c1a0b6f9d2e4c8a7b5d3e1f0a9c8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b";

#[tokio::test]
async fn passwords_in_the_broker_and_database_urls_never_reach_the_logs() {
    let db = TestDatabase::create().await;
    // Trust authentication ignores the password, so the ledger opens and its paths log too.
    let database_url = db
        .url
        .replacen("postgres@", &format!("postgres:{DB_PASSWORD}@"), 1);
    assert_ne!(database_url, db.url, "the test URL carries a password");
    let output = Command::new("timeout")
        .args(["-s", "TERM", "6"])
        .arg(env!("CARGO_BIN_EXE_warehouse"))
        .env(
            "AMQP_URL",
            format!("amqp://guest:{AMQP_PASSWORD}@127.0.0.1:5672/%2f"),
        )
        .env("DATABASE_URL", &database_url)
        .env("ORDER_QUEUE", unique_queue())
        .env("PORT", "0")
        .env("RUST_LOG", "debug")
        .env("API_KEYS", format!("{KEY_HASH}:admin"))
        .env("RECONNECT_MIN_MS", "100")
        .env("RECONNECT_MAX_MS", "300")
        .output()
        .expect("run the warehouse binary");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The error paths ran: the broker refused the password, and that was logged.
    assert!(
        logs.contains("ACCESS_REFUSED") || logs.contains("access refused"),
        "the refused login is logged:\n{logs}"
    );
    for password in [AMQP_PASSWORD, DB_PASSWORD, &KEY_HASH[..16]] {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(password)).collect();
        assert!(
            leaks.is_empty(),
            "{password} was printed:\n{}",
            leaks.join("\n")
        );
    }
}
