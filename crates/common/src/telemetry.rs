//! Tracing set-up: human-readable text for a terminal, JSON lines for log shippers (CloudWatch).

use crate::config::LogFormat;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber. `RUST_LOG` filters (default `info`). Calling it twice is harmless,
/// so tests that spawn several apps in one process can all call it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
    };
    // Already initialised (a second app in the same test process): keep the first subscriber.
    let _ = result;
}
