//! `tcp_relay`: the floor of any proxy on this machine: a layer-4 relay that copies bytes.
//!
//! Each client connection gets its own upstream connection and bytes are copied both ways with
//! `tokio::io::copy_bidirectional`: no HTTP parsing, no routing, nothing per request but the two
//! extra socket reads and writes an extra hop costs. No HTTP proxy can spend less per request
//! than this, so `scripts/bench-gateway.sh` measures it beside the gateway to show how much of
//! the gap to direct is the hop itself.
//!
//! ```text
//! cargo run --release -p gateway --example tcp_relay -- 127.0.0.1:8081
//! ```
//! prints `listening on 127.0.0.1:PORT` (a free port) and relays until killed.

use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let upstream = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: tcp_relay UPSTREAM_HOST:PORT"))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (mut client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}
