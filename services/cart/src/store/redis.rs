//! Carts in Redis, shared by every cart instance.
//!
//! Key layout (`P` is `REDIS_KEY_PREFIX`):
//! - `P cart:next_id`, `P order:next_id`: the id counters (`INCR`), never expire.
//! - `P cart:<id>`: a hash per cart: `customer`, `status`, `order_id` (once checked out),
//!   the pending order `p_id`, `p_uid`, `p_at` (µs since the epoch), `p_pub` (items frozen),
//!   the hold `holder`, `lease` (ms since the epoch, Redis's clock), and one `i:<product id>`
//!   field per item holding its quantity. It expires `cart_ttl` after its last change.
//!
//! Every transition is one Lua script (`lua/*.lua`, sent as `EVALSHA`): Redis runs a script
//! alone, so the read, the checks and the write of a transition are one atomic step across
//! every instance, in one round trip. Reading a cart is a plain `HGETALL`.

use super::CartStore;
use crate::carts::{
    line_items_of, CartError, CartStatus, CartView, CheckoutTicket, Lifetimes, StoreError,
};
use common::messaging::{OrderItem, OrderMessage};
use common::metrics::Metrics;
use common::store::redis::{connect, ping, unavailable, RedisConfig, RedisSetupError};
use common::store::{StoreKind, StoreMetrics, StoreUnavailable};
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::time::Duration;
use time::OffsetDateTime;

// The scripts' answers; each script's first element (or only value) is one of these.
const OK: i64 = 0;
const NOT_FOUND: i64 = 1;
const CHECKED_OUT: i64 = 2;
const IN_PROGRESS: i64 = 3;
const ORDER_PENDING: i64 = 4;
const EMPTY: i64 = 5;
const OVERFLOW: i64 = 6;
const IDS_EXHAUSTED: i64 = 7;
const ITEM_NOT_FOUND: i64 = 8;

struct Scripts {
    create: Script,
    add_item: Script,
    set_item: Script,
    begin_checkout: Script,
    complete_checkout: Script,
    abort_checkout: Script,
}

pub struct RedisCartStore {
    connection: ConnectionManager,
    /// `P cart:`; a cart's key is this plus its id.
    cart_prefix: String,
    cart_ids: String,
    order_ids: String,
    ttl_ms: u64,
    lease_ms: u64,
    /// `STORE_TIMEOUT_MS`: the most one store call may take, reconnecting included.
    timeout: Duration,
    scripts: Scripts,
    observed: StoreMetrics,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A reply that is not what the script returns: a bug or a foreign key, not bad input.
fn malformed(what: &str) -> StoreError {
    StoreUnavailable::new("Redis", format!("unexpected reply to {what}")).into()
}

fn store_error(err: redis::RedisError) -> StoreError {
    unavailable(err).into()
}

impl RedisCartStore {
    /// A store on a lazy, self-reconnecting connection: Redis need not be up yet.
    pub fn new(config: &RedisConfig, lifetimes: Lifetimes) -> Result<Self, RedisSetupError> {
        let prefix = &config.key_prefix;
        Ok(Self {
            connection: connect(config)?,
            cart_prefix: format!("{prefix}cart:"),
            cart_ids: format!("{prefix}cart:next_id"),
            order_ids: format!("{prefix}order:next_id"),
            ttl_ms: millis(lifetimes.cart_ttl),
            lease_ms: millis(lifetimes.checkout_lease),
            timeout: config.timeout,
            observed: StoreMetrics::default(),
            scripts: Scripts {
                create: Script::new(include_str!("lua/create.lua")),
                add_item: Script::new(include_str!("lua/add_item.lua")),
                set_item: Script::new(include_str!("lua/set_item.lua")),
                begin_checkout: Script::new(include_str!("lua/begin_checkout.lua")),
                complete_checkout: Script::new(include_str!("lua/complete_checkout.lua")),
                abort_checkout: Script::new(include_str!("lua/abort_checkout.lua")),
            },
        })
    }

    fn cart_key(&self, cart_id: i32) -> String {
        let mut key = String::with_capacity(self.cart_prefix.len() + 11);
        key.push_str(&self.cart_prefix);
        // Writing to a String cannot fail.
        let _ = write!(key, "{cart_id}");
        key
    }

    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Runs one command within `STORE_TIMEOUT_MS`. The connection manager bounds the connect
    /// and the answer separately; a request that has to reconnect to a silent Redis would wait
    /// for both.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let bounded = async {
            match tokio::time::timeout(self.timeout, command).await {
                Ok(result) => result.map_err(store_error),
                Err(_) => Err(StoreUnavailable::new(
                    "Redis",
                    format!("no answer within {:?}", self.timeout),
                )
                .into()),
            }
        };
        self.observed.observe(operation, bounded).await
    }

    /// Times each command into `store_operation_seconds{store="redis"}` (and spans it).
    pub fn observed(mut self, metrics: &Metrics) -> Self {
        self.observed = StoreMetrics::new(metrics, "redis");
        self
    }

    /// Runs one of the item scripts (`add_item.lua`, `set_item.lua`): both take the cart key, the
    /// item's field, a quantity and the cart's TTL, and answer a status code first.
    async fn item_script(
        &self,
        operation: &'static str,
        script: &Script,
        cart_id: i32,
        product_id: i32,
        quantity: i32,
    ) -> Result<Vec<i64>, StoreError> {
        let mut field = String::with_capacity(13);
        let _ = write!(field, "i:{product_id}");
        self.bounded(
            operation,
            script
                .key(self.cart_key(cart_id))
                .arg(field)
                .arg(quantity)
                .arg(self.ttl_ms)
                .invoke_async(&mut self.connection()),
        )
        .await
    }

    /// `set_item.lua`: sets a quantity, or removes the item with 0.
    async fn set_item(
        &self,
        cart_id: i32,
        product_id: i32,
        quantity: i32,
    ) -> Result<(), StoreError> {
        let reply = self
            .item_script(
                "set_item",
                &self.scripts.set_item,
                cart_id,
                product_id,
                quantity,
            )
            .await?;
        match reply.first().copied() {
            Some(OK) => Ok(()),
            Some(ITEM_NOT_FOUND) => Err(CartError::ItemNotFound {
                cart_id,
                product_id,
            }
            .into()),
            Some(code) => Err(refusal(cart_id, code, reply.get(1).copied())
                .map(StoreError::from)
                .unwrap_or_else(|| malformed("set_item"))),
            None => Err(malformed("set_item")),
        }
    }
}

/// The refusal a script's `{code[, order id]}` stands for.
fn refusal(cart_id: i32, code: i64, order_id: Option<i64>) -> Option<CartError> {
    Some(match code {
        NOT_FOUND => CartError::NotFound(cart_id),
        CHECKED_OUT => CartError::AlreadyCheckedOut {
            cart_id,
            order_id: order_id.and_then(|id| i32::try_from(id).ok()).unwrap_or(0),
        },
        IN_PROGRESS => CartError::CheckoutInProgress(cart_id),
        ORDER_PENDING => CartError::OrderPending(cart_id),
        EMPTY => CartError::Empty(cart_id),
        IDS_EXHAUSTED => CartError::IdsExhausted("order"),
        _ => return None,
    })
}

fn int(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

fn int32(value: Option<&Value>) -> Option<i32> {
    int(value).and_then(|n| i32::try_from(n).ok())
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn micros_to_time(micros: &str) -> Option<OffsetDateTime> {
    let micros: i128 = micros.parse().ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(micros * 1000).ok()
}

/// `begin_checkout.lua`'s success reply as a ticket.
fn ticket_from(cart_id: i32, holder: u64, reply: &[Value]) -> Option<CheckoutTicket> {
    let customer_id = int32(reply.get(1))?;
    let order_id = int32(reply.get(2))?;
    let order_uid = text(reply.get(3))?;
    let created_at = micros_to_time(&text(reply.get(4))?)?;
    let mut items = Vec::with_capacity(reply.len().saturating_sub(5) / 2);
    for pair in reply.get(5..)?.chunks(2) {
        items.push(OrderItem {
            product_id: int32(pair.first())?,
            quantity: int32(pair.get(1))?,
        });
    }
    items.sort_unstable_by_key(|item| item.product_id);
    Some(CheckoutTicket {
        cart_id,
        holder,
        order: OrderMessage {
            order_uid,
            order_id,
            shopping_cart_id: cart_id,
            customer_id,
            items,
            created_at,
        },
    })
}

/// An `HGETALL` reply as the cart's view; `None` if it is not a cart's hash.
fn view_from(cart_id: i32, fields: &[Value]) -> Option<CartView> {
    let mut customer_id = None;
    let mut status = None;
    let mut order_id = None;
    let mut items = BTreeMap::new();
    for pair in fields.chunks(2) {
        let Some(Value::BulkString(name)) = pair.first() else {
            return None;
        };
        match name.as_slice() {
            b"customer" => customer_id = int32(pair.get(1)),
            b"status" => status = text(pair.get(1)).as_deref().and_then(CartStatus::parse),
            b"order_id" => order_id = int32(pair.get(1)),
            [b'i', b':', product @ ..] => {
                let product_id = std::str::from_utf8(product).ok()?.parse().ok()?;
                items.insert(product_id, int32(pair.get(1))?);
            }
            _ => {}
        }
    }
    Some(CartView {
        shopping_cart_id: cart_id,
        customer_id: customer_id?,
        status: status?,
        items: line_items_of(&items),
        order_id,
    })
}

#[async_trait::async_trait]
impl CartStore for RedisCartStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    async fn create(&self, customer_id: i32) -> Result<i32, StoreError> {
        let id: i64 = self
            .bounded(
                "create",
                self.scripts
                    .create
                    .key(&self.cart_ids)
                    .arg(&self.cart_prefix)
                    .arg(customer_id)
                    .arg(self.ttl_ms)
                    .invoke_async(&mut self.connection()),
            )
            .await?;
        i32::try_from(id)
            .ok()
            .filter(|id| *id > 0)
            .ok_or(CartError::IdsExhausted("shopping cart").into())
    }

    async fn exists(&self, cart_id: i32) -> Result<bool, StoreError> {
        self.bounded(
            "exists",
            redis::cmd("EXISTS")
                .arg(self.cart_key(cart_id))
                .query_async(&mut self.connection()),
        )
        .await
    }

    async fn owner(&self, cart_id: i32) -> Result<Option<i32>, StoreError> {
        self.bounded(
            "owner",
            redis::cmd("HGET")
                .arg(self.cart_key(cart_id))
                .arg("customer")
                .query_async(&mut self.connection()),
        )
        .await
    }

    async fn view(&self, cart_id: i32) -> Result<CartView, StoreError> {
        let reply: Value = self
            .bounded(
                "view",
                redis::cmd("HGETALL")
                    .arg(self.cart_key(cart_id))
                    .query_async(&mut self.connection()),
            )
            .await?;
        let fields = match reply {
            Value::Array(fields) => fields,
            // RESP3 answers a map; flatten it to the RESP2 shape.
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return Err(malformed("HGETALL")),
        };
        if fields.is_empty() {
            return Err(CartError::NotFound(cart_id).into());
        }
        view_from(cart_id, &fields).ok_or_else(|| malformed("HGETALL"))
    }

    async fn add_item(
        &self,
        cart_id: i32,
        product_id: i32,
        quantity: i32,
    ) -> Result<(), StoreError> {
        let reply = self
            .item_script(
                "add_item",
                &self.scripts.add_item,
                cart_id,
                product_id,
                quantity,
            )
            .await?;
        match reply.first().copied() {
            Some(OK) => Ok(()),
            Some(OVERFLOW) => Err(CartError::QuantityOverflow { product_id }.into()),
            Some(code) => Err(refusal(cart_id, code, reply.get(1).copied())
                .map(StoreError::from)
                .unwrap_or_else(|| malformed("add_item"))),
            None => Err(malformed("add_item")),
        }
    }

    async fn set_quantity(
        &self,
        cart_id: i32,
        product_id: i32,
        quantity: i32,
    ) -> Result<(), StoreError> {
        // 0 means "remove" to the script; the trait's callers pass at least 1.
        self.set_item(cart_id, product_id, quantity.max(1)).await
    }

    async fn remove_item(&self, cart_id: i32, product_id: i32) -> Result<(), StoreError> {
        self.set_item(cart_id, product_id, 0).await
    }

    async fn begin_checkout(&self, cart_id: i32) -> Result<CheckoutTicket, StoreError> {
        let holder = rand::random::<u64>();
        let reply: Vec<Value> = self
            .bounded(
                "begin_checkout",
                self.scripts
                    .begin_checkout
                    .key(self.cart_key(cart_id))
                    .key(&self.order_ids)
                    .arg(OrderMessage::new_uid())
                    .arg(holder)
                    .arg(self.lease_ms)
                    .arg(self.ttl_ms)
                    .invoke_async(&mut self.connection()),
            )
            .await?;
        match int(reply.first()) {
            Some(OK) => ticket_from(cart_id, holder, &reply).ok_or_else(|| malformed("checkout")),
            Some(code) => Err(refusal(cart_id, code, int(reply.get(1)))
                .map(StoreError::from)
                .unwrap_or_else(|| malformed("checkout"))),
            None => Err(malformed("checkout")),
        }
    }

    async fn complete_checkout(&self, ticket: &CheckoutTicket) -> Result<(), StoreError> {
        let _closed: i64 = self
            .bounded(
                "complete_checkout",
                self.scripts
                    .complete_checkout
                    .key(self.cart_key(ticket.cart_id))
                    .arg(&ticket.order.order_uid)
                    .arg(self.ttl_ms)
                    .invoke_async(&mut self.connection()),
            )
            .await?;
        Ok(())
    }

    async fn abort_checkout(
        &self,
        ticket: &CheckoutTicket,
        published: bool,
    ) -> Result<(), StoreError> {
        let _released: i64 = self
            .bounded(
                "abort_checkout",
                self.scripts
                    .abort_checkout
                    .key(self.cart_key(ticket.cart_id))
                    .arg(ticket.holder)
                    .arg(if published { "1" } else { "0" })
                    .arg(self.ttl_ms)
                    .invoke_async(&mut self.connection()),
            )
            .await?;
        Ok(())
    }

    async fn check(&self) -> Result<(), String> {
        ping(&self.connection).await
    }
}
