use credit_card_authorizer::{configuration::Settings, Application};

fn main() {
    common::healthcheck::exit_if_requested(credit_card_authorizer::DEFAULT_PORT);
    if let Err(err) = run() {
        eprintln!("credit-card-authorizer: {err}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    common::telemetry::init(settings.service.log_format);
    let app = Application::build(settings).await?;
    app.run_until_stopped(common::shutdown::on_signal()).await?;
    Ok(())
}
