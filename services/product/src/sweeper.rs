//! The reservation timeout: a background task that gives back the stock of reservations held
//! longer than `RESERVATION_TTL_MS` without being confirmed (a checkout that died half-way, an
//! order the broker never got). Confirmed and committed reservations are never touched.

use crate::store::StockStore;
use common::metrics::Counter;
use common::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;

/// Reservations released per transaction; a sweep repeats until it finds fewer.
const SWEEP_BATCH: usize = 500;
/// How often to sweep: a tenth of the timeout, within these bounds (a reservation is released
/// at most a tenth late; a long timeout is still swept every few seconds).
const MIN_INTERVAL: Duration = Duration::from_millis(20);
const MAX_INTERVAL: Duration = Duration::from_secs(5);

pub fn interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Sweeps until `shutdown` is cancelled.
pub async fn run(
    stock: Arc<dyn StockStore>,
    ttl: Duration,
    released: Counter,
    shutdown: CancellationToken,
) {
    let every = interval(ttl);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        loop {
            match stock.expire_held(ttl, SWEEP_BATCH).await {
                Ok(n) => {
                    if failing {
                        tracing::info!("reservation sweep: the store is back");
                        failing = false;
                    }
                    if n > 0 {
                        released.add(n);
                        tracing::info!(
                            released = n,
                            ttl_ms = ttl.as_millis() as u64,
                            "released reservations held past RESERVATION_TTL_MS"
                        );
                    }
                    if n < SWEEP_BATCH as u64 || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(err) => {
                    // Once per outage, not once per tick.
                    if !failing {
                        tracing::warn!(error = %err, "reservation sweep failed; retrying every tick");
                        failing = true;
                    }
                    break;
                }
            }
        }
    }
    tracing::debug!("reservation sweeper stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_a_tenth_of_the_timeout_within_bounds() {
        assert_eq!(interval(Duration::from_secs(600)), MAX_INTERVAL);
        assert_eq!(interval(Duration::from_secs(1)), Duration::from_millis(100));
        assert_eq!(interval(Duration::from_millis(1)), MIN_INTERVAL);
    }
}
