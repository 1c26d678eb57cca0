//! The same ledger behaviour, run once against each store: in memory and on the real PostgreSQL
//! (a fresh database per test).

use crate::helpers::{cancel, order};
use common::messaging::{CancelMessage, CancelReason, OrderMessage, OrderOutcome};
use common::store::postgres as pg;
use common::store::StoreKind;
use common::testing::TestDatabase;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use warehouse::ledger::memory::MemoryLedger;
use warehouse::ledger::postgres::{PgLedger, MIGRATOR};
use warehouse::ledger::{ApplyError, Entry, Ledger, LedgerStore, Outcome, Recorded};

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
            // Several threads, so racing appliers really run at once on the in-memory store.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory() {
                super::$body(super::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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
    the_first_of_an_order_and_its_cancel_decides,
    racing_orders_and_cancels_record_one_outcome_per_uid,
);

fn refs(orders: &[OrderMessage]) -> Vec<Entry<'_>> {
    orders.iter().map(Entry::from).collect()
}

fn outcomes(recorded: &[Recorded]) -> Vec<Outcome> {
    recorded.iter().map(|r| r.outcome).collect()
}

async fn applies_each_uid_once(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(Arc::clone(&store));
    let a = order(&[(1, 2), (2, 3)]);
    let b = order(&[(1, 5)]);
    // A batch with a uid repeated inside it: the first occurrence is the applied one.
    let first = [a.clone(), b.clone(), a.clone()];
    let recorded = ledger.apply_batch(0, &refs(&first)).await.expect("apply");
    assert_eq!(
        outcomes(&recorded),
        [Outcome::Applied, Outcome::Applied, Outcome::Duplicate]
    );
    // A later batch (another lane) repeating both: nothing changes.
    let c = order(&[(3, 1)]);
    let second = [b.clone(), c.clone(), a.clone()];
    let recorded = ledger.apply_batch(1, &refs(&second)).await.expect("apply");
    assert_eq!(
        outcomes(&recorded),
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
    assert_eq!(
        store.outcome(&a.order_uid).await.expect("read"),
        Some(OrderOutcome::Fulfilled)
    );
    assert_eq!(store.outcome("never-seen").await.expect("read"), None);
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
                let mut mine: Vec<Entry<'_>> = orders.iter().map(Entry::from).collect();
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
        serde_json::json!({
            "orders_processed": 0, "duplicates": 0, "rejected": 0, "products": {},
            "orders_cancelled": 0, "orders_refused": 0, "cancels_lost": 0,
            "duplicate_cancels": 0, "events_published": 0, "event_publish_failures": 0,
        })
    );
    let kept = order(&[(12, 4)]);
    ledger.apply(&kept).await.expect("apply");
    ledger.record_rejected();
    let stopped = order(&[(13, 1)]);
    ledger.cancel(&cancel(&stopped)).await.expect("cancel");
    ledger.apply(&stopped).await.expect("apply");
    ledger.cancel(&cancel(&kept)).await.expect("cancel");
    ledger.record_events_published(4);
    ledger.record_event_publish_failure();
    let stats = ledger.stats().await.expect("stats");
    let json = serde_json::to_value(&stats).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "orders_processed": 1, "duplicates": 0, "rejected": 1, "products": {"12": 4},
            "orders_cancelled": 1, "orders_refused": 1, "cancels_lost": 1,
            "duplicate_cancels": 0, "events_published": 4, "event_publish_failures": 1,
        })
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
    let recorded = first
        .apply_batch(0, &[(&kept).into()])
        .await
        .expect("apply");
    assert_eq!(outcomes(&recorded), [Outcome::Applied]);

    // A second pool (a restarted or a second warehouse) runs the migrations again harmlessly and
    // sees the same books.
    let second = postgres_on(&db).await;
    let recorded = second
        .apply_batch(3, &[(&kept).into()])
        .await
        .expect("apply");
    assert_eq!(outcomes(&recorded), [Outcome::Duplicate]);
    let totals = second.totals().await.expect("totals");
    assert_eq!(totals.orders_processed, 1);
    assert_eq!(totals.products, BTreeMap::from([(5, 2)]));

    // A uid PostgreSQL cannot hold is refused (final), and the whole batch with it is not applied.
    let mut bad = order(&[(6, 1)]);
    bad.order_uid = "nul\0inside".into();
    let good = order(&[(6, 1)]);
    match second
        .apply_batch(0, &[(&good).into(), (&bad).into()])
        .await
    {
        Err(ApplyError::Refused(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(second.outcome(&good.order_uid).await.expect("read"), None);
    assert_eq!(second.totals().await.expect("totals"), totals);
}

async fn the_first_of_an_order_and_its_cancel_decides(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(Arc::clone(&store));
    let a = order(&[(1, 2)]);
    let b = order(&[(2, 3)]);
    let c = order(&[(3, 4)]);
    let mut a_cancel = cancel(&a);
    a_cancel.reason = CancelReason::NotConfirmed;
    let (b_cancel, c_cancel) = (cancel(&b), cancel(&c));
    // One batch: a's cancel before its order, b's order before its cancel, c's cancel alone.
    let first: [Entry<'_>; 5] = [
        (&a_cancel).into(),
        (&a).into(),
        (&b).into(),
        (&b_cancel).into(),
        (&c_cancel).into(),
    ];
    let recorded = ledger.apply_batch(0, &first).await.expect("apply");
    assert_eq!(
        outcomes(&recorded),
        [
            Outcome::Cancelled,
            Outcome::Refused,
            Outcome::Applied,
            Outcome::CancelLost,
            Outcome::Cancelled
        ]
    );
    assert_eq!(recorded[0].reason, Some(CancelReason::NotConfirmed));
    // The order refused in the same batch is told the winning cancel's reason.
    assert_eq!(recorded[1].reason, Some(CancelReason::NotConfirmed));
    assert_eq!(recorded[2].reason, None);

    // Later batches, on another lane: c's order comes after its cancel; everything else is a
    // redelivery. Nothing changes, each is told the recorded outcome.
    let second: [Entry<'_>; 5] = [
        (&c).into(),
        (&b_cancel).into(),
        (&a).into(),
        (&a_cancel).into(),
        (&b).into(),
    ];
    let recorded = ledger.apply_batch(1, &second).await.expect("apply");
    assert_eq!(
        outcomes(&recorded),
        [
            Outcome::Refused,
            Outcome::CancelLost,
            Outcome::Refused,
            Outcome::DuplicateCancel,
            Outcome::Duplicate
        ]
    );
    assert_eq!(recorded[0].reason, Some(CancelReason::Customer));
    assert_eq!(recorded[2].reason, Some(CancelReason::NotConfirmed));
    // A cancel that loses to an order recorded in an earlier batch learns the order from the
    // store (so its event can carry it).
    assert_eq!(recorded[1].order.as_ref(), Some(&b));
    assert_eq!(recorded[1].reason, None);
    assert_eq!(recorded[3].order, None);

    let totals = store.totals().await.expect("totals");
    assert_eq!(totals.orders_processed, 1);
    assert_eq!(totals.orders_cancelled, 2);
    assert_eq!(totals.products, BTreeMap::from([(2, 3)]));
    for (uid, expected) in [
        (&a.order_uid, OrderOutcome::Cancelled),
        (&b.order_uid, OrderOutcome::Fulfilled),
        (&c.order_uid, OrderOutcome::Cancelled),
    ] {
        assert_eq!(store.outcome(uid).await.expect("read"), Some(expected));
    }
    assert_eq!(ledger.applied_here(), 1);
    assert_eq!(ledger.cancelled_here(), 2);
    assert_eq!(ledger.refused(), 3);
    assert_eq!(ledger.cancels_lost(), 2);
    assert_eq!(ledger.duplicate_cancels(), 1);
    assert_eq!(ledger.duplicates(), 1);
    assert_eq!(ledger.settled_here(), 10);
}

async fn racing_orders_and_cancels_record_one_outcome_per_uid(store: Arc<dyn LedgerStore>) {
    // 600 uids, each with its order and its cancel. 8 appliers, each on its own lane, push all
    // 1200 entries in batches of 40, nearly in lockstep (each a uid or two ahead of the next),
    // half of them with each uid's cancel before its order, half in reverse: so the same uid's
    // order and cancel are in flight in several batches at once.
    const UIDS: usize = 600;
    let orders: Vec<OrderMessage> = (0..UIDS)
        .map(|i| order(&[(i as i32 % 9 + 1, i as i32 % 4 + 1)]))
        .collect();
    let cancels: Vec<CancelMessage> = orders.iter().map(cancel).collect();
    let (orders, cancels) = (Arc::new(orders), Arc::new(cancels));
    let ledger = Arc::new(Ledger::new(Arc::clone(&store)));
    let tasks: Vec<_> = (0..8u16)
        .map(|lane| {
            let ledger = Arc::clone(&ledger);
            let (orders, cancels) = (Arc::clone(&orders), Arc::clone(&cancels));
            tokio::spawn(async move {
                let mut mine: Vec<Entry<'_>> = Vec::with_capacity(2 * UIDS);
                for (o, c) in orders.iter().zip(cancels.iter()) {
                    if lane % 2 == 0 {
                        mine.extend([Entry::from(o), Entry::from(c)]);
                    } else {
                        mine.extend([Entry::from(c), Entry::from(o)]);
                    }
                }
                if lane % 4 >= 2 {
                    mine.reverse();
                }
                mine.rotate_left(usize::from(lane) * 2);
                let mut seen: Vec<(String, OrderOutcome, Outcome)> = Vec::new();
                for batch in mine.chunks(40) {
                    let recorded = ledger.apply_batch(lane, batch).await.expect("apply");
                    // Let the other appliers in between batches (the memory store never waits).
                    tokio::task::yield_now().await;
                    for (entry, result) in batch.iter().zip(recorded) {
                        seen.push((
                            entry.uid().to_string(),
                            result.outcome.recorded(),
                            result.outcome,
                        ));
                    }
                }
                seen
            })
        })
        .collect();
    let mut told: HashMap<String, OrderOutcome> = HashMap::new();
    let mut deciders: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for (uid, recorded, outcome) in task.await.expect("applier") {
            // Every applier is told the same outcome for a uid.
            let first = *told.entry(uid.clone()).or_insert(recorded);
            assert_eq!(first, recorded, "two outcomes for {uid}");
            if outcome.decided() {
                *deciders.entry(uid).or_default() += 1;
            }
        }
    }
    assert_eq!(told.len(), UIDS);
    assert!(
        deciders.len() == UIDS && deciders.values().all(|&n| n == 1),
        "exactly one entry decides each uid"
    );
    let fulfilled: Vec<OrderMessage> = orders
        .iter()
        .filter(|o| told[&o.order_uid] == OrderOutcome::Fulfilled)
        .cloned()
        .collect();
    for o in orders.iter() {
        assert_eq!(
            store.outcome(&o.order_uid).await.expect("read"),
            Some(told[&o.order_uid])
        );
    }
    let stats = ledger.stats().await.expect("stats");
    eprintln!(
        "{} fulfilled, {} cancelled",
        fulfilled.len(),
        UIDS - fulfilled.len()
    );
    assert_eq!(stats.orders_processed, fulfilled.len() as u64);
    assert_eq!(stats.orders_cancelled, (UIDS - fulfilled.len()) as u64);
    assert_eq!(stats.products, crate::helpers::expected_totals(&fulfilled));
    assert_eq!(ledger.applied_here(), fulfilled.len() as u64);
    assert_eq!(ledger.settled_here(), 8 * 2 * UIDS as u64);
}
