//! The order store's behaviour, the same for both stores: memory, and the real PostgreSQL.

use cart_service::orders::{MemoryOrderStore, OrderStatus, OrderStore, PgOrderStore};
use common::messaging::{CancelReason, OrderEvent, OrderItem, OrderMessage, OrderOutcome};
use common::testing::TestDatabase;
use std::sync::Arc;
use time::OffsetDateTime;

fn order(order_id: i32, customer_id: i32) -> OrderMessage {
    OrderMessage {
        order_uid: OrderMessage::new_uid(),
        order_id,
        shopping_cart_id: order_id + 1000,
        customer_id,
        items: vec![OrderItem {
            product_id: 3,
            quantity: 2,
        }],
        // Postgres keeps microseconds: keep the comparison exact.
        created_at: OffsetDateTime::from_unix_timestamp(1_780_000_000 + i64::from(order_id))
            .expect("time"),
    }
}

fn event(order: &OrderMessage, outcome: OrderOutcome, with_order: bool) -> OrderEvent {
    OrderEvent {
        order_uid: order.order_uid.clone(),
        order_id: order.order_id,
        outcome,
        reason: (outcome == OrderOutcome::Cancelled).then_some(CancelReason::Customer),
        order: with_order.then(|| order.clone()),
    }
}

async fn stores() -> Vec<(Arc<dyn OrderStore>, Option<TestDatabase>)> {
    let db = TestDatabase::create().await;
    let pool = common::store::postgres::connect(
        &db.config("orders"),
        &cart_service::orders::postgres::MIGRATOR,
    )
    .await
    .expect("migrated");
    vec![
        (Arc::new(MemoryOrderStore::default()), None),
        (Arc::new(PgOrderStore::new(pool)), Some(db)),
    ]
}

async fn status(store: &dyn OrderStore, order_id: i32) -> Option<OrderStatus> {
    store.get(order_id).await.expect("get").map(|o| o.status)
}

#[tokio::test]
async fn an_order_goes_placed_fulfilled_and_never_back() {
    for (store, _db) in stores().await {
        let kind = store.kind();
        let o = order(1, 7);
        store.record(&o, OrderStatus::Placed).await.expect("record");
        // A retried checkout writes it again: no change, no error.
        store
            .record(&o, OrderStatus::Pending)
            .await
            .expect("record again");
        let read = store.get(1).await.expect("get").expect("found");
        assert_eq!(read.status, OrderStatus::Placed, "{kind}");
        assert_eq!(read.order_uid, o.order_uid);
        assert_eq!(read.items, cart_service::carts::line_items(&o.items));
        assert_eq!(read.created_at, o.created_at, "{kind}");
        store
            .apply_outcomes(&[event(&o, OrderOutcome::Fulfilled, true)])
            .await
            .expect("apply");
        assert_eq!(
            status(store.as_ref(), 1).await,
            Some(OrderStatus::Fulfilled)
        );
        // Late or repeated news changes nothing final: not the checkout's record, not a cancel,
        // not an (impossible) contrary outcome.
        store.record(&o, OrderStatus::Placed).await.expect("record");
        let after = store
            .mark_cancelling(&o.order_uid, CancelReason::Customer)
            .await
            .expect("cancelling")
            .expect("known");
        assert_eq!(after.status, OrderStatus::Fulfilled, "{kind}");
        store
            .apply_outcomes(&[event(&o, OrderOutcome::Cancelled, true)])
            .await
            .expect("apply");
        assert_eq!(
            status(store.as_ref(), 1).await,
            Some(OrderStatus::Fulfilled)
        );
    }
}

#[tokio::test]
async fn a_cancel_moves_placed_to_cancelling_then_to_the_warehouse_outcome() {
    for (store, _db) in stores().await {
        let kind = store.kind();
        let (a, b) = (order(1, 7), order(2, 7));
        for o in [&a, &b] {
            store.record(o, OrderStatus::Placed).await.expect("record");
        }
        for o in [&a, &b] {
            let now = store
                .mark_cancelling(&o.order_uid, CancelReason::Customer)
                .await
                .expect("cancel")
                .expect("known");
            assert_eq!(now.status, OrderStatus::Cancelling, "{kind}");
            assert_eq!(now.cancel_reason, Some(CancelReason::Customer));
        }
        // The cancel won for a, lost for b; the events come in one message, a twice.
        store
            .apply_outcomes(&[
                event(&a, OrderOutcome::Cancelled, false),
                event(&b, OrderOutcome::Fulfilled, true),
                event(&a, OrderOutcome::Cancelled, false),
            ])
            .await
            .expect("apply");
        assert_eq!(
            status(store.as_ref(), 1).await,
            Some(OrderStatus::Cancelled),
            "{kind}"
        );
        assert_eq!(
            status(store.as_ref(), 2).await,
            Some(OrderStatus::Fulfilled),
            "{kind}"
        );
        assert!(store
            .mark_cancelling("no-such-uid", CancelReason::Customer)
            .await
            .expect("cancel")
            .is_none());
    }
}

#[tokio::test]
async fn outcomes_of_orders_never_recorded_here_are_recorded_from_the_event() {
    for (store, _db) in stores().await {
        let kind = store.kind();
        let o = order(5, 9);
        store
            .apply_outcomes(&[event(&o, OrderOutcome::Fulfilled, true)])
            .await
            .expect("apply");
        let read = store.get(5).await.expect("get").expect("recorded");
        assert_eq!(read.status, OrderStatus::Fulfilled, "{kind}");
        assert_eq!(read.customer_id, 9);
        // The checkout's own record, arriving after the outcome, changes nothing.
        store.record(&o, OrderStatus::Placed).await.expect("record");
        assert_eq!(
            status(store.as_ref(), 5).await,
            Some(OrderStatus::Fulfilled)
        );
        // Without the order in the event there is nothing to record.
        let unknown = order(6, 9);
        store
            .apply_outcomes(&[event(&unknown, OrderOutcome::Cancelled, false)])
            .await
            .expect("apply");
        assert!(store.get(6).await.expect("get").is_none(), "{kind}");
    }
}

#[tokio::test]
async fn only_pending_orders_are_found_stale() {
    for (store, _db) in stores().await {
        let kind = store.kind();
        let (a, b) = (order(1, 7), order(2, 7));
        store
            .record(&a, OrderStatus::Pending)
            .await
            .expect("record");
        store.record(&b, OrderStatus::Placed).await.expect("record");
        let later = b.created_at + time::Duration::seconds(10);
        let stale = store.stale_pending(later, 10).await.expect("stale");
        assert_eq!(
            stale.iter().map(|o| o.order_id).collect::<Vec<_>>(),
            vec![1],
            "{kind}"
        );
        assert!(store
            .stale_pending(a.created_at, 10)
            .await
            .expect("stale")
            .is_empty());
        // Withdrawn (a cancel published), it is no longer stale.
        store
            .mark_cancelling(&a.order_uid, CancelReason::NotConfirmed)
            .await
            .expect("cancelling");
        assert!(
            store
                .stale_pending(later, 10)
                .await
                .expect("stale")
                .is_empty(),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn one_id_cannot_hold_two_orders() {
    for (store, _db) in stores().await {
        store
            .record(&order(1, 7), OrderStatus::Placed)
            .await
            .expect("record");
        let clash = store.record(&order(1, 8), OrderStatus::Placed).await;
        assert!(
            matches!(
                clash,
                Err(cart_service::orders::OrderStoreError::IdTaken { order_id: 1 })
            ),
            "{}: {clash:?}",
            store.kind()
        );
    }
}

#[tokio::test]
async fn a_customers_orders_come_newest_first_in_pages() {
    for (store, _db) in stores().await {
        let kind = store.kind();
        for id in 1..=5 {
            store
                .record(&order(id, 7), OrderStatus::Placed)
                .await
                .expect("record");
        }
        store
            .record(&order(6, 8), OrderStatus::Placed)
            .await
            .expect("other customer");
        let page = store.list_for_customer(7, None, 2).await.expect("list");
        assert_eq!(
            page.iter().map(|o| o.order_id).collect::<Vec<_>>(),
            vec![5, 4],
            "{kind}"
        );
        let page = store.list_for_customer(7, Some(4), 10).await.expect("list");
        assert_eq!(
            page.iter().map(|o| o.order_id).collect::<Vec<_>>(),
            vec![3, 2, 1],
            "{kind}"
        );
        assert!(store
            .list_for_customer(99, None, 10)
            .await
            .expect("list")
            .is_empty());
    }
}
