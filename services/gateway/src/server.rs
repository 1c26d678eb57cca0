//! The listener: accepts client connections, runs each as a [`Connection`] task, and on shutdown
//! stops accepting, lets every connection finish the request it is serving (idle ones close at
//! once), and waits for them at most the drain timeout.
//!
//! At most `MAX_CONNECTIONS` connections are served at once. At the cap the gateway stops
//! accepting: new clients wait in the kernel's listen backlog and are served as connections close,
//! instead of each costing a task, buffers and a file descriptor. Reaching the cap is logged as a
//! warning at most once per [`CAP_LOG_INTERVAL`], with how often it was reached in between, so a
//! flood does not become a flood of log lines.

use crate::proxy::{Connection, Shared};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// The shortest time between two "connection limit reached" warnings.
pub const CAP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Decides when reaching the connection cap is worth a log line: the first time, then at most
/// once per [`CAP_LOG_INTERVAL`].
#[derive(Debug, Default)]
pub struct CapWarnings {
    last: Option<Instant>,
    /// Times the cap was reached since the last line.
    unlogged: u64,
}

impl CapWarnings {
    /// Records that the cap was reached at `now`; `Some(times)` when a line should be logged,
    /// with how many times it was reached since the previous line (this one included).
    pub fn reached(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < CAP_LOG_INTERVAL)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    drain: Duration,
) -> std::io::Result<()> {
    // As in mini-redis: every connection task holds a clone of `done`; when the last one is
    // dropped, `all_done` yields `None` and the drain is complete.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let max = shared.gateway.config.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let mut warnings = CapWarnings::default();
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(times) = warnings.reached(Instant::now()) {
                    tracing::warn!(
                        max_connections = max,
                        times_reached = times,
                        "connection limit reached: not accepting new connections until one closes (MAX_CONNECTIONS)"
                    );
                }
                tokio::select! {
                    () = shared.shutdown.cancelled() => break,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break, // never closed
                    },
                }
            }
        };
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let connection = Connection::new(Arc::clone(&shared), stream, peer);
                let done = done.clone();
                tokio::spawn(async move {
                    connection.run().await;
                    drop(slot);
                    drop(done);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    drop(done);
    if tokio::time::timeout(drain, all_done.recv()).await.is_err() {
        tracing::warn!(
            ?drain,
            "in-flight requests did not finish in time; closing them"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaching_the_cap_is_logged_once_per_interval_with_the_count_in_between() {
        let mut w = CapWarnings::default();
        let t0 = Instant::now();
        assert_eq!(w.reached(t0), Some(1));
        for i in 1..=99 {
            assert_eq!(w.reached(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(w.reached(t0 + CAP_LOG_INTERVAL), Some(100));
        assert_eq!(w.reached(t0 + CAP_LOG_INTERVAL * 3), Some(1));
    }
}
