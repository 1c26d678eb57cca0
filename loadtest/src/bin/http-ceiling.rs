//! `http-ceiling`: the HTTP ceiling of this machine.
//!
//! A bare axum server answering every GET (including `GET /products/{id}`) with fixed JSON bytes
//! of the same size and shape as a product. Nothing else is in the path: no database, no
//! middleware, no logging. Every HTTP benchmark of the project compares against it.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Parser;

/// Same size/shape as a product of the demo catalog.
const PRODUCT_JSON: &[u8] = br#"{"product_id":1,"sku":"SKU0000001","manufacturer":"Acme Corporation","category_id":12,"weight":1250,"some_other_id":7}"#;

#[derive(Debug, Parser)]
#[command(
    name = "http-ceiling",
    about = "Bare axum server answering every GET with a fixed product JSON"
)]
struct Args {
    /// Port to listen on (0 = any free port; the bound port is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

async fn product() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        PRODUCT_JSON,
    )
        .into_response()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.workers {
        if n == 0 {
            eprintln!("http-ceiling: --workers must be at least 1");
            return ExitCode::from(2);
        }
        builder.worker_threads(n);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http-ceiling: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        let app = Router::new().fallback(axum::routing::get(product));
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind, args.port)).await?;
        let addr = listener.local_addr()?;
        println!("listening on {addr}");
        axum::serve(listener, app).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http-ceiling: {e}");
            ExitCode::from(1)
        }
    }
}
