//! Broker ceiling for checkout: how many orders per second can RabbitMQ take under publisher
//! confirms on this machine, with nothing else in the way?
//!
//! Publishes N real `OrderMessage`s (same JSON, ~250 bytes, same properties: persistent,
//! `message_id`, `x-request-id` header; mandatory, default exchange, routing key = queue) to a
//! fresh classic queue declared with the cart's `Topology`, over K confirm-mode channels (default
//! 20, like the cart's pool), each keeping at most W unconfirmed publishes in flight. Prints
//!
//! ```text
//! publish_ceiling: N msgs in S s = R msg/s
//! ```
//!
//! and deletes its queues (unless `--keep`).
//!
//! ```text
//! cargo run --release -p cart-service --example publish_ceiling -- --messages 20000
//! cargo run --release -p cart-service --example publish_ceiling -- --delete bench_orders_123
//! ```
//! `--delete Q` only deletes the queue Q and the rest of its topology (`Q.dlq`, `Q.cancel`,
//! `Q.events.*`, the exchanges `Q.dlx` and `Q.events`: cleanup for the bench scripts)
//! and exits; `--purge Q` only empties Q. The broker comes from `AMQP_URL`.

use clap::Parser;
use common::messaging::{self, OrderItem, OrderMessage, QueueType, Topology};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "RabbitMQ publish+confirm ceiling with real order messages")]
struct Args {
    /// Messages to publish in total.
    #[arg(long, short = 'n', default_value_t = 20_000)]
    messages: usize,
    /// Confirm-mode channels publishing in parallel (the cart's CHANNEL_POOL_SIZE).
    #[arg(long, short = 'k', default_value_t = 20)]
    channels: usize,
    /// Unconfirmed publishes allowed in flight per channel.
    #[arg(long, short = 'w', default_value_t = 64)]
    window: usize,
    /// Queue name (default: a fresh bench_ceiling_<uuid>).
    #[arg(long)]
    queue: Option<String>,
    /// Keep the queues after the run.
    #[arg(long)]
    keep: bool,
    /// Only delete this queue (and the rest of its topology), then exit.
    #[arg(long, value_name = "QUEUE")]
    delete: Option<String>,
    /// Only empty this queue, then exit (between benchmark rounds, so each round's checkouts
    /// land in an empty queue as the ceiling's publishes do).
    #[arg(long, value_name = "QUEUE")]
    purge: Option<String>,
}

/// One order as the cart builds it for a one-item cart, with its properties.
fn order(i: usize) -> (Vec<u8>, BasicProperties) {
    let n = i as i32 + 1;
    let order = OrderMessage {
        order_uid: OrderMessage::new_uid(),
        order_id: n,
        shopping_cart_id: n,
        customer_id: n % 1000 + 1,
        items: vec![OrderItem {
            product_id: n % 1000 + 1,
            quantity: 1,
        }],
        created_at: time::OffsetDateTime::now_utc(),
    };
    // The cart forwards a request id like the one our request-id layer generates (a uuid).
    let request_id = OrderMessage::new_uid();
    (order.to_json(), order.properties(&request_id))
}

async fn wait_confirm(
    confirm: impl std::future::Future<Output = lapin::Result<Confirmation>>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(30), confirm).await?? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => anyhow::bail!("message returned (unroutable)"),
        Confirmation::Nack(_) => anyhow::bail!("message nacked"),
        Confirmation::NotRequested => anyhow::bail!("channel not in confirm mode"),
    }
}

/// Publishes `messages` on `channel`, keeping at most `window` confirms outstanding.
async fn publish_all(
    channel: Channel,
    queue: String,
    messages: Vec<(Vec<u8>, BasicProperties)>,
    window: usize,
) -> anyhow::Result<usize> {
    let mut pending = VecDeque::with_capacity(window);
    let count = messages.len();
    for (body, properties) in messages {
        if pending.len() >= window {
            if let Some(confirm) = pending.pop_front() {
                wait_confirm(confirm).await?;
            }
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            )
            .await?;
        pending.push_back(confirm);
    }
    while let Some(confirm) = pending.pop_front() {
        wait_confirm(confirm).await?;
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(count)
}

async fn delete_topology(connection: &Connection, topology: &Topology) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    // Every queue the topology declares (the cancel and event queues too: a benchmark's run
    // would otherwise leave them behind on the broker, one set per run).
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
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

async fn run(args: &Args, connection: &Connection, topology: &Topology) -> anyhow::Result<()> {
    let setup = connection.create_channel().await?;
    topology.declare(&setup).await?;

    // Messages are built before the clock starts; split round-robin over the channels.
    let mut shares: Vec<Vec<(Vec<u8>, BasicProperties)>> = (0..args.channels)
        .map(|_| Vec::with_capacity(args.messages / args.channels + 1))
        .collect();
    let mut bytes = 0usize;
    for i in 0..args.messages {
        let message = order(i);
        bytes += message.0.len();
        shares[i % args.channels].push(message);
    }
    let mut channels = Vec::with_capacity(args.channels);
    for _ in 0..args.channels {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    eprintln!(
        "publish_ceiling: queue {}, {} channels x window {}, avg body {} bytes",
        topology.queue,
        args.channels,
        args.window,
        bytes / args.messages.max(1)
    );

    let started = Instant::now();
    let tasks: Vec<_> = channels
        .into_iter()
        .zip(shares)
        .map(|(channel, share)| {
            tokio::spawn(publish_all(
                channel,
                topology.queue.clone(),
                share,
                args.window,
            ))
        })
        .collect();
    let mut confirmed = 0;
    for task in tasks {
        confirmed += task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(confirmed == args.messages, "only {confirmed} confirmed");
    println!(
        "publish_ceiling: {} msgs in {:.2} s = {:.0} msg/s",
        confirmed,
        elapsed,
        confirmed as f64 / elapsed
    );
    let _ = setup.close(200, "done".into()).await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.messages > 0 && args.channels > 0 && args.window > 0,
        "--messages, --channels and --window must be positive"
    );
    let broker = messaging::Broker::read(&mut common::config::Env::process())?;
    let connection = messaging::connect(
        &broker,
        ConnectionProperties::default().with_connection_name("publish-ceiling".into()),
        std::time::Duration::from_secs(5),
    )
    .await?;

    if let Some(queue) = &args.purge {
        let channel = connection.create_channel().await?;
        let purged = channel
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await?;
        println!("publish_ceiling: purged {purged} messages from {queue}");
        let _ = connection.close(200, "done".into()).await;
        return Ok(());
    }

    if let Some(queue) = &args.delete {
        let topology = Topology::new(queue, QueueType::Classic);
        delete_topology(&connection, &topology).await?;
        println!("publish_ceiling: deleted {queue} and its topology");
        let _ = connection.close(200, "done".into()).await;
        return Ok(());
    }

    let queue = args
        .queue
        .clone()
        .unwrap_or_else(|| format!("bench_ceiling_{}", OrderMessage::new_uid().replace('-', "")));
    let topology = Topology::new(&queue, QueueType::Classic);
    let result = run(&args, &connection, &topology).await;
    if !args.keep {
        // Always clean up what this run declared, even after a failure.
        delete_topology(&connection, &topology).await?;
    }
    let _ = connection.close(200, "done".into()).await;
    result
}
