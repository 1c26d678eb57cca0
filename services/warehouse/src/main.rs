/// mimalloc, not the system allocator: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use warehouse::configuration::{Settings, DEFAULT_PORT};
use warehouse::Application;

#[tokio::main]
async fn main() -> ExitCode {
    common::healthcheck::exit_if_requested(DEFAULT_PORT);
    let settings = common::config::settings_or_exit(
        "warehouse",
        "applies the orders it consumes from RabbitMQ to its ledger, exactly once each; HTTP \
         only for /health, /ready, /stats and /metrics.",
        Settings::read,
    );
    let telemetry = match common::telemetry::init(env!("CARGO_BIN_NAME"), &settings.service) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("warehouse: {e}");
            return ExitCode::from(1);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(1);
        }
    };
    let stopped = app.run_until_stopped(common::shutdown::on_signal()).await;
    telemetry.shutdown().await;
    match stopped {
        Ok(Ok(stats)) => {
            tracing::info!(
                orders_processed = stats.orders_processed,
                orders_cancelled = stats.orders_cancelled,
                duplicates = stats.duplicates,
                rejected = stats.rejected,
                stats = %serde_json::to_string(&stats).unwrap_or_default(),
                "final report"
            );
            print!("{stats}");
            ExitCode::SUCCESS
        }
        Ok(Err(unavailable)) => {
            // Stopped cleanly; only the report could not be read.
            tracing::warn!(error = %unavailable, "final report: the ledger store cannot be read");
            println!("warehouse final report: totals unavailable ({unavailable})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "the HTTP server failed");
            ExitCode::from(1)
        }
    }
}
