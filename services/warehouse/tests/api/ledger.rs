//! The same ledger behaviour, run once against each store: in memory and on the real PostgreSQL
//! (a fresh database per test).

use crate::helpers::order;
use common::messaging::OrderMessage;
use common::store::postgres as pg;
use common::store::StoreKind;
use common::testing::TestDatabase;
use std::collections::BTreeMap;
use std::sync::Arc;
use warehouse::ledger::memory::MemoryLedger;
use warehouse::ledger::postgres::{PgLedger, MIGRATOR};
use warehouse::ledger::{ApplyError, Ledger, LedgerStore, Outcome};

fn memory() -> Arc<dyn LedgerStore> {
    Arc::new(MemoryLedger::new())
}

async fn postgres_on(db: &TestDatabase) -> Arc<dyn LedgerStore> {
    let pool = pg::connect(&db.config("warehouse"), &MIGRATOR)
        .await
        .expect("connect and migrate");
    Arc::new(PgLedger::new(pool))
}

async fn postgres() -> Arc<dyn LedgerStore> {
    postgres_on(&TestDatabase::create().await).await
}

/// Instantiates a test body `async fn(Arc<dyn LedgerStore>)` once per store.
macro_rules! for_both_stores {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test]
            async fn memory() {
                super::$body(super::memory()).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$body(super::postgres().await).await;
            }
        }
    )*};
}

for_both_stores!(
    applies_each_uid_once,
    racing_appliers_apply_each_uid_once,
    stats_have_the_api_shape,
);

fn refs(orders: &[OrderMessage]) -> Vec<&OrderMessage> {
    orders.iter().collect()
}

async fn applies_each_uid_once(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(Arc::clone(&store));
    let a = order(&[(1, 2), (2, 3)]);
    let b = order(&[(1, 5)]);
    // A batch with a uid repeated inside it: the first occurrence is the applied one.
    let first = [a.clone(), b.clone(), a.clone()];
    let outcomes = ledger.apply_batch(0, &refs(&first)).await.expect("apply");
    assert_eq!(
        outcomes,
        [Outcome::Applied, Outcome::Applied, Outcome::Duplicate]
    );
    // A later batch (another lane) repeating both: nothing changes.
    let c = order(&[(3, 1)]);
    let second = [b.clone(), c.clone(), a.clone()];
    let outcomes = ledger.apply_batch(1, &refs(&second)).await.expect("apply");
    assert_eq!(
        outcomes,
        [Outcome::Duplicate, Outcome::Applied, Outcome::Duplicate]
    );
    assert_eq!(ledger.apply(&c).await.expect("apply"), Outcome::Duplicate);
    assert!(ledger
        .apply_batch(0, &[])
        .await
        .expect("empty batch")
        .is_empty());

    let totals = store.totals().await.expect("totals");
    assert_eq!(totals.orders_processed, 3);
    assert_eq!(totals.products, BTreeMap::from([(1, 7), (2, 3), (3, 1)]));
    assert!(store.is_applied(&a.order_uid).await.expect("read"));
    assert!(!store.is_applied("never-seen").await.expect("read"));
    assert_eq!(ledger.applied_here(), 3);
    assert_eq!(ledger.duplicates(), 4);
}

async fn racing_appliers_apply_each_uid_once(store: Arc<dyn LedgerStore>) {
    // 8 appliers, each on its own lane, push the same 1000 orders in batches of 50, each in a
    // different order, so the same uid is in flight in several batches at once.
    let orders: Vec<OrderMessage> = (0..1000).map(|i| order(&[(i % 7 + 1, 1)])).collect();
    let orders = Arc::new(orders);
    let ledger = Arc::new(Ledger::new(Arc::clone(&store)));
    let tasks: Vec<_> = (0..8u16)
        .map(|lane| {
            let ledger = Arc::clone(&ledger);
            let orders = Arc::clone(&orders);
            tokio::spawn(async move {
                let mut mine: Vec<&OrderMessage> = orders.iter().collect();
                mine.rotate_left(usize::from(lane) * 125);
                if lane % 2 == 1 {
                    mine.reverse();
                }
                for batch in mine.chunks(50) {
                    ledger.apply_batch(lane, batch).await.expect("apply");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("applier");
    }
    let stats = ledger.stats().await.expect("stats");
    assert_eq!(stats.orders_processed, 1000);
    assert_eq!(ledger.applied_here(), 1000);
    assert_eq!(stats.duplicates, 7000);
    assert_eq!(stats.total_quantity(), 1000);
    assert_eq!(stats.products.len(), 7);
}

async fn stats_have_the_api_shape(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let empty = serde_json::to_value(ledger.stats().await.expect("stats")).expect("json");
    assert_eq!(
        empty,
        serde_json::json!({"orders_processed": 0, "duplicates": 0, "rejected": 0, "products": {}})
    );
    ledger.apply(&order(&[(12, 4)])).await.expect("apply");
    ledger.record_rejected();
    let stats = ledger.stats().await.expect("stats");
    let json = serde_json::to_value(&stats).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"orders_processed": 1, "duplicates": 0, "rejected": 1, "products": {"12": 4}})
    );
    let report = stats.to_string();
    assert!(report.contains("total orders processed: 1"), "{report}");
    assert!(report.contains("product 12: 4"), "{report}");
}

#[tokio::test]
async fn the_postgres_ledger_survives_a_new_connection_and_refuses_unstorable_data() {
    let db = TestDatabase::create().await;
    let first = postgres_on(&db).await;
    assert_eq!(first.kind(), StoreKind::Postgres);
    let kept = order(&[(5, 2)]);
    let outcomes = first.apply_batch(0, &[&kept]).await.expect("apply");
    assert_eq!(outcomes, [Outcome::Applied]);

    // A second pool (a restarted or a second warehouse) runs the migrations again harmlessly and
    // sees the same books.
    let second = postgres_on(&db).await;
    assert_eq!(
        second.apply_batch(3, &[&kept]).await.expect("apply"),
        [Outcome::Duplicate]
    );
    let totals = second.totals().await.expect("totals");
    assert_eq!(totals.orders_processed, 1);
    assert_eq!(totals.products, BTreeMap::from([(5, 2)]));

    // A uid PostgreSQL cannot hold is refused (final), and the whole batch with it is not applied.
    let mut bad = order(&[(6, 1)]);
    bad.order_uid = "nul\0inside".into();
    let good = order(&[(6, 1)]);
    match second.apply_batch(0, &[&good, &bad]).await {
        Err(ApplyError::Refused(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!second.is_applied(&good.order_uid).await.expect("read"));
    assert_eq!(second.totals().await.expect("totals"), totals);
}
