//! An OTLP trace sink for benchmarks (`scripts/bench-tracing.sh`): accepts spans by gRPC and by
//! HTTP/protobuf on one port, decodes and counts them, keeps nothing. Prints the count of spans
//! received every second and on exit (SIGTERM or Ctrl-C).
//!
//!   cargo run --release -p common --features test-support --example otlp_sink -- 4317

use common::testing::otlp::OtlpReceiver;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let port = match std::env::args().nth(1).map(|p| p.parse::<u16>()) {
        None => 4317,
        Some(Ok(port)) => port,
        Some(Err(e)) => {
            eprintln!("otlp_sink: the argument is a port number: {e}");
            std::process::exit(2);
        }
    };
    let sink = OtlpReceiver::counting(port).await;
    println!("listening on {}", sink.endpoint());
    let stop = common::shutdown::on_signal();
    let mut last = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let count = sink.count();
        if count != last {
            println!("spans {count}");
            last = count;
        }
    }
    println!("spans {}", sink.count());
}
