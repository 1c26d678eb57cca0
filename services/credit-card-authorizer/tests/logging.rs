//! Card numbers never reach the logs beyond their last four digits, even at the most verbose level.

use credit_card_authorizer::{configuration::Settings, Application};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut out) = self.0.lock() {
            out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_show_at_most_the_last_four_digits() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let mut settings = Settings::for_tests();
    settings.decline_rate = 0.5;
    let app = Application::build(settings).await.expect("build");
    let url = format!(
        "http://127.0.0.1:{}/credit-card-authorizer/authorize",
        app.port()
    );
    tokio::spawn(app.run_until_stopped(common::shutdown::CancellationToken::new()));
    let client = reqwest::Client::new();
    for _ in 0..20 {
        client
            .post(&url)
            .json(&serde_json::json!({"credit_card_number": "4929-1234-5678-9012"}))
            .send()
            .await
            .expect("request");
    }
    client
        .post(&url)
        .json(&serde_json::json!({"credit_card_number": "4929-1234-5678-901"}))
        .send()
        .await
        .expect("request");

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logs.contains("****-****-****-9012"),
        "the masked card is logged: {logs}"
    );
    for leak in [
        "4929-1234",
        "4929123456789012",
        "1234-5678",
        "5678-9012",
        "4929-1234-5678-901",
    ] {
        assert!(!logs.contains(leak), "log leaks {leak}: {logs}");
    }
}
