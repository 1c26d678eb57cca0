/// mimalloc, not the system allocator: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use credit_card_authorizer::{configuration::Settings, Application};

fn main() {
    common::healthcheck::exit_if_requested(credit_card_authorizer::DEFAULT_PORT);
    let settings = common::config::settings_or_exit(
        "credit-card-authorizer",
        "checks a card number's format and authorizes it (declining a share with 402).",
        Settings::read,
    );
    if let Err(err) = run(settings) {
        eprintln!("credit-card-authorizer: {err}");
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
