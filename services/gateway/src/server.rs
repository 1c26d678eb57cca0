//! The listener: accepts client connections, runs each as a [`Connection`] task, and on shutdown
//! stops accepting, lets every connection finish the request it is serving (idle ones close at
//! once), and waits for them at most the drain timeout.

use crate::proxy::{Connection, Shared};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    drain: Duration,
) -> std::io::Result<()> {
    // As in mini-redis: every connection task holds a clone of `done`; when the last one is
    // dropped, `all_done` yields `None` and the drain is complete.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    loop {
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
