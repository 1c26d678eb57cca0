/// mimalloc, not the system allocator: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use gateway::config::GatewayConfig;
use gateway::Application;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    common::healthcheck::exit_if_requested(gateway::config::DEFAULT_PORT);
    let config = common::config::settings_or_exit(
        "gateway",
        "the local stand-in for the AWS Application Load Balancer: path rules, health checks, \
         weighted random balancing with automatic target weights.",
        GatewayConfig::read,
    );
    let telemetry = match common::telemetry::init(env!("CARGO_BIN_NAME"), &config.service) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = match Application::build(config.clone()).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed to start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        port = app.port(),
        product_targets = ?config.product_targets.iter().map(|t| t.url.as_str()).collect::<Vec<_>>(),
        cart_targets = ?config.cart_targets.iter().map(|t| t.url.as_str()).collect::<Vec<_>>(),
        expose_cca = config.expose_cca,
        max_connections = config.max_connections,
        "gateway listening"
    );
    let shutdown = common::shutdown::on_signal();
    let served = app.run(shutdown).await;
    telemetry.shutdown().await;
    match served {
        Ok(()) => {
            tracing::info!("gateway stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "gateway server failed");
            ExitCode::FAILURE
        }
    }
}
