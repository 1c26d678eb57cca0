/// mimalloc, not the system allocator: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use product_service::{configuration::Settings, Application};

fn main() {
    common::healthcheck::exit_if_requested(product_service::DEFAULT_PORT);
    let settings = common::config::settings_or_exit(
        "product-service",
        "the product catalog and its stock.",
        Settings::read,
    );
    if let Err(err) = run(settings) {
        eprintln!("product-service: {err}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = common::telemetry::init(env!("CARGO_BIN_NAME"), &settings.service)?;
    let app = Application::build(settings).await?;
    let served = app.run_until_stopped(common::shutdown::on_signal()).await;
    telemetry.shutdown().await;
    served?;
    Ok(())
}
