//! Several product instances on one PostgreSQL database, as behind the load balancer.

use crate::support::{concurrent_creates, db_scalar, product, run_built, spawn_instance, SCHEMA};
use common::testing::TestDatabase;
use product_service::{configuration::Settings, Application};
use serde_json::json;
use std::collections::HashSet;

fn count_sql() -> String {
    format!("SELECT count(*) FROM {SCHEMA}.products")
}

#[tokio::test]
async fn a_product_created_on_one_instance_is_readable_on_another_at_once() {
    let db = TestDatabase::create().await;
    let a = spawn_instance(db.config(SCHEMA), 5, "product-a").await;
    let b = spawn_instance(db.config(SCHEMA), 5, "product-b").await;
    // B has read (and cached) every product there is, and found the next id absent.
    for id in 1..=5 {
        assert_eq!(b.product(id).await, a.product(id).await);
    }
    for round in 0..3 {
        let next = 6 + round;
        assert_eq!(b.product(next).await, None, "not created yet");
        assert_eq!(a.create().await, next);
        let mut expected = product();
        expected["product_id"] = json!(next);
        assert_eq!(b.product(next).await, Some(expected), "created through A");
    }
}

#[tokio::test]
async fn concurrent_creates_through_two_instances_get_distinct_ids() {
    let db = TestDatabase::create().await;
    let a = spawn_instance(db.config(SCHEMA), 0, "product-a").await;
    let b = spawn_instance(db.config(SCHEMA), 0, "product-b").await;
    let (from_a, from_b) = tokio::join!(concurrent_creates(&a, 100), concurrent_creates(&b, 100));
    let mut ids: Vec<i64> = from_a.iter().chain(&from_b).copied().collect();
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 200, "duplicate ids: {ids:?}");
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<i64>>());
    assert_eq!(db_scalar(&db, &count_sql()).await, 200);
}

/// Migrations and the seed race on a fresh database; every instance comes up, and the catalog
/// holds exactly the N seeded products.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_together_seed_exactly_once() {
    const N: u32 = 2000;
    let db = TestDatabase::create().await;
    let build = |instance: &str| {
        let mut settings = Settings::for_tests().with_store(db.config(SCHEMA));
        settings.seed_products = N;
        settings.service.instance_id = instance.to_string();
        tokio::spawn(Application::build(settings))
    };
    let starts = [build("p1"), build("p2"), build("p3"), build("p4")];
    let mut apps = Vec::new();
    for start in starts {
        let app = start.await.expect("task").expect("every instance comes up");
        apps.push(run_built(app));
    }
    assert_eq!(db_scalar(&db, &count_sql()).await, i64::from(N));
    for app in &apps {
        assert!(app.product(1).await.is_some());
        assert!(app.product(i64::from(N)).await.is_some());
        assert_eq!(app.product(i64::from(N) + 1).await, None);
    }
    // The sequence was moved past the seeded ids exactly once.
    assert_eq!(apps[3].create().await, i64::from(N) + 1);
    assert_eq!(apps[0].create().await, i64::from(N) + 2);
}

/// A restart with the same or a larger SEED_PRODUCTS keeps created products and adds only the
/// missing seeded ones; created ids always come after everything there is.
#[tokio::test]
async fn seeding_again_keeps_created_products() {
    let db = TestDatabase::create().await;
    let first = spawn_instance(db.config(SCHEMA), 10, "first").await;
    assert_eq!(first.create().await, 11);
    assert_eq!(first.create().await, 12);

    let again = spawn_instance(db.config(SCHEMA), 10, "again").await;
    assert_eq!(db_scalar(&db, &count_sql()).await, 12);
    assert_eq!(again.create().await, 13);

    let larger = spawn_instance(db.config(SCHEMA), 20, "larger").await;
    assert_eq!(db_scalar(&db, &count_sql()).await, 20);
    for id in 11..=13 {
        assert_eq!(
            larger.product(id).await.expect("kept")["sku"],
            "ABC123XYZ0",
            "created product {id} is kept"
        );
    }
    let seeded_14 = larger.product(14).await.expect("seeded");
    assert_eq!(seeded_14["sku"], "SKU0000014");
    assert_eq!(larger.create().await, 21);
}

/// A migration that differs from the one already applied is a mistake waiting cannot fix: the
/// service refuses to start at once, naming it, instead of retrying as if the database were down.
#[tokio::test]
async fn an_edited_migration_stops_the_start_at_once() {
    let db = TestDatabase::create().await;
    drop(spawn_instance(db.config(SCHEMA), 0, "product-a").await);
    db_scalar(
        &db,
        &format!("WITH t AS (UPDATE {SCHEMA}._sqlx_migrations SET checksum = '\\x00' RETURNING 1) SELECT count(*) FROM t"),
    )
    .await;
    let mut config = db.config(SCHEMA);
    config.startup_timeout = std::time::Duration::from_secs(20);
    let started = std::time::Instant::now();
    let err = match Application::build(Settings::for_tests().with_store(config)).await {
        Ok(_) => panic!("started on an edited migration"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("migration"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "waited {:?} for a mistake that waiting cannot fix",
        started.elapsed()
    );
}
