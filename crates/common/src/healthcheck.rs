//! `<binary> healthcheck`: a container health probe that needs no curl in the image.
//!
//! It sends `GET /health` to `127.0.0.1:$PORT` over a plain socket and exits 0 on a 200.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// If the first argument is `healthcheck`, probe the local service and exit; otherwise return.
pub fn exit_if_requested(default_port: u16) {
    if std::env::args().nth(1).as_deref() != Some("healthcheck") {
        return;
    }
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or(default_port);
    match probe(port) {
        Ok(()) => std::process::exit(0),
        Err(reason) => {
            eprintln!("unhealthy: {reason}");
            std::process::exit(1)
        }
    }
}

fn probe(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    // "HTTP/1.1 200"
    if &head[9..12] == b"200" {
        Ok(())
    } else {
        Err(format!("status {}", String::from_utf8_lossy(&head[9..12])))
    }
}
