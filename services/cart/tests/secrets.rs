//! Secrets stay out of the logs: the real binary, started at debug level with passwords in
//! `AMQP_URL` (wrong, so the broker refuses it), `REDIS_URL` (this Redis has none, so `AUTH`
//! fails) and `DATABASE_URL`, nor its own `SERVICE_API_KEY` or the key hashes of `API_KEYS`,
//! never prints any of them, on stdout or stderr, whether it starts or gives up.

use std::process::Command;

const PASSWORDS: [&str; 5] = [
    "amqp-pw-never-printed",
    "redis-pw-never-printed",
    "db-pw-never-printed",
    "service-key-never-printed",
    // The start of an API key's hash (`API_KEYS` below).
    "9f86d081884c7d659a2feaa0",
];

#[test]
fn passwords_in_the_store_and_broker_urls_never_reach_the_logs() {
    let output = Command::new("timeout")
        .args(["-s", "TERM", "6"])
        .arg(env!("CARGO_BIN_EXE_cart-service"))
        .env_clear()
        .env(
            "AMQP_URL",
            format!("amqp://guest:{}@127.0.0.1:5672/%2f", PASSWORDS[0]),
        )
        .env(
            "REDIS_URL",
            format!("redis://:{}@127.0.0.1:6379/0", PASSWORDS[1]),
        )
        .env(
            "DATABASE_URL",
            format!(
                "postgres://postgres:{}@127.0.0.1:5432/postgres",
                PASSWORDS[2]
            ),
        )
        .env("SERVICE_API_KEY", PASSWORDS[3])
        .env(
            "API_KEYS",
            format!(
                "{}7a5a2e9c3b1d0f8e6c4a2b0d9e7f5a3c1a2b4c6d:customer:7",
                PASSWORDS[4]
            ),
        )
        .env("PORT", "0")
        .env("RUST_LOG", "debug")
        .env("STORE_STARTUP_TIMEOUT_MS", "2000")
        .output()
        .expect("run the cart binary");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The error paths ran: Redis refused the password and the start-up said so.
    assert!(
        logs.contains("redis://:***@127.0.0.1:6379/0"),
        "the Redis failure is logged with the URL masked:\n{logs}"
    );
    for password in PASSWORDS {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(password)).collect();
        assert!(
            leaks.is_empty(),
            "{password} was printed:\n{}",
            leaks.join("\n")
        );
    }
}
