//! Drain benchmark: how close does the warehouse come to the broker's raw consume+ack rate?
//!
//! In one run, on a fresh queue of its own:
//! 1. fills it with N valid order messages (the same JSON the cart publishes), pipelined with
//!    publisher confirms;
//! 2. drains it with a bare consumer: C channels, prefetch P, doing nothing but ack;
//! 3. refills it and drains it with the warehouse's own consumer (the library, in process):
//!    parse, validate, hand over to the batch writers, dedupe and apply (one transaction per
//!    batch with PostgreSQL), publish the batch's outcome events under confirms, ack;
//! 4. prints both rates and their ratio (target: >= 0.9 in memory, >= 0.5 into PostgreSQL), and
//!    deletes its queues (and its schemas).
//!
//! ```text
//! cargo run --release -p warehouse --example drain_bench -- --messages 100000
//! ```
//! Options: `--messages N` (100000), `--channels C` (10), `--prefetch P` (10), `--rounds R` (1:
//! raw then warehouse, R times, each on a fresh fill), `--writers W` (2), `--batch-max B` (100),
//! `--database-url URL` (the ledger on PostgreSQL, a fresh `bench_wh_*` schema per drain,
//! dropped afterwards; default: in memory), `AMQP_URL` for the broker.

use common::messaging::{self, Broker, OrderItem, OrderMessage, QueueType, Topology};
use common::store::postgres::{self as pg, PgConfig, PgPool};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warehouse::configuration::{ConsumerSettings, DEFAULT_BATCH_MAX, DEFAULT_WRITERS};
use warehouse::consumer::{ConsumerState, OrderConsumer};
use warehouse::ledger::memory::MemoryLedger;
use warehouse::ledger::postgres::{PgLedger, MIGRATOR};
use warehouse::ledger::{Ledger, LedgerStore};

/// Publishes in flight at once before waiting for the oldest confirm.
const CONFIRM_WINDOW: usize = 2000;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

struct Args {
    messages: usize,
    channels: u16,
    prefetch: u16,
    rounds: usize,
    writers: u16,
    batch_max: usize,
    database_url: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        messages: 100_000,
        channels: 10,
        prefetch: 10,
        rounds: 1,
        writers: DEFAULT_WRITERS,
        batch_max: usize::from(DEFAULT_BATCH_MAX),
        database_url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--messages" => args.messages = value()?.parse()?,
            "--channels" => args.channels = value()?.parse()?,
            "--prefetch" => args.prefetch = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--writers" => args.writers = value()?.parse()?,
            "--batch-max" => args.batch_max = value()?.parse()?,
            "--database-url" => args.database_url = Some(value()?),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(
        args.messages > 0
            && args.channels > 0
            && args.prefetch > 0
            && args.rounds > 0
            && args.writers > 0
            && args.batch_max > 0,
        "all options must be positive"
    );
    Ok(args)
}

/// Orders shaped like the cart's: 1 to 3 items, fresh uids.
fn orders(n: usize) -> Vec<(Vec<u8>, BasicProperties)> {
    let now = time::OffsetDateTime::now_utc();
    (0..n)
        .map(|i| {
            let i = i as i32;
            let order = OrderMessage {
                order_uid: OrderMessage::new_uid(),
                order_id: i + 1,
                shopping_cart_id: i + 1,
                customer_id: i % 1000 + 1,
                items: (0..(i % 3 + 1))
                    .map(|k| OrderItem {
                        product_id: (i * 7 + k) % 1000 + 1,
                        quantity: k + 1,
                    })
                    .collect(),
                created_at: now,
            };
            let request_id = format!("bench-{i}");
            (order.to_json(), order.properties(&request_id))
        })
        .collect()
}

async fn fill(
    connection: &Connection,
    queue: &str,
    messages: &[(Vec<u8>, BasicProperties)],
) -> anyhow::Result<Duration> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
    for (body, properties) in messages {
        if pending.len() >= CONFIRM_WINDOW {
            if let Some(confirm) = pending.pop_front() {
                let confirmation: lapin::Confirmation = confirm.await?;
                anyhow::ensure!(confirmation.is_ack(), "the broker nacked a publish");
            }
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        anyhow::ensure!(confirm.await?.is_ack(), "the broker nacked a publish");
    }
    let elapsed = started.elapsed();
    let _ = channel.close(200, "filled".into()).await;
    Ok(elapsed)
}

async fn ready_count(connection: &Connection, queue: &str) -> anyhow::Result<u32> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "counted".into()).await;
    Ok(declared.message_count())
}

/// Waits (polling every millisecond) until `done()` reaches `target`; the elapsed time from `started`.
async fn wait_drained(
    started: Instant,
    target: u64,
    done: impl Fn() -> u64,
) -> anyhow::Result<Duration> {
    while done() < target {
        anyhow::ensure!(
            started.elapsed() < DRAIN_TIMEOUT,
            "not drained after {DRAIN_TIMEOUT:?} ({} of {target})",
            done()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}

/// A bare consumer: C channels with prefetch P on one connection, acking every delivery.
async fn drain_raw(broker: &Broker, queue: &str, args: &Args) -> anyhow::Result<Duration> {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let connection = messaging::connect(
        broker,
        ConnectionProperties::default().with_connection_name("drain-bench-raw".into()),
        Duration::from_secs(5),
    )
    .await?;
    let mut tasks = Vec::new();
    for index in 0..args.channels {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(args.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                format!("raw-{index}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let acked = Arc::clone(&acked);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let _channel = channel;
            loop {
                let next = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    next = consumer.next() => next,
                };
                let Some(Ok(delivery)) = next else { break };
                if delivery.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let elapsed = wait_drained(started, args.messages as u64, || {
        acked.load(Ordering::Relaxed)
    })
    .await?;
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let _ = connection.close(200, "drained".into()).await;
    Ok(elapsed)
}

/// A fresh ledger: in memory, or on a new schema of its own (the same bodies are published for
/// every drain, and a ledger that has seen them would count them as duplicates).
async fn fresh_store(
    args: &Args,
) -> anyhow::Result<(Arc<dyn LedgerStore>, Option<(PgPool, String)>)> {
    let Some(url) = &args.database_url else {
        return Ok((Arc::new(MemoryLedger::new()), None));
    };
    let schema = format!("bench_wh_{}", uuid::Uuid::new_v4().simple());
    let mut config = PgConfig::for_tests(url, &schema);
    config.max_connections = u32::from(args.writers) + 2;
    config.timeout = Duration::from_secs(10);
    let pool = pg::connect(&config, &MIGRATOR).await?;
    Ok((Arc::new(PgLedger::new(pool.clone())), Some((pool, schema))))
}

/// The warehouse's own consumer (library, in process) on the same queue.
async fn drain_warehouse(
    broker: &Broker,
    topology: &Topology,
    args: &Args,
) -> anyhow::Result<Duration> {
    let mut settings = ConsumerSettings::local(&topology.queue);
    settings.broker = broker.clone();
    settings.channels = args.channels;
    settings.prefetch = args.prefetch;
    settings.batch.writers = args.writers;
    settings.batch.batch_max = args.batch_max;
    settings.connection_name = "drain-bench-warehouse".to_string();
    let metrics = common::metrics::Metrics::new();
    let (store, schema) = fresh_store(args).await?;
    let ledger = Arc::new(Ledger::registered(store, &metrics));
    let state = Arc::new(ConsumerState::new(args.channels, topology, &metrics));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let consumer = tokio::spawn(
        OrderConsumer::new(settings, Arc::clone(&ledger), Arc::clone(&state)).run(stop.clone()),
    );
    let drained = wait_drained(started, args.messages as u64, || {
        ledger.applied_here() + ledger.duplicates() + ledger.rejected()
    })
    .await;
    stop.cancel();
    consumer.await?;
    let totals = ledger.store().totals().await;
    if let Some((pool, schema)) = schema {
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&pool)
            .await?;
        pool.close().await;
    }
    let elapsed = drained?;
    let batches = state.batches().max(1);
    println!(
        "  {} batches, {:.1} deliveries per batch, {} store failures",
        batches,
        args.messages as f64 / batches as f64,
        state.store_failures()
    );
    anyhow::ensure!(
        ledger.applied_here() == args.messages as u64
            && ledger.rejected() == 0
            && totals?.orders_processed == args.messages as u64,
        "the warehouse applied {} orders ({} duplicates, {} rejected), expected {}",
        ledger.applied_here(),
        ledger.duplicates(),
        ledger.rejected(),
        args.messages
    );
    Ok(elapsed)
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

async fn run(
    args: &Args,
    broker: &Broker,
    topology: &Topology,
    connection: &Connection,
) -> anyhow::Result<()> {
    let setup = connection.create_channel().await?;
    topology.declare(&setup).await?;
    let messages = orders(args.messages);
    let bytes: usize = messages.iter().map(|(body, _)| body.len()).sum();
    println!(
        "drain_bench: {} orders (avg {} bytes), {} channels x prefetch {}, queue {}, ledger {}, {} writer(s), batch max {}",
        args.messages,
        bytes / args.messages,
        args.channels,
        args.prefetch,
        topology.queue,
        if args.database_url.is_some() { "postgresql" } else { "memory" },
        args.writers,
        args.batch_max
    );
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        // Even rounds run the warehouse first, so a systematic "second drain" effect cancels out.
        let warehouse_first = round % 2 == 0;
        let mut raw = Duration::ZERO;
        let mut app = Duration::ZERO;
        for step in 0..2 {
            let is_warehouse = (step == 0) == warehouse_first;
            // The same bodies each time: a fresh warehouse has never seen them.
            let fill_time = fill(connection, &topology.queue, &messages).await?;
            anyhow::ensure!(
                ready_count(connection, &topology.queue).await? as usize == args.messages,
                "the queue does not hold exactly the {} published orders",
                args.messages
            );
            let (label, elapsed) = if is_warehouse {
                app = drain_warehouse(broker, topology, args).await?;
                // The drain's outcome events, which nobody consumes here, would pile up.
                let purge = connection.create_channel().await?;
                for queue in [&topology.order_events_queue, &topology.stock_events_queue] {
                    purge
                        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                        .await?;
                }
                let _ = purge.close(200, "purged".into()).await;
                ("warehouse drain  ", app)
            } else {
                raw = drain_raw(broker, &topology.queue, args).await?;
                ("raw consume+ack  ", raw)
            };
            println!(
                "round {round}: fill {:>8.0} msg/s | {label} {:>8.0} msg/s ({:.2} s)",
                rate(args.messages, fill_time),
                rate(args.messages, elapsed),
                elapsed.as_secs_f64()
            );
        }
        let ratio = raw.as_secs_f64() / app.as_secs_f64();
        println!("round {round}: warehouse / raw = {ratio:.3}");
        ratios.push(ratio);
    }
    let ratio = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let target = if args.database_url.is_some() {
        0.5
    } else {
        0.9
    };
    let verdict = if ratio >= target { "meets" } else { "MISSES" };
    println!(
        "warehouse / raw drain rate, mean of {} round(s): {ratio:.3} ({verdict} the {target} target)",
        ratios.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = common::telemetry::init(
        "drain_bench",
        &common::config::ServiceConfig::for_tests("drain-bench"),
    );
    let args = parse_args()?;
    let broker = Broker::read(&mut common::config::Env::process())?;
    let queue = format!("bench_wh_{}", uuid::Uuid::new_v4().simple());
    let topology = Topology::new(&queue, QueueType::Classic);
    let connection = messaging::connect(
        &broker,
        ConnectionProperties::default().with_connection_name("drain-bench".into()),
        Duration::from_secs(5),
    )
    .await?;
    let result = run(&args, &broker, &topology, &connection).await;
    // Always clean up the queues this run created.
    let channel = connection.create_channel().await?;
    for name in topology.queues() {
        channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [&topology.dead_letter_exchange, &topology.events_exchange] {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "bench done".into()).await;
    result
}
