//! `MAX_CONNECTIONS`: at the cap the real gateway serves no further client connection, and
//! serves the waiting one as soon as another closes.

use common::shutdown::CancellationToken;
use gateway::config::GatewayConfig;
use gateway::Application;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n";

/// Sends `GET /health` on `stream` and reads until the answer's head is in, within `limit`;
/// `None` if nothing came back in time.
async fn health(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    stream.write_all(HEALTH).await.expect("write");
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the gateway closed the connection");
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn at_the_connection_cap_new_clients_wait_and_are_served_when_a_connection_closes() {
    // No target is needed: /health is the gateway's own.
    let dead = vec!["http://127.0.0.1:9".to_string()];
    let mut config = GatewayConfig::for_tests(&dead, &dead, &dead).expect("valid targets");
    config.max_connections = 2;
    let app = Application::build(config).await.expect("gateway builds");
    let addr = format!("127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    tokio::spawn(app.run(stop.clone()));

    let mut first = TcpStream::connect(&addr).await.expect("connect");
    let mut second = TcpStream::connect(&addr).await.expect("connect");
    let ok = Duration::from_secs(5);
    for stream in [&mut first, &mut second] {
        let answer = health(stream, ok).await.expect("served under the cap");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    // The third connects (the kernel's backlog takes it) but is not served while two are open.
    let mut third = TcpStream::connect(&addr).await.expect("connect");
    assert_eq!(
        health(&mut third, Duration::from_millis(500)).await,
        None,
        "served beyond MAX_CONNECTIONS=2"
    );
    // Kept-alive connections still work at the cap.
    assert!(health(&mut second, ok).await.is_some());

    drop(first);
    let answer = tokio::time::timeout(ok, async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = third.read(&mut buf).await.expect("read");
            assert!(n > 0, "the gateway closed the waiting connection");
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("the waiting client is served once a connection closes");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.cancel();
}
