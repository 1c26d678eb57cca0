//! Scenario execution: setup phase, timed phase (closed or open model), merging of results.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Method;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinSet, LocalSet};
use tokio::time::Instant;

use crate::audit::{error_kind, order_status_text, AuditRec, AuditSink, AuditWriter};
use crate::http::{preflight, Conn, Failure, Target};
use crate::report::{build_report, Report};
use crate::stats::{collect_seconds, Live, Outcome, SecondBucket, WorkerRec};
use crate::{LifecycleConfig, RunConfig, Scenario};

/// Requests sent more than this after their intended time count as "late" (open model).
const LATE_AFTER: Duration = Duration::from_millis(10);
/// Attempts per setup request (setup retries 5xx / transport errors; it is not measured).
const SETUP_ATTEMPTS: u32 = 5;

/// Names of the steps of each scenario (one histogram + tally per step).
pub fn step_names(s: Scenario) -> &'static [&'static str] {
    match s {
        Scenario::Checkout => &["checkout"],
        Scenario::Flow => &["create_cart", "add_item", "checkout"],
        Scenario::Product => &["get_product"],
        Scenario::Lifecycle => &[
            "create_cart",
            "add_item",
            "checkout",
            "get_order",
            "cancel",
            "list_orders",
        ],
    }
}

/// Step indices of the `lifecycle` scenario (see [`step_names`]).
mod lc {
    pub const CREATE_CART: usize = 0;
    pub const ADD_ITEM: usize = 1;
    pub const CHECKOUT: usize = 2;
    pub const GET_ORDER: usize = 3;
    pub const CANCEL: usize = 4;
    pub const LIST_ORDERS: usize = 5;
}

/// Shared, read-only context of the timed phase plus the ticket counter.
struct Ctx {
    scenario: Scenario,
    /// Next iteration number to hand out.
    next: AtomicU64,
    /// Number of iterations to run at most.
    limit: u64,
    start: Instant,
    /// Stop time (`--duration`).
    end: Option<Instant>,
    /// Seconds between intended sends (`--rate`).
    interval: Option<f64>,
    products: u64,
    carts: Vec<u64>,
    checkout_body: Bytes,
    lifecycle: LifecycleConfig,
    /// `--cancel-share` in millionths, for an exact integer spread over iterations.
    cancel_ppm: u64,
    /// Prefix of this run's idempotency keys: unique per run, so that a second run against
    /// the same server is not answered from the first one's keys.
    run_id: String,
    /// `--audit`: where each sent checkout goes.
    audit: Option<AuditSink>,
    /// Wall-clock time of `start` since the Unix epoch: audit times are `start` plus the
    /// monotonic offset, so they never go backwards within a run.
    unix_start: Duration,
}

impl Ctx {
    /// Record one checkout in the audit (if any). `t0` is when it was sent; `conn` tells
    /// whether a failed request had been sent at all (an unsent one cut by the stop is skipped).
    fn audit_checkout(
        &self,
        conn: &Conn,
        cart: u64,
        t0: Instant,
        o: Outcome,
        body: Option<&Bytes>,
        done: Instant,
    ) {
        let Some(sink) = &self.audit else { return };
        let (status, error) = match o {
            Outcome::Status(s) | Outcome::Invalid(s) => (Some(s), None),
            Outcome::Failed(f) => match error_kind(f, conn.last_sent()) {
                Some(kind) => (None, Some(kind.into())),
                None => return,
            },
        };
        let (order_id, order_status) = match status {
            Some(200..=299) => order_body(body).map_or((None, None), |b| {
                (b.order_id, b.status.as_deref().map(order_status_text))
            }),
            _ => (None, None),
        };
        let at = self.unix_start + t0.saturating_duration_since(self.start);
        sink.record(AuditRec {
            t_ms: u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
            latency_us: u64::try_from((done - t0).as_micros()).unwrap_or(u64::MAX),
            cart,
            status,
            error,
            order_id,
            order_status,
        });
    }
}

#[derive(Deserialize)]
struct CartCreated {
    shopping_cart_id: u64,
}

/// Run a whole load test as configured. Errors only when the run cannot start.
pub async fn run(cfg: &RunConfig) -> anyhow::Result<Report> {
    cfg.validate()?;
    let target = Target::resolve(&cfg.base_url, &cfg.headers).await?;
    preflight(&target).await?;
    // Created before any load, so a bad path fails the run before it starts.
    let audit = cfg.audit.as_deref().map(AuditWriter::create).transpose()?;
    let show_progress = !cfg.quiet && std::io::stdout().is_terminal();
    let checkout_body = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "credit_card_number": cfg.card,
    }))?);

    let limit = cfg.effective_requests();

    // Setup phase (untimed): carts with one item each, for the checkout scenario.
    let mut setup = None;
    let mut carts = Vec::new();
    if cfg.scenario == Scenario::Checkout {
        let t0 = Instant::now();
        let (ids, failures) = setup_carts(cfg, &target, limit, show_progress).await?;
        setup = Some(crate::report::SetupReport {
            carts_requested: limit,
            carts_created: ids.len() as u64,
            failures,
            elapsed_s: t0.elapsed().as_secs_f64(),
        });
        carts = ids;
    }
    let limit = if cfg.scenario == Scenario::Checkout {
        carts.len() as u64
    } else {
        limit
    };

    // The timed phase runs on `threads` single-threaded runtimes (one OS thread each, like
    // wrk's event loops): no work stealing and no cross-thread wake-ups on the hot path. Each
    // shard connects its workers first; the clock starts when every shard is ready.
    let threads = cfg.effective_threads();
    let (tx, rx) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect_seconds(rx));
    let live = Arc::new(Live::default());
    let (go_tx, go_rx) = watch::channel::<Option<Arc<Ctx>>>(None);
    let mut ready = Vec::with_capacity(threads);
    let mut results = Vec::with_capacity(threads);
    for i in 0..threads {
        let n = cfg.concurrency / threads + usize::from(i < cfg.concurrency % threads);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let shard = Shard {
            target: target.clone(),
            conns: n,
            timeout: cfg.timeout,
            scenario: cfg.scenario,
            tx: tx.clone(),
            live: live.clone(),
            go: go_rx.clone(),
            ready: ready_tx,
            done: done_tx,
        };
        std::thread::Builder::new()
            .name(format!("loadtest-{i}"))
            .spawn(move || shard.run())
            .context("cannot start a load thread")?;
        ready.push(ready_rx);
        results.push(done_rx);
    }
    drop(tx);
    drop(go_rx);
    for r in ready {
        // On error, dropping `go_tx` (by returning) tells the other shards to stop.
        r.await.context("a load thread died while connecting")??;
    }

    let start = Instant::now();
    let unix_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ctx = Arc::new(Ctx {
        scenario: cfg.scenario,
        next: AtomicU64::new(0),
        limit,
        start,
        end: cfg.duration.map(|d| start + d),
        interval: cfg.rate.map(|r| 1.0 / r),
        products: cfg.products.max(1),
        carts,
        checkout_body,
        lifecycle: cfg.lifecycle,
        cancel_ppm: (cfg.lifecycle.cancel_share.clamp(0.0, 1.0) * 1e6).round() as u64,
        run_id: run_id(),
        audit: audit.as_ref().map(AuditWriter::sink),
        unix_start,
    });
    let _ = go_tx.send(Some(ctx.clone()));

    let bar = progress_bar(cfg, limit, show_progress);
    let progress = bar.clone().map(|bar| {
        let live = live.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move { drive_progress(bar, live, ctx).await })
    });

    let mut recs = Vec::with_capacity(cfg.concurrency);
    for r in results {
        recs.extend(r.await.context("a load thread failed")?);
    }
    let finished = Instant::now();
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let seconds = collector.await.context("time series collector failed")?;
    // Every load thread has finished: all its audit records are queued before this.
    let audit = audit.map(AuditWriter::finish);

    // Elapsed: the configured duration for duration-bound runs (in-flight requests at the stop
    // are cut and reported separately), otherwise until the last completion.
    let elapsed = match ctx.end {
        Some(end) if finished >= end => end - start,
        _ => finished - start,
    };
    let due = match (cfg.rate, cfg.duration) {
        (Some(rate), Some(d)) => Some(((d.as_secs_f64() * rate).ceil() as u64).min(limit)),
        (Some(_), None) => Some(limit),
        _ => None,
    };
    let mut report = build_report(cfg, &target, setup, recs, seconds, elapsed, due);
    report.audit = audit;
    Ok(report)
}

async fn connect_all(
    target: &Arc<Target>,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Conn>> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let target = target.clone();
        set.spawn(async move {
            let mut c = Conn::new(target, timeout);
            tokio::time::timeout(timeout, c.connect())
                .await
                .context("connect timed out")??;
            Ok::<_, anyhow::Error>(c)
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        let c = r
            .context("connect task failed")?
            .with_context(|| format!("cannot open {n} connections to {}", target.base_url))?;
        conns.push(c);
    }
    Ok(conns)
}

/// One OS thread with a current-thread runtime running a share of the workers.
struct Shard {
    target: Arc<Target>,
    conns: usize,
    timeout: Duration,
    scenario: Scenario,
    tx: mpsc::UnboundedSender<SecondBucket>,
    live: Arc<Live>,
    go: watch::Receiver<Option<Arc<Ctx>>>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    done: oneshot::Sender<Vec<(WorkerRec, u64)>>,
}

impl Shard {
    fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = self
                    .ready
                    .send(Err(anyhow::anyhow!("cannot start a runtime: {e}")));
                return;
            }
        };
        rt.block_on(async move {
            let Shard {
                target,
                conns,
                timeout,
                scenario,
                tx,
                live,
                mut go,
                ready,
                done,
            } = self;
            let conns = match connect_all(&target, conns, timeout).await {
                Ok(c) => {
                    let _ = ready.send(Ok(()));
                    c
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let ctx = loop {
                if let Some(ctx) = go.borrow_and_update().clone() {
                    break ctx;
                }
                if go.changed().await.is_err() {
                    return; // the run was aborted
                }
            };
            // All workers of this thread share one recorder: no locks (single-threaded), and
            // the histograms stay hot in this core's cache.
            let rec = Rc::new(RefCell::new(WorkerRec::new(
                step_names(scenario),
                ctx.interval.is_some(),
                tx,
                live,
                ctx.start,
            )));
            let tickets = Rc::new(Cell::new((0u64, 0u64)));
            let local = LocalSet::new();
            let connects = local
                .run_until(async {
                    let handles: Vec<_> = conns
                        .into_iter()
                        .map(|conn| {
                            tokio::task::spawn_local(worker(
                                ctx.clone(),
                                conn,
                                rec.clone(),
                                tickets.clone(),
                            ))
                        })
                        .collect();
                    let mut connects = 0;
                    for h in handles {
                        connects += h.await.unwrap_or(0);
                    }
                    connects
                })
                .await;
            drop(local);
            let Ok(rec) = Rc::try_unwrap(rec) else {
                return;
            };
            let mut rec = rec.into_inner();
            rec.finish();
            let _ = done.send(vec![(rec, connects)]);
        });
    }
}

/// Tickets a thread takes from the shared counter at once in the closed model (keeps the shared
/// cache line cold). The open model takes them one by one to keep the schedule exact.
const TICKET_BLOCK: u64 = 32;

/// Next iteration number for a worker of this thread, or `None` when all are handed out.
fn next_ticket(ctx: &Ctx, local: &Cell<(u64, u64)>) -> Option<u64> {
    let (mut next, mut end) = local.get();
    if next >= end {
        let block = if ctx.interval.is_some() {
            1
        } else {
            TICKET_BLOCK
        };
        next = ctx.next.fetch_add(block, Relaxed);
        end = next.saturating_add(block).min(ctx.limit);
    }
    if next >= ctx.limit {
        local.set((next, next));
        return None;
    }
    local.set((next + 1, end));
    Some(next)
}

/// One worker of the timed phase: takes iteration tickets until the run is over. Returns the
/// number of connections it opened.
async fn worker(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    rec: Rc<RefCell<WorkerRec>>,
    tickets: Rc<Cell<(u64, u64)>>,
) -> u64 {
    while let Some(t) = next_ticket(&ctx, &tickets) {
        let now = Instant::now();
        let intended = match ctx.interval {
            Some(iv) => ctx.start + Duration::from_secs_f64(t as f64 * iv),
            None => now,
        };
        if let Some(end) = ctx.end {
            if intended >= end || now >= end {
                break;
            }
        }
        let sent = if intended > now + Duration::from_millis(1) {
            rec.borrow_mut().flush_if_before(intended);
            tokio::time::sleep_until(intended).await;
            Instant::now()
        } else {
            now
        };
        {
            let mut r = rec.borrow_mut();
            if sent > intended + LATE_AFTER {
                r.late += 1;
            }
            r.started += 1;
        }
        let (outcome, done) = iteration(&ctx, &mut conn, t, &rec, sent).await;
        let from = intended.min(sent);
        rec.borrow_mut()
            .iteration(outcome, done - from, done - sent, done);
    }
    conn.connects
}

/// Run iteration `t`; returns its outcome and completion time.
async fn iteration(
    ctx: &Ctx,
    conn: &mut Conn,
    t: u64,
    rec: &RefCell<WorkerRec>,
    sent: Instant,
) -> (Outcome, Instant) {
    let stop = ctx.end;
    match ctx.scenario {
        Scenario::Product => {
            let id = t % ctx.products + 1;
            let path = format!("/products/{id}");
            let (o, _, done) = timed_step(conn, rec, 0, sent, Method::GET, &path, None, stop).await;
            (o, done)
        }
        Scenario::Checkout => {
            let Some(&cart) = ctx.carts.get(t as usize) else {
                return (Outcome::Failed(Failure::Stopped), Instant::now());
            };
            let path = format!("/shopping-carts/{cart}/checkout");
            let body = Some(ctx.checkout_body.clone());
            let (o, resp, done) =
                timed_step(conn, rec, 0, sent, Method::POST, &path, body, stop).await;
            ctx.audit_checkout(conn, cart, sent, o, resp.as_ref(), done);
            (o, done)
        }
        Scenario::Flow => {
            let body = Bytes::from(format!("{{\"customer_id\":{}}}", t % 10_000 + 1));
            let (o, resp, done) = timed_step(
                conn,
                rec,
                0,
                sent,
                Method::POST,
                "/shopping-cart",
                Some(body),
                stop,
            )
            .await;
            if !o.is_ok() {
                return (o, done);
            }
            let cart = match resp.and_then(|b| serde_json::from_slice::<CartCreated>(&b).ok()) {
                Some(c) => c.shopping_cart_id,
                None => return (Outcome::Invalid(201), done),
            };
            let body = Bytes::from(format!(
                "{{\"product_id\":{},\"quantity\":1}}",
                t % ctx.products + 1
            ));
            let path = format!("/shopping-carts/{cart}/addItem");
            let (o, _, done) =
                timed_step(conn, rec, 1, done, Method::POST, &path, Some(body), stop).await;
            if !o.is_ok() {
                return (o, done);
            }
            let path = format!("/shopping-carts/{cart}/checkout");
            let body = Some(ctx.checkout_body.clone());
            let t0 = done;
            let (o, resp, done) =
                timed_step(conn, rec, 2, t0, Method::POST, &path, body, stop).await;
            ctx.audit_checkout(conn, cart, t0, o, resp.as_ref(), done);
            (o, done)
        }
        Scenario::Lifecycle => lifecycle(ctx, conn, t, rec, sent).await,
    }
}

/// `lt-<start time>-<pid>`: the run's prefix for idempotency keys.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("lt-{nanos:x}-{:x}", std::process::id())
}

fn idempotency_key() -> HeaderName {
    HeaderName::from_static("idempotency-key")
}

/// splitmix64: a well-mixed hash of the iteration number, so item counts and products do not
/// follow the ticket order (which correlates with the cancel spread and the server's counters).
fn mix(t: u64) -> u64 {
    let mut z = t.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether iteration `t` cancels its order: spreads exactly `ppm` millionths of iterations
/// evenly (iteration t is chosen when ⌊(t+1)·share⌋ passes ⌊t·share⌋).
fn cancels(t: u64, ppm: u64) -> bool {
    let (t, ppm) = (u128::from(t), u128::from(ppm));
    (t + 1) * ppm / 1_000_000 > t * ppm / 1_000_000
}

/// An order's status as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderStatus {
    Pending,
    Placed,
    Cancelling,
    Fulfilled,
    Cancelled,
}

impl OrderStatus {
    fn parse(s: &str) -> Option<OrderStatus> {
        Some(match s {
            "pending" => OrderStatus::Pending,
            "placed" => OrderStatus::Placed,
            "cancelling" => OrderStatus::Cancelling,
            "fulfilled" => OrderStatus::Fulfilled,
            "cancelled" => OrderStatus::Cancelled,
            _ => return None,
        })
    }

    fn is_final(self) -> bool {
        matches!(self, OrderStatus::Fulfilled | OrderStatus::Cancelled)
    }
}

/// `{order_id, status?}` of a checkout, `{…, status, …}` of an order or a cancel.
#[derive(Deserialize)]
struct OrderBody {
    order_id: Option<u64>,
    status: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

fn order_body(body: Option<&Bytes>) -> Option<OrderBody> {
    body.and_then(|b| serde_json::from_slice(b).ok())
}

fn error_code(body: Option<&Bytes>) -> Option<String> {
    body.and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok())
        .map(|e| e.error)
}

/// Status from an order-shaped body, if it has a known one.
fn body_status(body: Option<&Bytes>) -> Option<OrderStatus> {
    order_body(body)?
        .status
        .as_deref()
        .and_then(OrderStatus::parse)
}

/// Wait `d` before the next poll. `Err` when the run's stop time comes first.
async fn pause(d: Duration, stop: Option<Instant>) -> Result<Instant, Instant> {
    if d.is_zero() {
        return Ok(Instant::now());
    }
    let until = Instant::now() + d;
    match stop {
        Some(s) if s <= until => {
            tokio::time::sleep_until(s).await;
            Err(Instant::now())
        }
        _ => {
            tokio::time::sleep_until(until).await;
            Ok(Instant::now())
        }
    }
}

/// One iteration of `lifecycle`: create a cart, add 1–3 items, check out with an
/// `Idempotency-Key`; for an order (200/202), cancel it if chosen and poll it until final
/// (bounded), or else poll it `--polls` times; list the customer's orders. Stops at the first
/// failure (5xx, transport, timeout, unexpected status or body), which is the iteration's
/// outcome; otherwise the outcome is the checkout's status.
async fn lifecycle(
    ctx: &Ctx,
    conn: &mut Conn,
    t: u64,
    rec: &RefCell<WorkerRec>,
    sent: Instant,
) -> (Outcome, Instant) {
    let stop = ctx.end;
    let cfg = &ctx.lifecycle;
    let fail = |o: Outcome, at: Instant| {
        rec.borrow_mut().lifecycle.failure(o);
        (o, at)
    };
    let customer = t % 10_000 + 1;
    let body = Bytes::from(format!("{{\"customer_id\":{customer}}}"));
    let (o, resp, done) = timed_step(
        conn,
        rec,
        lc::CREATE_CART,
        sent,
        Method::POST,
        "/shopping-cart",
        Some(body),
        stop,
    )
    .await;
    if !o.is_ok() {
        return fail(o, done);
    }
    let cart = match resp.and_then(|b| serde_json::from_slice::<CartCreated>(&b).ok()) {
        Some(c) => c.shopping_cart_id,
        None => return fail(Outcome::Invalid(201), done),
    };

    let h = mix(t);
    let items = h % 3 + 1;
    let first = (h >> 8) % ctx.products;
    let path = format!("/shopping-carts/{cart}/addItem");
    let mut done = done;
    for k in 0..items {
        let body = Bytes::from(format!(
            "{{\"product_id\":{},\"quantity\":1}}",
            (first + k) % ctx.products + 1
        ));
        let (o, _, d) = timed_step(
            conn,
            rec,
            lc::ADD_ITEM,
            done,
            Method::POST,
            &path,
            Some(body),
            stop,
        )
        .await;
        if !o.is_ok() {
            return fail(o, d);
        }
        done = d;
    }

    // Older servers ignore the header; the key is unique per run and iteration.
    let key = HeaderValue::from_str(&format!("{}-{t}", ctx.run_id));
    let headers: Vec<(HeaderName, HeaderValue)> =
        key.into_iter().map(|k| (idempotency_key(), k)).collect();
    let path = format!("/shopping-carts/{cart}/checkout");
    let t0 = done;
    let (checkout, resp, done) = timed_request(
        conn,
        rec,
        lc::CHECKOUT,
        t0,
        Method::POST,
        &path,
        &headers,
        Some(ctx.checkout_body.clone()),
        stop,
    )
    .await;
    ctx.audit_checkout(conn, cart, t0, checkout, resp.as_ref(), done);
    let order = match checkout {
        Outcome::Status(code @ (200 | 202)) => match order_body(resp.as_ref()) {
            Some(OrderBody {
                order_id: Some(id),
                status,
            }) => {
                let mut r = rec.borrow_mut();
                let seen = status.as_deref().and_then(OrderStatus::parse);
                if code == 200 {
                    r.lifecycle.checkouts.placed += 1;
                } else {
                    r.lifecycle.checkouts.pending += 1;
                }
                let default = if code == 200 {
                    OrderStatus::Placed
                } else {
                    OrderStatus::Pending
                };
                Some((id, seen.unwrap_or(default)))
            }
            _ => {
                rec.borrow_mut().lifecycle.checkouts.failed += 1;
                return fail(Outcome::Invalid(code), done);
            }
        },
        Outcome::Status(402) => {
            rec.borrow_mut().lifecycle.checkouts.declined += 1;
            None
        }
        Outcome::Status(409) if error_code(resp.as_ref()).as_deref() == Some("OUT_OF_STOCK") => {
            rec.borrow_mut().lifecycle.checkouts.out_of_stock += 1;
            None
        }
        Outcome::Failed(Failure::Stopped) => return (checkout, done),
        other => {
            rec.borrow_mut().lifecycle.checkouts.failed += 1;
            return fail(other, done);
        }
    };

    let mut done = done;
    if let Some((id, status)) = order {
        match follow_order(ctx, cfg, conn, t, rec, id, status, done).await {
            Ok((status, d)) => {
                let mut r = rec.borrow_mut();
                let f = &mut r.lifecycle.final_status;
                match status {
                    OrderStatus::Fulfilled => f.fulfilled += 1,
                    OrderStatus::Cancelled => f.cancelled += 1,
                    _ => f.not_final += 1,
                }
                done = d;
            }
            Err((o, d)) => {
                rec.borrow_mut().lifecycle.final_status.unknown += 1;
                return fail(o, d);
            }
        }
    }

    let path = format!("/customers/{customer}/orders?limit=10");
    let (o, resp, done) = timed_step(
        conn,
        rec,
        lc::LIST_ORDERS,
        done,
        Method::GET,
        &path,
        None,
        stop,
    )
    .await;
    if o != Outcome::Status(200) {
        return fail(o, done);
    }
    let page = resp.and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if !page.is_some_and(|p| p.get("items").is_some_and(serde_json::Value::is_array)) {
        return fail(Outcome::Invalid(200), done);
    }
    rec.borrow_mut().lifecycle.iterations.ok += 1;
    (checkout, done)
}

/// The order part of a `lifecycle` iteration: cancel (if `t` is chosen) and poll until final,
/// or poll `--polls` times. Returns the last status seen, or the outcome that ended it.
#[allow(clippy::too_many_arguments)]
async fn follow_order(
    ctx: &Ctx,
    cfg: &LifecycleConfig,
    conn: &mut Conn,
    t: u64,
    rec: &RefCell<WorkerRec>,
    id: u64,
    mut status: OrderStatus,
    mut done: Instant,
) -> Result<(OrderStatus, Instant), (Outcome, Instant)> {
    let stop = ctx.end;
    let cancel = cancels(t, ctx.cancel_ppm);
    let polls = if cancel {
        let path = format!("/orders/{id}/cancel");
        let (o, resp, d) =
            timed_step(conn, rec, lc::CANCEL, done, Method::POST, &path, None, stop).await;
        done = d;
        let mut r = rec.borrow_mut();
        let c = &mut r.lifecycle.cancels;
        match o {
            Outcome::Status(202) => {
                c.accepted += 1;
                status = body_status(resp.as_ref()).unwrap_or(OrderStatus::Cancelling);
            }
            Outcome::Status(200) => {
                c.already_cancelled += 1;
                status = OrderStatus::Cancelled;
            }
            Outcome::Status(409)
                if error_code(resp.as_ref()).as_deref() == Some("ORDER_ALREADY_FULFILLED") =>
            {
                c.already_fulfilled += 1;
                status = OrderStatus::Fulfilled;
            }
            Outcome::Failed(Failure::Stopped) => return Err((o, done)),
            other => {
                c.failed += 1;
                return Err((other, done));
            }
        }
        cfg.final_polls
    } else {
        cfg.polls
    };
    let path = format!("/orders/{id}");
    for _ in 0..polls {
        // After a cancel, polling ends as soon as the order is final.
        if cancel && status.is_final() {
            break;
        }
        let now = match pause(cfg.poll_interval, stop).await {
            Ok(now) => now,
            Err(now) => return Err((Outcome::Failed(Failure::Stopped), now)),
        };
        let (o, resp, d) = timed_step(
            conn,
            rec,
            lc::GET_ORDER,
            now,
            Method::GET,
            &path,
            None,
            stop,
        )
        .await;
        done = d;
        if o != Outcome::Status(200) {
            return Err((o, done));
        }
        status = match body_status(resp.as_ref()) {
            Some(s) => s,
            None => return Err((Outcome::Invalid(200), done)),
        };
    }
    Ok((status, done))
}

/// Send one request (starting now, `t0` being "now" as already measured), record it as step
/// `idx`, return its outcome, body and completion time.
#[allow(clippy::too_many_arguments)]
async fn timed_step(
    conn: &mut Conn,
    rec: &RefCell<WorkerRec>,
    idx: usize,
    t0: Instant,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    stop: Option<Instant>,
) -> (Outcome, Option<Bytes>, Instant) {
    timed_request(conn, rec, idx, t0, method, path, &[], body, stop).await
}

/// [`timed_step`] with extra request headers.
#[allow(clippy::too_many_arguments)]
async fn timed_request(
    conn: &mut Conn,
    rec: &RefCell<WorkerRec>,
    idx: usize,
    t0: Instant,
    method: Method,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Option<Bytes>,
    stop: Option<Instant>,
) -> (Outcome, Option<Bytes>, Instant) {
    let res = conn
        .request_with(method, path, headers, body, t0, stop)
        .await;
    let done = Instant::now();
    let mut rec = rec.borrow_mut();
    let (o, body) = match res {
        Ok(r) => {
            if let Some(v) = &r.served_by {
                rec.served_by(v, done);
            }
            (Outcome::Status(r.status), Some(r.body))
        }
        Err(f) => (Outcome::Failed(f), None),
    };
    rec.step(idx, o, done - t0);
    (o, body, done)
}

/// Setup phase of `checkout`: create `n` carts with one item each. Returns cart ids and the
/// number of carts that could not be prepared.
async fn setup_carts(
    cfg: &RunConfig,
    target: &Arc<Target>,
    n: u64,
    show_progress: bool,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let conns = connect_all(target, cfg.concurrency, cfg.timeout).await?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let products = cfg.products.max(1);
    let bar = show_progress.then(|| {
        let bar = ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "setup  [{elapsed_precise}] {wide_bar} {pos}/{len} carts ({per_sec})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let mut set = JoinSet::new();
    for mut conn in conns {
        let next = next.clone();
        let done = done.clone();
        let bar = bar.clone();
        set.spawn(async move {
            let mut ids = Vec::new();
            let mut failures = 0u64;
            let mut last_error = None;
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n {
                    break;
                }
                match prepare_cart(&mut conn, i, products).await {
                    Ok(id) => ids.push(id),
                    Err(e) => {
                        failures += 1;
                        last_error = Some(e);
                    }
                }
                done.fetch_add(1, Relaxed);
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
            (ids, failures, last_error)
        });
    }
    let mut ids = Vec::with_capacity(n as usize);
    let mut failures = 0;
    let mut last_error = None;
    while let Some(r) = set.join_next().await {
        let (i, f, e) = r.context("setup task failed")?;
        ids.extend(i);
        failures += f;
        if e.is_some() {
            last_error = e;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if ids.is_empty() && n > 0 {
        bail!(
            "setup failed: could not create any cart with an item via {} ({})",
            cfg.base_url,
            last_error.unwrap_or_else(|| "no detail".into())
        );
    }
    ids.sort_unstable();
    Ok((ids, failures))
}

async fn prepare_cart(conn: &mut Conn, i: u64, products: u64) -> Result<u64, String> {
    let body = Bytes::from(format!("{{\"customer_id\":{}}}", i % 10_000 + 1));
    let resp = setup_request(conn, "/shopping-cart", body).await?;
    let cart = serde_json::from_slice::<CartCreated>(&resp)
        .map_err(|e| format!("create cart: unexpected body: {e}"))?
        .shopping_cart_id;
    let body = Bytes::from(format!(
        "{{\"product_id\":{},\"quantity\":1}}",
        i % products + 1
    ));
    setup_request(conn, &format!("/shopping-carts/{cart}/addItem"), body).await?;
    Ok(cart)
}

/// POST with retries on 5xx / transport errors.
async fn setup_request(conn: &mut Conn, path: &str, body: Bytes) -> Result<Bytes, String> {
    let mut last = String::new();
    for attempt in 0..SETUP_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(20 << attempt.min(5))).await;
        }
        match conn
            .request(Method::POST, path, Some(body.clone()), Instant::now(), None)
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => return Ok(r.body),
            Ok(r) if r.status >= 500 => last = format!("POST {path}: HTTP {}", r.status),
            Ok(r) => {
                return Err(format!(
                    "POST {path}: HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ))
            }
            Err(f) => last = format!("POST {path}: {f:?}"),
        }
    }
    Err(last)
}

fn progress_bar(cfg: &RunConfig, limit: u64, show: bool) -> Option<ProgressBar> {
    if !show {
        return None;
    }
    let (len, template) = match cfg.duration {
        Some(d) => (
            d.as_secs().max(1),
            "[{elapsed_precise}] {wide_bar} {pos}/{len}s {msg}",
        ),
        None => (limit, "[{elapsed_precise}] {wide_bar} {pos}/{len} {msg}"),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(bar)
}

async fn drive_progress(bar: ProgressBar, live: Arc<Live>, ctx: Arc<Ctx>) {
    let mut last_done = 0u64;
    let mut last_t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let done = live.done.load(Relaxed);
        let dt = (now - last_t).as_secs_f64();
        let rate = if dt > 0.0 {
            (done - last_done) as f64 / dt
        } else {
            0.0
        };
        last_done = done;
        last_t = now;
        match ctx.end {
            Some(_) => bar.set_position((now - ctx.start).as_secs()),
            None => bar.set_position(done),
        }
        bar.set_message(format!(
            "{done} done, {rate:.0}/s, non-2xx {}, errors {}",
            live.non_2xx.load(Relaxed),
            live.failed.load(Relaxed)
        ));
    }
}
