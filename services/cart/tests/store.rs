//! The `CartStore` contract, run against both stores: the in-memory one and the real Redis
//! (a key prefix per test). Each behaviour is one async function taking the store's kind; the
//! macro at the bottom instantiates it once per store. The Redis-only tests at the end run
//! two store instances on separate connections against one prefix, as two cart processes would.

use cart_service::carts::{
    line_items, CartError, CartStatus, CheckoutTicket, Lifetimes, LineItem, StoreError,
};
use cart_service::store::{CartStore, MemoryCartStore, RedisCartStore};
use common::testing::TestRedis;
use futures::future::join_all;
use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Redis,
}

fn lifetimes(cart_ttl: Duration, checkout_lease: Duration) -> Lifetimes {
    Lifetimes {
        cart_ttl,
        checkout_lease,
    }
}

async fn store_with(kind: Kind, lifetimes: Lifetimes) -> Arc<dyn CartStore> {
    match kind {
        Kind::Memory => Arc::new(MemoryCartStore::new(lifetimes)),
        Kind::Redis => {
            let redis = TestRedis::create().await;
            Arc::new(RedisCartStore::new(&redis.config(), lifetimes).expect("redis store"))
        }
    }
}

async fn store(kind: Kind) -> Arc<dyn CartStore> {
    store_with(kind, Lifetimes::default()).await
}

/// The domain's refusal in `result`; anything else fails the test.
fn refused<T: Debug>(result: Result<T, StoreError>) -> CartError {
    match result {
        Err(StoreError::Cart(err)) => err,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn item(product_id: i32, quantity: i32) -> LineItem {
    LineItem {
        product_id,
        quantity,
    }
}

/// A cart holding one of product 1.
async fn filled(store: &dyn CartStore) -> i32 {
    let id = store.create(7).await.expect("create");
    store.add_item(id, 1, 1).await.expect("add");
    id
}

async fn ids_start_at_one_and_count_up(kind: Kind) {
    let store = store(kind).await;
    let first = filled(&*store).await;
    let second = filled(&*store).await;
    assert_eq!((first, second), (1, 2));
    let a = store.begin_checkout(second).await.expect("begin");
    let b = store.begin_checkout(first).await.expect("begin");
    assert_eq!((a.order.order_id, b.order.order_id), (1, 2));
    assert_ne!(a.order.order_uid, b.order.order_uid);
}

async fn items_accumulate_and_overflow_is_refused(kind: Kind) {
    let store = store(kind).await;
    let id = store.create(5).await.expect("create");
    assert!(store.exists(id).await.expect("exists"));
    store.add_item(id, 3, 2).await.expect("add");
    store.add_item(id, 3, 5).await.expect("add");
    store.add_item(id, 1, 1).await.expect("add");
    let view = store.view(id).await.expect("view");
    assert_eq!(view.items, vec![item(1, 1), item(3, 7)]);
    assert_eq!(
        (
            view.shopping_cart_id,
            view.customer_id,
            view.status,
            view.order_id
        ),
        (id, 5, CartStatus::Open, None)
    );
    assert_eq!(
        refused(store.add_item(id, 3, i32::MAX).await),
        CartError::QuantityOverflow { product_id: 3 }
    );
    // The refused add changed nothing.
    assert_eq!(store.view(id).await.expect("view").items[1], item(3, 7));
}

async fn an_unknown_cart_is_not_found_everywhere(kind: Kind) {
    let store = store(kind).await;
    assert!(!store.exists(99).await.expect("exists"));
    let nf = CartError::NotFound(99);
    assert_eq!(refused(store.view(99).await), nf);
    assert_eq!(refused(store.add_item(99, 1, 1).await), nf);
    assert_eq!(refused(store.set_quantity(99, 1, 1).await), nf);
    assert_eq!(refused(store.remove_item(99, 1).await), nf);
    assert_eq!(refused(store.begin_checkout(99).await), nf);
}

async fn only_one_checkout_wins_and_a_checked_out_cart_is_closed(kind: Kind) {
    let store = store(kind).await;
    let id = store.create(1).await.expect("create");
    assert_eq!(
        refused(store.begin_checkout(id).await),
        CartError::Empty(id)
    );
    store.add_item(id, 1, 1).await.expect("add");
    let ticket = store.begin_checkout(id).await.expect("begin");
    assert_eq!(line_items(&ticket.order.items), vec![item(1, 1)]);
    assert_eq!(ticket.order.customer_id, 1);
    assert_eq!(ticket.order.shopping_cart_id, id);
    let in_progress = CartError::CheckoutInProgress(id);
    assert_eq!(refused(store.begin_checkout(id).await), in_progress);
    assert_eq!(refused(store.add_item(id, 1, 1).await), in_progress);
    assert_eq!(
        store.view(id).await.expect("view").status,
        CartStatus::CheckingOut
    );
    store.complete_checkout(&ticket).await.expect("complete");
    let order_id = ticket.order.order_id;
    let closed = CartError::AlreadyCheckedOut {
        cart_id: id,
        order_id,
    };
    assert_eq!(refused(store.begin_checkout(id).await), closed);
    assert_eq!(refused(store.add_item(id, 2, 1).await), closed);
    // Settling again changes nothing.
    store.complete_checkout(&ticket).await.expect("complete");
    store.abort_checkout(&ticket, false).await.expect("abort");
    let view = store.view(id).await.expect("view");
    assert_eq!(
        (view.status, view.order_id, view.items),
        (CartStatus::CheckedOut, Some(order_id), vec![item(1, 1)])
    );
}

async fn concurrent_checkouts_have_one_winner(kind: Kind) {
    let store = store(kind).await;
    let id = filled(&*store).await;
    let attempts = join_all((0..32).map(|_| store.begin_checkout(id))).await;
    let winners = attempts.iter().filter(|a| a.is_ok()).count();
    assert_eq!(winners, 1);
    for attempt in attempts.into_iter().filter(Result::is_err) {
        assert_eq!(refused(attempt), CartError::CheckoutInProgress(id));
    }
}

async fn a_retry_after_a_failed_publish_reuses_the_order_and_freezes_the_items(kind: Kind) {
    let store = store(kind).await;
    let id = filled(&*store).await;
    let first = store.begin_checkout(id).await.expect("begin");
    // Declined before publishing: the cart may still change, the order is kept.
    store.abort_checkout(&first, false).await.expect("abort");
    assert_eq!(store.view(id).await.expect("view").status, CartStatus::Open);
    store.add_item(id, 2, 1).await.expect("add");
    let second = store.begin_checkout(id).await.expect("begin");
    assert_eq!(second.order.order_uid, first.order.order_uid);
    assert_eq!(second.order.order_id, first.order.order_id);
    assert_eq!(second.order.created_at, first.order.created_at);
    assert_eq!(
        line_items(&second.order.items),
        vec![item(1, 1), item(2, 1)]
    );
    // The publish's fate is unknown: the same message must be retried unchanged.
    store.abort_checkout(&second, true).await.expect("abort");
    assert_eq!(
        refused(store.add_item(id, 3, 1).await),
        CartError::OrderPending(id)
    );
    let third = store.begin_checkout(id).await.expect("begin");
    assert_eq!(third.order, second.order);
    // A later failure that published nothing does not unfreeze them.
    store.abort_checkout(&third, false).await.expect("abort");
    assert_eq!(
        refused(store.add_item(id, 3, 1).await),
        CartError::OrderPending(id)
    );
}

async fn a_lapsed_hold_is_taken_over_with_the_same_order(kind: Kind) {
    let lease = Duration::from_millis(300);
    let store = store_with(kind, lifetimes(Duration::from_secs(60), lease)).await;
    let id = filled(&*store).await;
    let dead = store.begin_checkout(id).await.expect("begin");
    assert_eq!(
        refused(store.begin_checkout(id).await),
        CartError::CheckoutInProgress(id)
    );
    tokio::time::sleep(lease + Duration::from_millis(150)).await;
    // The holder vanished, maybe after publishing: the items are frozen, a checkout takes over.
    assert_eq!(
        refused(store.add_item(id, 2, 1).await),
        CartError::OrderPending(id)
    );
    let next = store.begin_checkout(id).await.expect("take over");
    assert_eq!(next.order, dead.order);
    assert_ne!(next.holder, dead.holder);
    // The stale holder cannot release the cart from under the new one.
    store.abort_checkout(&dead, false).await.expect("abort");
    assert_eq!(
        refused(store.begin_checkout(id).await),
        CartError::CheckoutInProgress(id)
    );
    // The new holder fails without publishing; the items stay frozen (the first may have).
    store.abort_checkout(&next, false).await.expect("abort");
    assert_eq!(
        refused(store.add_item(id, 2, 1).await),
        CartError::OrderPending(id)
    );
    let last = store.begin_checkout(id).await.expect("begin");
    assert_eq!(last.order, dead.order);
    // The first holder's publish was confirmed after all: the order is placed.
    store.complete_checkout(&dead).await.expect("complete");
    store.abort_checkout(&last, true).await.expect("abort");
    let view = store.view(id).await.expect("view");
    assert_eq!(
        (view.status, view.order_id),
        (CartStatus::CheckedOut, Some(dead.order.order_id))
    );
}

async fn untouched_carts_expire_and_every_change_refreshes_the_ttl(kind: Kind) {
    let ttl = Duration::from_secs(2);
    let store = store_with(kind, lifetimes(ttl, Duration::from_secs(30))).await;
    let step = Duration::from_millis(1200);
    let id = store.create(1).await.expect("create");
    let idle = store.create(1).await.expect("create");
    tokio::time::sleep(step).await;
    store.add_item(id, 1, 1).await.expect("add");
    tokio::time::sleep(step).await;
    // 2.4 s after creation: alive only because the add refreshed it; the idle one is gone.
    assert_eq!(refused(store.view(idle).await), CartError::NotFound(idle));
    let ticket: CheckoutTicket = store.begin_checkout(id).await.expect("begin");
    store.complete_checkout(&ticket).await.expect("complete");
    tokio::time::sleep(step).await;
    let view = store
        .view(id)
        .await
        .expect("a checked-out cart stays readable");
    assert_eq!(view.status, CartStatus::CheckedOut);
    tokio::time::sleep(step + Duration::from_millis(400)).await;
    assert_eq!(refused(store.view(id).await), CartError::NotFound(id));
    assert!(!store.exists(id).await.expect("exists"));
    assert_eq!(
        refused(store.add_item(id, 1, 1).await),
        CartError::NotFound(id)
    );
}

async fn quantities_are_set_and_items_removed(kind: Kind) {
    let store = store(kind).await;
    let id = store.create(5).await.expect("create");
    store.add_item(id, 3, 2).await.expect("add");
    store.add_item(id, 1, 1).await.expect("add");
    store.set_quantity(id, 3, 9).await.expect("set");
    // Set, not added: the old quantity is gone.
    assert_eq!(
        store.view(id).await.expect("view").items,
        vec![item(1, 1), item(3, 9)]
    );
    store.set_quantity(id, 1, i32::MAX).await.expect("set");
    store.remove_item(id, 3).await.expect("remove");
    assert_eq!(
        store.view(id).await.expect("view").items,
        vec![item(1, i32::MAX)]
    );
    let absent = CartError::ItemNotFound {
        cart_id: id,
        product_id: 3,
    };
    assert_eq!(refused(store.set_quantity(id, 3, 1).await), absent);
    assert_eq!(refused(store.remove_item(id, 3).await), absent);
    // A refused change changed nothing; an item removed can be added again from zero.
    assert_eq!(
        store.view(id).await.expect("view").items,
        vec![item(1, i32::MAX)]
    );
    store.add_item(id, 3, 4).await.expect("add");
    store.remove_item(id, 1).await.expect("remove");
    assert_eq!(store.view(id).await.expect("view").items, vec![item(3, 4)]);
    // Emptied by removals: nothing to check out.
    store.remove_item(id, 3).await.expect("remove");
    let view = store.view(id).await.expect("view");
    assert_eq!((view.status, view.items), (CartStatus::Open, vec![]));
    assert_eq!(
        refused(store.begin_checkout(id).await),
        CartError::Empty(id)
    );
}

async fn item_changes_follow_the_checkout_state_machine(kind: Kind) {
    let lease = Duration::from_millis(300);
    let store = store_with(kind, lifetimes(Duration::from_secs(60), lease)).await;
    let id = store.create(1).await.expect("create");
    store.add_item(id, 1, 2).await.expect("add");
    store.add_item(id, 2, 1).await.expect("add");
    // Held by a checkout.
    let first = store.begin_checkout(id).await.expect("begin");
    let in_progress = CartError::CheckoutInProgress(id);
    assert_eq!(refused(store.set_quantity(id, 1, 5).await), in_progress);
    assert_eq!(refused(store.remove_item(id, 1).await), in_progress);
    // The hold lapsed (its holder may have published): frozen, whatever the item.
    tokio::time::sleep(lease + Duration::from_millis(150)).await;
    let pending = CartError::OrderPending(id);
    assert_eq!(refused(store.set_quantity(id, 1, 5).await), pending);
    assert_eq!(refused(store.remove_item(id, 9).await), pending);
    // Released without a publish after a take-over: still frozen.
    let second = store.begin_checkout(id).await.expect("take over");
    store.abort_checkout(&second, false).await.expect("abort");
    assert_eq!(refused(store.set_quantity(id, 2, 3).await), pending);
    assert_eq!(refused(store.remove_item(id, 2).await), pending);
    assert_eq!(second.order.items, first.order.items);
    // Placed: closed for good.
    let third = store.begin_checkout(id).await.expect("begin");
    store.complete_checkout(&third).await.expect("complete");
    let closed = CartError::AlreadyCheckedOut {
        cart_id: id,
        order_id: third.order.order_id,
    };
    assert_eq!(refused(store.set_quantity(id, 1, 5).await), closed);
    assert_eq!(refused(store.remove_item(id, 1).await), closed);
    assert_eq!(
        store.view(id).await.expect("view").items,
        vec![item(1, 2), item(2, 1)]
    );
}

async fn item_changes_are_allowed_again_after_a_checkout_that_published_nothing(kind: Kind) {
    let store = store(kind).await;
    let id = filled(&*store).await;
    store.add_item(id, 2, 1).await.expect("add");
    let ticket = store.begin_checkout(id).await.expect("begin");
    // Declined before any publish: the customer may fix the cart.
    store.abort_checkout(&ticket, false).await.expect("abort");
    store.set_quantity(id, 1, 3).await.expect("set");
    store.remove_item(id, 2).await.expect("remove");
    let retry = store.begin_checkout(id).await.expect("begin");
    assert_eq!(retry.order.order_uid, ticket.order.order_uid);
    assert_eq!(line_items(&retry.order.items), vec![item(1, 3)]);
    // Once a publish may have happened, the items are frozen.
    store.abort_checkout(&retry, true).await.expect("abort");
    assert_eq!(
        refused(store.set_quantity(id, 1, 1).await),
        CartError::OrderPending(id)
    );
    assert_eq!(
        refused(store.remove_item(id, 1).await),
        CartError::OrderPending(id)
    );
}

async fn setting_and_removing_items_refresh_the_ttl(kind: Kind) {
    let ttl = Duration::from_secs(2);
    let store = store_with(kind, lifetimes(ttl, Duration::from_secs(30))).await;
    let step = Duration::from_millis(1200);
    let id = store.create(1).await.expect("create");
    store.add_item(id, 1, 1).await.expect("add");
    store.add_item(id, 2, 1).await.expect("add");
    tokio::time::sleep(step).await;
    store.set_quantity(id, 1, 4).await.expect("set");
    tokio::time::sleep(step).await;
    // 2.4 s after the last add: alive only because the set refreshed it.
    store.remove_item(id, 2).await.expect("remove");
    tokio::time::sleep(step).await;
    assert_eq!(store.view(id).await.expect("view").items, vec![item(1, 4)]);
    tokio::time::sleep(step).await;
    assert_eq!(refused(store.view(id).await), CartError::NotFound(id));
}

macro_rules! for_both_stores {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Kind::Memory).await
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Kind::Redis).await
            })*
        }
    };
}

for_both_stores!(
    ids_start_at_one_and_count_up,
    items_accumulate_and_overflow_is_refused,
    an_unknown_cart_is_not_found_everywhere,
    only_one_checkout_wins_and_a_checked_out_cart_is_closed,
    concurrent_checkouts_have_one_winner,
    a_retry_after_a_failed_publish_reuses_the_order_and_freezes_the_items,
    a_lapsed_hold_is_taken_over_with_the_same_order,
    untouched_carts_expire_and_every_change_refreshes_the_ttl,
    quantities_are_set_and_items_removed,
    item_changes_follow_the_checkout_state_machine,
    item_changes_are_allowed_again_after_a_checkout_that_published_nothing,
    setting_and_removing_items_refresh_the_ttl,
);

/// Two Redis stores on one prefix, each with its own connection: two cart processes.
async fn two_instances() -> (Arc<dyn CartStore>, Arc<dyn CartStore>) {
    let redis = TestRedis::create().await;
    let config = redis.config();
    let a = RedisCartStore::new(&config, Lifetimes::default()).expect("a");
    let b = RedisCartStore::new(&config, Lifetimes::default()).expect("b");
    (Arc::new(a), Arc::new(b))
}

#[tokio::test]
async fn ids_are_unique_across_instances() {
    let (a, b) = two_instances().await;
    let creates = (0..100).map(|i| {
        let store = if i % 2 == 0 { &a } else { &b };
        store.create(1)
    });
    let ids: HashSet<i32> = join_all(creates)
        .await
        .into_iter()
        .map(|id| id.expect("create"))
        .collect();
    assert_eq!(ids, (1..=100).collect());
}

#[tokio::test]
async fn one_of_many_checkouts_across_instances_wins() {
    let (a, b) = two_instances().await;
    for _ in 0..5 {
        let id = a.create(3).await.expect("create");
        b.add_item(id, 4, 2)
            .await
            .expect("add through the other instance");
        let begins = (0..40).map(|i| {
            let store = if i % 2 == 0 { &a } else { &b };
            store.begin_checkout(id)
        });
        let attempts = join_all(begins).await;
        let tickets: Vec<&CheckoutTicket> = attempts.iter().flatten().collect();
        assert_eq!(tickets.len(), 1, "{attempts:?}");
        assert_eq!(line_items(&tickets[0].order.items), vec![item(4, 2)]);
        assert!(attempts
            .iter()
            .filter_map(|a| a.as_ref().err())
            .all(|e| matches!(e, StoreError::Cart(CartError::CheckoutInProgress(_)))));
        // The winner's order survives a failure on one instance and a retry on the other.
        b.abort_checkout(tickets[0], true).await.expect("abort");
        let retry = a.begin_checkout(id).await.expect("retry");
        assert_eq!(retry.order, tickets[0].order);
    }
}
