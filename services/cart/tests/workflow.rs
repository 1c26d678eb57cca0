//! The checkout workflow's rules without a broker or HTTP services: fakes of its ports (which
//! record every call in one shared log) over the real in-memory cart and order stores. What the
//! real authorizer, product service and RabbitMQ do is `tests/checkout.rs`'s business.

use axum::response::IntoResponse;
use cart_service::carts::{CartError, CartStatus, Lifetimes, StoreError};
use cart_service::checkout::ports::{CardAuthorizer, OrderPublishing, StockHolds};
use cart_service::checkout::{CheckoutError, CheckoutWorkflow, OrderPlaced, Outcome};
use cart_service::clients::stock::Reservation;
use cart_service::clients::{Unavailable, Verdict};
use cart_service::orders::{MemoryOrderStore, OrderStatus, OrderStore};
use cart_service::publisher::PublishError;
use cart_service::routes::CartRouteError;
use cart_service::store::{CartStore, MemoryCartStore};
use common::messaging::OrderMessage;
use common::metrics::Metrics;
use common::ErrorBody;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CARD: &str = "4111-1111-1111-1111";
const CUSTOMER: i32 = 42;

/// Every port call, in order: `reserve`, `authorize`, `publish`, `release`, `confirm`.
type Calls = Arc<Mutex<Vec<&'static str>>>;

fn log(calls: &Calls, call: &'static str) {
    calls.lock().expect("calls").push(call);
}

fn body(error: &str) -> ErrorBody {
    ErrorBody {
        error: error.to_string(),
        message: format!("the fake says {error}"),
        details: None,
    }
}

/// What the fake authorizer answers.
#[derive(Clone, Copy)]
enum Card {
    Approve,
    Decline,
    Reject,
    Unreachable,
    Panic,
}

/// What the fake broker does with a publish.
#[derive(Clone, Copy)]
enum Broker {
    Confirm,
    /// The broker refused it: certainly not enqueued.
    Nack,
    /// No confirm in time: its fate is unknown.
    ConfirmTimeout,
    Panic,
}

/// What the fake product service answers a reservation.
#[derive(Clone, Copy)]
enum Shelf {
    Hold,
    OutOfStock,
}

struct FakeAuthorizer {
    answer: Card,
    calls: Calls,
}

impl CardAuthorizer for FakeAuthorizer {
    async fn authorize(&self, card_number: &str, _: &str) -> Result<Verdict, Unavailable> {
        log(&self.calls, "authorize");
        assert_eq!(card_number, CARD);
        match self.answer {
            Card::Approve => Ok(Verdict::Approved),
            Card::Decline => Ok(Verdict::Declined(body("PAYMENT_DECLINED"))),
            Card::Reject => Ok(Verdict::Rejected(body("INVALID_CARD_NUMBER"))),
            Card::Unreachable => Err(Unavailable {
                service: "card authorizer",
                reason: "connection refused".to_string(),
            }),
            Card::Panic => panic!("the fake authorizer panics"),
        }
    }
}

struct FakePublisher {
    answer: Broker,
    calls: Calls,
    published: Arc<Mutex<Vec<OrderMessage>>>,
}

impl OrderPublishing for FakePublisher {
    async fn publish(&self, order: &OrderMessage, _: &str) -> Result<(), PublishError> {
        log(&self.calls, "publish");
        self.published
            .lock()
            .expect("published")
            .push(order.clone());
        match self.answer {
            Broker::Confirm => Ok(()),
            Broker::Nack => Err(PublishError::Nacked),
            Broker::ConfirmTimeout => Err(PublishError::ConfirmTimeout(Duration::from_secs(5))),
            Broker::Panic => panic!("the fake publisher panics"),
        }
    }
}

struct FakeStock {
    answer: Shelf,
    calls: Calls,
    /// The uids reserved, released and confirmed, in order.
    uids: Arc<Mutex<Vec<String>>>,
}

impl StockHolds for FakeStock {
    async fn reserve(&self, order: &OrderMessage, _: &str) -> Result<Reservation, Unavailable> {
        log(&self.calls, "reserve");
        self.uids
            .lock()
            .expect("uids")
            .push(order.order_uid.clone());
        match self.answer {
            Shelf::Hold => Ok(Reservation::Held),
            Shelf::OutOfStock => Ok(Reservation::Refused(
                StatusCode::CONFLICT,
                body("OUT_OF_STOCK"),
            )),
        }
    }

    async fn release(&self, order_uid: &str, _: &str) -> Result<(), Unavailable> {
        log(&self.calls, "release");
        self.uids.lock().expect("uids").push(order_uid.to_string());
        Ok(())
    }

    fn confirm(&self, order_uid: &str) {
        log(&self.calls, "confirm");
        self.uids.lock().expect("uids").push(order_uid.to_string());
    }
}

struct Shop {
    workflow: Arc<CheckoutWorkflow<FakeAuthorizer, FakePublisher, FakeStock>>,
    carts: Arc<MemoryCartStore>,
    orders: Arc<MemoryOrderStore>,
    metrics: Metrics,
    calls: Calls,
    published: Arc<Mutex<Vec<OrderMessage>>>,
    uids: Arc<Mutex<Vec<String>>>,
}

/// A workflow whose authorizer, broker and (with `Some`) stock answer as told.
fn open_shop(card: Card, broker: Broker, shelf: Option<Shelf>) -> Shop {
    let calls = Calls::default();
    let published = Arc::new(Mutex::new(Vec::new()));
    let uids = Arc::new(Mutex::new(Vec::new()));
    let carts = Arc::new(MemoryCartStore::new(Lifetimes::default()));
    let orders = Arc::new(MemoryOrderStore::default());
    let metrics = Metrics::new();
    let workflow = CheckoutWorkflow::new(
        Arc::clone(&carts) as Arc<dyn CartStore>,
        Arc::clone(&orders) as Arc<dyn OrderStore>,
        FakeAuthorizer {
            answer: card,
            calls: Arc::clone(&calls),
        },
        FakePublisher {
            answer: broker,
            calls: Arc::clone(&calls),
            published: Arc::clone(&published),
        },
        shelf.map(|answer| FakeStock {
            answer,
            calls: Arc::clone(&calls),
            uids: Arc::clone(&uids),
        }),
        &metrics,
    );
    Shop {
        workflow: Arc::new(workflow),
        carts,
        orders,
        metrics,
        calls,
        published,
        uids,
    }
}

impl Shop {
    async fn filled_cart(&self) -> i32 {
        let cart = self.carts.create(CUSTOMER).await.expect("create");
        self.carts.add_item(cart, 1, 2).await.expect("add");
        self.carts.add_item(cart, 3, 1).await.expect("add");
        cart
    }

    async fn check_out(&self, cart: i32) -> Result<Outcome, CheckoutError> {
        self.workflow
            .check_out(cart, CARD.to_string(), "req-workflow".to_string())
            .await
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().expect("calls").clone()
    }

    fn published(&self) -> Vec<OrderMessage> {
        self.published.lock().expect("published").clone()
    }

    fn uids(&self) -> Vec<String> {
        self.uids.lock().expect("uids").clone()
    }

    async fn status(&self, cart: i32) -> CartStatus {
        self.carts.view(cart).await.expect("view").status
    }

    /// Nothing recorded for the customer: no order was placed.
    async fn recorded_orders(&self) -> usize {
        let orders = self.orders.list_for_customer(CUSTOMER, None, 10).await;
        orders.expect("orders").len()
    }

    /// A counter's value as `/metrics` shows it.
    fn counter(&self, name: &str) -> u64 {
        let rendered = self.metrics.render();
        let line = rendered
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")).map(str::to_string));
        line.and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no counter {name} in {rendered}"))
    }

    /// Every outcome counter, in the order confirmed, pending, declined, out of stock, failed.
    fn counters(&self) -> [u64; 5] {
        [
            "checkouts_confirmed_total",
            "checkouts_pending_total",
            "checkouts_declined_total",
            "checkouts_out_of_stock_total",
            "checkouts_failed_total",
        ]
        .map(|name| self.counter(name))
    }
}

/// The HTTP answer the handler gives for a workflow error: status and body.
async fn answer(err: CheckoutError) -> (StatusCode, Value) {
    let response = CartRouteError::from(err).into_response();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).expect("json"))
}

#[tokio::test]
async fn an_approved_checkout_publishes_once_records_placed_and_closes_the_cart() {
    let shop = open_shop(Card::Approve, Broker::Confirm, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let outcome = shop.check_out(cart).await.expect("placed");
    let Outcome::Placed { order_id } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(shop.calls(), ["reserve", "authorize", "publish", "confirm"]);
    let published = shop.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].order_id, order_id);
    assert_eq!(published[0].shopping_cart_id, cart);
    // The hold that was confirmed is the one that was reserved: the published order's.
    assert_eq!(shop.uids(), vec![published[0].order_uid.clone(); 2]);
    let order = shop
        .orders
        .get(order_id)
        .await
        .expect("get")
        .expect("recorded");
    assert_eq!(order.status, OrderStatus::Placed);
    let view = shop.carts.view(cart).await.expect("view");
    assert_eq!(view.status, CartStatus::CheckedOut);
    assert_eq!(view.order_id, Some(order_id));
    assert_eq!(shop.counters(), [1, 0, 0, 0, 0]);
    assert_eq!(
        serde_json::to_value(OrderPlaced::from(outcome)).expect("json"),
        json!({"order_id": order_id, "status": "placed"})
    );
}

#[tokio::test]
async fn a_retried_checkout_of_a_checked_out_cart_answers_its_order_and_publishes_nothing() {
    let shop = open_shop(Card::Approve, Broker::Confirm, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let Ok(Outcome::Placed { order_id }) = shop.check_out(cart).await else {
        panic!("not placed");
    };
    let calls = shop.calls();
    let again = shop.check_out(cart).await.expect("its order");
    assert_eq!(
        again,
        Outcome::AlreadyCheckedOut {
            order_id,
            status: Some(OrderStatus::Placed)
        }
    );
    assert_eq!(shop.calls(), calls, "nothing asked again");
    assert_eq!(shop.published().len(), 1);
    assert_eq!(shop.counters(), [1, 0, 0, 0, 0]);
}

#[tokio::test]
async fn a_declined_card_publishes_nothing_releases_the_stock_and_reopens_the_cart() {
    let shop = open_shop(Card::Decline, Broker::Confirm, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let err = shop.check_out(cart).await.expect_err("declined");
    assert!(matches!(err, CheckoutError::Declined(_)), "{err:?}");
    assert_eq!(shop.calls(), ["reserve", "authorize", "release"]);
    let uids = shop.uids();
    assert_eq!(uids[0], uids[1], "the reservation made is the one released");
    assert!(shop.published().is_empty());
    assert_eq!(shop.recorded_orders().await, 0);
    assert_eq!(shop.status(cart).await, CartStatus::Open);
    // Reopened with its items editable: nothing may be in the queue.
    shop.carts.add_item(cart, 2, 1).await.expect("editable");
    assert_eq!(shop.counters(), [0, 0, 1, 0, 0]);
    let (status, body) = answer(err).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["error"], "PAYMENT_DECLINED");
}

#[tokio::test]
async fn out_of_stock_never_asks_the_authorizer() {
    let shop = open_shop(Card::Approve, Broker::Confirm, Some(Shelf::OutOfStock));
    let cart = shop.filled_cart().await;
    let err = shop.check_out(cart).await.expect_err("out of stock");
    assert!(matches!(err, CheckoutError::StockRefused(..)), "{err:?}");
    // The refused reservation is released all the same (idempotent: nothing is held).
    assert_eq!(shop.calls(), ["reserve", "release"]);
    assert_eq!(shop.status(cart).await, CartStatus::Open);
    assert_eq!(shop.recorded_orders().await, 0);
    assert_eq!(shop.counters(), [0, 0, 0, 1, 0]);
    let (status, body) = answer(err).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "OUT_OF_STOCK");
}

#[tokio::test]
async fn an_order_the_broker_certainly_did_not_take_is_undone_and_answered_503() {
    let shop = open_shop(Card::Approve, Broker::Nack, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let err = shop.check_out(cart).await.expect_err("not published");
    assert!(
        matches!(err, CheckoutError::NotPublished(PublishError::Nacked)),
        "{err:?}"
    );
    assert_eq!(shop.calls(), ["reserve", "authorize", "publish", "release"]);
    assert_eq!(shop.recorded_orders().await, 0);
    assert_eq!(shop.status(cart).await, CartStatus::Open);
    // Certainly not in the queue, so the items are not frozen.
    shop.carts.add_item(cart, 2, 1).await.expect("editable");
    assert_eq!(shop.counters(), [0, 0, 0, 0, 1]);
    let (status, body) = answer(err).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "ORDER_NOT_CONFIRMED");
}

#[tokio::test]
async fn an_unconfirmed_publish_is_answered_pending_and_not_undone() {
    let shop = open_shop(Card::Approve, Broker::ConfirmTimeout, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let outcome = shop.check_out(cart).await.expect("pending");
    let Outcome::Pending { order_id } = outcome else {
        panic!("{outcome:?}");
    };
    // Neither released (it may be in the queue) nor confirmed (it may not).
    assert_eq!(shop.calls(), ["reserve", "authorize", "publish"]);
    let order = shop
        .orders
        .get(order_id)
        .await
        .expect("get")
        .expect("recorded");
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(shop.status(cart).await, CartStatus::CheckedOut);
    assert_eq!(shop.counters(), [0, 1, 0, 0, 0]);
    assert_eq!(
        serde_json::to_value(OrderPlaced::from(outcome)).expect("json"),
        json!({"order_id": order_id, "status": "pending"})
    );
}

#[tokio::test]
async fn an_unreachable_authorizer_releases_the_reservation_and_is_a_503() {
    let shop = open_shop(Card::Unreachable, Broker::Confirm, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let err = shop.check_out(cart).await.expect_err("no authorizer");
    assert!(matches!(err, CheckoutError::Dependency(_)), "{err:?}");
    assert_eq!(shop.calls(), ["reserve", "authorize", "release"]);
    assert_eq!(shop.status(cart).await, CartStatus::Open);
    assert_eq!(shop.counters(), [0, 0, 0, 0, 1]);
    let (status, body) = answer(err).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "PAYMENT_SERVICE_UNAVAILABLE");
}

#[tokio::test]
async fn a_card_the_authorizer_rejects_is_a_400_released_and_counted_nowhere() {
    let shop = open_shop(Card::Reject, Broker::Confirm, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let err = shop.check_out(cart).await.expect_err("rejected");
    assert!(matches!(err, CheckoutError::CardRejected(_)), "{err:?}");
    assert_eq!(shop.calls(), ["reserve", "authorize", "release"]);
    assert_eq!(shop.status(cart).await, CartStatus::Open);
    assert_eq!(shop.counters(), [0, 0, 0, 0, 0]);
    let (status, body) = answer(err).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "INVALID_CARD_NUMBER");
}

/// Waits for the cart to leave `checking_out` (a panicking checkout releases it in a task).
async fn released(shop: &Shop, cart: i32) -> CartStatus {
    for _ in 0..200 {
        let status = shop.status(cart).await;
        if status != CartStatus::CheckingOut {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    CartStatus::CheckingOut
}

#[tokio::test]
async fn a_panic_in_the_publish_releases_the_cart_with_its_items_frozen() {
    let shop = open_shop(Card::Approve, Broker::Panic, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let err = shop.check_out(cart).await.expect_err("crashed");
    assert!(matches!(err, CheckoutError::Crashed(_)), "{err:?}");
    assert_eq!(released(&shop, cart).await, CartStatus::Open);
    // The publish may have happened: the items are frozen, so a retry places the same order.
    let frozen = shop.carts.add_item(cart, 2, 1).await;
    assert!(
        matches!(frozen, Err(StoreError::Cart(CartError::OrderPending(_)))),
        "{frozen:?}"
    );
    // The reservation is left to the product service's timeout.
    assert_eq!(shop.calls(), ["reserve", "authorize", "publish"]);
    let (status, body) = answer(err).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("checkout task failed: ")),
        "{body}"
    );
}

#[tokio::test]
async fn a_panic_before_the_publish_releases_the_cart_with_its_items_editable() {
    let shop = open_shop(Card::Panic, Broker::Confirm, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let err = shop.check_out(cart).await.expect_err("crashed");
    assert!(matches!(err, CheckoutError::Crashed(_)), "{err:?}");
    assert_eq!(released(&shop, cart).await, CartStatus::Open);
    shop.carts.add_item(cart, 2, 1).await.expect("editable");
    assert_eq!(shop.calls(), ["reserve", "authorize"]);
    assert!(shop.published().is_empty());
}

#[tokio::test]
async fn with_stock_disabled_nothing_is_reserved_released_or_confirmed() {
    let shop = open_shop(Card::Approve, Broker::Confirm, None);
    let cart = shop.filled_cart().await;
    let outcome = shop.check_out(cart).await.expect("placed");
    assert!(matches!(outcome, Outcome::Placed { .. }), "{outcome:?}");
    assert_eq!(shop.calls(), ["authorize", "publish"]);

    let declining = open_shop(Card::Decline, Broker::Confirm, None);
    let cart = declining.filled_cart().await;
    let err = declining.check_out(cart).await.expect_err("declined");
    assert!(matches!(err, CheckoutError::Declined(_)), "{err:?}");
    assert_eq!(declining.calls(), ["authorize"]);
    assert_eq!(declining.status(cart).await, CartStatus::Open);
}

#[tokio::test]
async fn a_cart_another_checkout_holds_is_a_409_and_asks_nobody() {
    let shop = open_shop(Card::Approve, Broker::Confirm, Some(Shelf::Hold));
    let cart = shop.filled_cart().await;
    let _held = shop.carts.begin_checkout(cart).await.expect("held");
    let err = shop.check_out(cart).await.expect_err("in progress");
    assert!(
        matches!(
            err,
            CheckoutError::Cart(StoreError::Cart(CartError::CheckoutInProgress(_)))
        ),
        "{err:?}"
    );
    assert!(shop.calls().is_empty());
    let (status, body) = answer(err).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "CHECKOUT_IN_PROGRESS");
}
