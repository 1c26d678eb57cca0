//! `--audit FILE`: one JSON line per checkout attempt that was sent, for reconciling a run
//! order by order against the durable stores (`chaos-reconcile`).
//!
//! The load threads only build a small [`AuditRec`] and send it over a channel; one dedicated
//! thread owns the buffered file and does the formatting, so the hot path never waits for I/O.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::http::Failure;

/// One checkout attempt, as written (field order = line order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRec {
    /// Unix time in ms when the checkout request was sent.
    pub t_ms: u64,
    /// From the send to the answer (or to the failure).
    pub latency_us: u64,
    /// The shopping cart checked out (a new one per iteration in `flow` and `lifecycle`).
    pub cart: u64,
    /// HTTP status, or `None` when no answer came.
    pub status: Option<u16>,
    /// Why no answer came (see [`error_kind`]), `None` when one did.
    pub error: Option<Cow<'static, str>>,
    /// `order_id` of a 2xx checkout's body.
    pub order_id: Option<u64>,
    /// `status` of a 2xx checkout's body, if it had one.
    pub order_status: Option<Cow<'static, str>>,
}

/// Short name of a failure for the audit. `sent` = the request was handed to the connection
/// (it may have reached the server); a failure before that means the server never saw it.
/// `None` for a request cut by the run's end before it was sent: that is no checkout attempt.
pub fn error_kind(f: Failure, sent: bool) -> Option<&'static str> {
    Some(match (f, sent) {
        // No connection could be made (refused, unreachable, handshake failed).
        (Failure::Transport, false) => "connect",
        // The connection broke after the request was written (reset, closed, protocol error).
        (Failure::Transport, true) => "reset",
        // Connecting took longer than --timeout: not sent either.
        (Failure::Timeout, false) => "connect_timeout",
        (Failure::Timeout, true) => "timeout",
        // In flight when the run's time was up: the server may still act on it.
        (Failure::Stopped, true) => "stopped",
        (Failure::Stopped, false) => return None,
    })
}

/// The order statuses the API knows, without allocating for them.
pub fn order_status_text(s: &str) -> Cow<'static, str> {
    match s {
        "pending" => Cow::Borrowed("pending"),
        "placed" => Cow::Borrowed("placed"),
        "cancelling" => Cow::Borrowed("cancelling"),
        "fulfilled" => Cow::Borrowed("fulfilled"),
        "cancelled" => Cow::Borrowed("cancelled"),
        other => Cow::Owned(other.to_string()),
    }
}

enum Msg {
    Rec(AuditRec),
    /// Sent after every load thread has finished: everything before it is written.
    End,
}

/// Cheap handle the load threads send records through.
#[derive(Clone)]
pub struct AuditSink(mpsc::Sender<Msg>);

impl AuditSink {
    pub fn record(&self, rec: AuditRec) {
        // Only fails when the writer thread is gone, which `AuditWriter::finish` reports.
        let _ = self.0.send(Msg::Rec(rec));
    }
}

/// The writer thread and its channel.
pub struct AuditWriter {
    sink: AuditSink,
    thread: JoinHandle<(u64, Option<String>)>,
    pub path: PathBuf,
}

/// What the audit wrote, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct AuditSummary {
    pub path: String,
    pub lines: u64,
    /// Set when writing failed; the file is then incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Write buffer: a line is ~130 bytes, so a million lines take ~130 writes of 1 MiB.
const BUF: usize = 1 << 20;

impl AuditWriter {
    /// Create (truncate) the file now, so a bad path fails before the run starts.
    pub fn create(path: &Path) -> anyhow::Result<AuditWriter> {
        let file = File::create(path)
            .with_context(|| format!("cannot create the audit file {}", path.display()))?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("loadtest-audit".into())
            .spawn(move || write_loop(BufWriter::with_capacity(BUF, file), rx, &shown))
            .context("cannot start the audit writer thread")?;
        Ok(AuditWriter {
            sink: AuditSink(tx),
            thread,
            path: path.to_path_buf(),
        })
    }

    pub fn sink(&self) -> AuditSink {
        self.sink.clone()
    }

    /// Call after every load thread has finished: writes what is queued, flushes, closes.
    pub fn finish(self) -> AuditSummary {
        let _ = self.sink.0.send(Msg::End);
        drop(self.sink);
        let (lines, error) = match self.thread.join() {
            Ok(r) => r,
            Err(_) => (0, Some("the audit writer thread panicked".to_string())),
        };
        AuditSummary {
            path: self.path.display().to_string(),
            lines,
            error,
        }
    }
}

/// Returns the lines written and the first error, if any.
fn write_loop(
    mut out: BufWriter<File>,
    rx: mpsc::Receiver<Msg>,
    path: &str,
) -> (u64, Option<String>) {
    let mut lines = 0u64;
    let mut failed = None;
    // Ends on `End` or when every sender is gone (an aborted run).
    while let Ok(Msg::Rec(rec)) = rx.recv() {
        if failed.is_some() {
            continue; // keep draining so the senders never pile up behind a dead writer
        }
        let res = serde_json::to_writer(&mut out, &rec)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        match res {
            Ok(()) => lines += 1,
            Err(e) => failed = Some(e),
        }
    }
    if failed.is_none() {
        if let Err(e) = out.flush() {
            failed = Some(e);
        }
    }
    let error = failed.map(|e| format!("writing the audit file {path}: {e} (after {lines} lines)"));
    (lines, error)
}
