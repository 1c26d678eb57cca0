//! Stock and reservations over real HTTP, the same on both stores: every test here is an
//! `async fn(Backend)` run once on the memory store and once on PostgreSQL. (Selling a
//! reservation needs the warehouse's events: see `events.rs`.)

use crate::support::{
    error_body, on_both_stores, product, spawn_on, spawn_with, wait_for, Backend, Levels,
};
use product_service::configuration::Settings;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

on_both_stores!(
    created_products_get_their_stock,
    seeded_products_get_seed_stock,
    public_stock_route_and_its_errors,
    products_are_listed_in_pages_by_cursor,
    bad_pages_are_400_naming_the_parameter,
    a_reservation_holds_and_retries_are_idempotent,
    a_different_reservation_under_the_same_uid_is_a_mismatch,
    out_of_stock_reserves_nothing_and_names_every_product,
    unknown_products_reserve_nothing,
    invalid_reservations_are_400_naming_the_field,
    release_gives_the_stock_back_exactly_once,
    a_released_reservation_is_held_again_by_a_retry,
    confirm_marks_held_reservations_only,
    adjustments_move_on_hand_within_bounds,
    internal_routes_never_fail_on_purpose,
    concurrent_reservations_never_oversell,
    a_burst_is_answered_as_if_each_reservation_came_alone,
    concurrent_reserves_and_releases_keep_the_books_balanced,
    the_timeout_releases_held_reservations_only,
);

async fn created_products_get_their_stock(backend: Backend) {
    let mut settings = Settings::for_tests();
    settings.seed_stock = 7;
    let app = spawn_with(backend, settings).await;
    let default = app.create().await;
    assert_eq!(app.levels(default).await, Levels::new(7, 0, 0, 0));
    let given = app.create_with_stock(3).await;
    assert_eq!(app.levels(given).await, Levels::new(3, 0, 0, 0));
    let zero = app.create_with_stock(0).await;
    assert_eq!(app.levels(zero).await, Levels::new(0, 0, 0, 0));
    let mut null = product();
    null["quantity_on_hand"] = Value::Null;
    let resp = app.post_product(&null).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<Value>().await.expect("json")["product_id"]
        .as_i64()
        .expect("id");
    assert_eq!(app.levels(id).await.on_hand, 7, "null means the default");

    // The catalog JSON stays as it was: no stock in it (it is cached as immutable).
    let mut expected = product();
    expected["product_id"] = json!(given);
    assert_eq!(app.product(given).await, Some(expected));

    for bad in [
        json!(-1),
        json!("5"),
        json!(1.5),
        json!(1_000_000_000_001i64),
        json!(true),
    ] {
        let mut body = product();
        body["quantity_on_hand"] = bad.clone();
        let resp = app.post_product(&body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let err = error_body(resp).await;
        assert!(err.to_string().contains("quantity_on_hand"), "{bad}: {err}");
    }
    assert_eq!(app.product(zero + 2).await, None, "no product was created");
}

async fn seeded_products_get_seed_stock(backend: Backend) {
    let mut settings = Settings::for_tests();
    settings.seed_products = 3;
    settings.seed_stock = 42;
    let app = spawn_with(backend, settings).await;
    for id in 1..=3 {
        assert_eq!(app.levels(id).await, Levels::new(42, 0, 0, 0));
    }
}

async fn public_stock_route_and_its_errors(backend: Backend) {
    let app = spawn_on(backend, 2).await;
    let resp = app.get("/products/2/stock").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!({"product_id": 2, "quantity_on_hand": 1_000_000})
    );

    let resp = app.get("/products/3/stock").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_body(resp).await["error"], "PRODUCT_NOT_FOUND");
    let resp = app.get("/internal/products/3/stock").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_body(resp).await["error"], "PRODUCT_NOT_FOUND");
    for bad in ["0", "abc", "2147483648"] {
        for path in [
            format!("/products/{bad}/stock"),
            format!("/internal/products/{bad}/stock"),
        ] {
            let resp = app.get(&path).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(error_body(resp).await["error"], "INVALID_ID");
        }
    }
    // A reservation shows in on_hand at once (stock is never cached).
    assert_eq!(
        app.reserve("u-1", &[(2, 5)]).await.status(),
        StatusCode::CREATED
    );
    let body: Value = app
        .get("/products/2/stock")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["quantity_on_hand"], 999_995);
}

async fn products_are_listed_in_pages_by_cursor(backend: Backend) {
    let app = spawn_on(backend, 45).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/products?cursor={c}"),
            None => "/products".to_string(),
        };
        let resp = app.get(&path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let page: Value = resp.json().await.expect("json");
        let items = page["items"].as_array().expect("items").clone();
        pages += 1;
        for item in &items {
            let id = item["product_id"].as_i64().expect("id");
            // The same JSON as GET /products/{id}.
            assert_eq!(app.product(id).await.as_ref(), Some(item));
            seen.push(id);
        }
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), 20, "a page with a successor is full");
                cursor = Some(next.to_string());
            }
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=45).collect::<Vec<i64>>());

    let page: Value = app
        .get("/products?limit=100")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(45));
    assert!(page["next_cursor"].is_null());
    let page: Value = app
        .get("/products?limit=45")
        .await
        .json()
        .await
        .expect("json");
    assert!(
        page["next_cursor"].is_null(),
        "exactly the rest: no next page"
    );
    let page: Value = app
        .get("/products?limit=1&cursor=44")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["items"][0]["product_id"], 45);
    assert!(page["next_cursor"].is_null());
    let page: Value = app
        .get("/products?cursor=45")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page, json!({"items": [], "next_cursor": null}));

    // A product created later is listed after the others.
    let id = app.create().await;
    let page: Value = app
        .get("/products?cursor=45")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["items"][0]["product_id"], id);
}

async fn bad_pages_are_400_naming_the_parameter(backend: Backend) {
    let app = spawn_on(backend, 3).await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("cursor=abc", "cursor"),
        ("cursor=-1", "cursor"),
        ("cursor=99999999999", "cursor"),
    ] {
        let resp = app.get(&format!("/products?{query}")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        let err = error_body(resp).await;
        assert_eq!(err["error"], "INVALID_INPUT", "{query}");
        assert_eq!(err["details"], field, "{query}");
    }
}

async fn a_reservation_holds_and_retries_are_idempotent(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let a = app.create_with_stock(10).await;
    let b = app.create_with_stock(10).await;
    let resp = app.reserve("order-1", &[(b, 1), (a, 3)]).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let held: Value = resp.json().await.expect("json");
    // Items come back normalised: by product id.
    let items = json!([{"product_id": a, "quantity": 3}, {"product_id": b, "quantity": 1}]);
    assert_eq!(
        held,
        json!({"order_uid": "order-1", "status": "held", "items": items})
    );
    assert_eq!(app.levels(a).await, Levels::new(7, 3, 0, 0));
    assert_eq!(app.levels(b).await, Levels::new(9, 1, 0, 0));

    // A retry, in any order, with a duplicate line split in two: the same reservation, 200.
    for retry in [vec![(a, 3), (b, 1)], vec![(b, 1), (a, 1), (a, 2)]] {
        let resp = app.reserve("order-1", &retry).await;
        assert_eq!(resp.status(), StatusCode::OK, "{retry:?}");
        assert_eq!(resp.json::<Value>().await.expect("json"), held);
    }
    assert_eq!(app.levels(a).await, Levels::new(7, 3, 0, 0), "taken once");

    let detail = app.reservation("order-1").await.expect("exists");
    assert_eq!(detail["status"], "held");
    assert_eq!(detail["items"], items);
    for field in ["created_at", "updated_at"] {
        let at = detail[field].as_str().expect(field);
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{field}={at}: {e}"));
    }
    assert_eq!(app.reservation("nope").await, None);
}

async fn a_different_reservation_under_the_same_uid_is_a_mismatch(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let a = app.create_with_stock(10).await;
    let b = app.create_with_stock(10).await;
    assert_eq!(
        app.reserve("u", &[(a, 2)]).await.status(),
        StatusCode::CREATED
    );
    for other in [vec![(a, 3)], vec![(b, 2)], vec![(a, 2), (b, 1)]] {
        let resp = app.reserve("u", &other).await;
        assert_eq!(resp.status(), StatusCode::CONFLICT, "{other:?}");
        let err = error_body(resp).await;
        assert_eq!(err["error"], "RESERVATION_MISMATCH");
        assert_eq!(
            err["details"],
            format!("held: product_id={a} quantity=2"),
            "{err}"
        );
    }
    assert_eq!(app.levels(a).await, Levels::new(8, 2, 0, 0));
    assert_eq!(app.levels(b).await, Levels::new(10, 0, 0, 0));
    // Confirmed, it is still bound to its items.
    assert_eq!(app.confirm(&["u"]).await, 1);
    let resp = app.reserve("u", &[(a, 3)]).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(error_body(resp).await["error"], "RESERVATION_MISMATCH");

    // Released, it holds nothing: a checkout retried after the cart changed (same order uid)
    // holds the new items, and from then on the uid is bound to those.
    assert_eq!(app.release("u").await.status(), StatusCode::OK);
    let resp = app.reserve("u", &[(b, 1), (a, 3)]).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let items = json!([{"product_id": a, "quantity": 3}, {"product_id": b, "quantity": 1}]);
    assert_eq!(resp.json::<Value>().await.expect("json")["items"], items);
    assert_eq!(app.reservation("u").await.expect("exists")["items"], items);
    assert_eq!(app.levels(a).await, Levels::new(7, 3, 0, 0));
    assert_eq!(app.levels(b).await, Levels::new(9, 1, 0, 0));
    let resp = app.reserve("u", &[(a, 2)]).await;
    assert_eq!(
        resp.status(),
        StatusCode::CONFLICT,
        "the old items are now the other ones"
    );
    assert_eq!(error_body(resp).await["error"], "RESERVATION_MISMATCH");
    // Released again, the new items go back.
    assert_eq!(app.release("u").await.status(), StatusCode::OK);
    assert_eq!(app.levels(a).await, Levels::new(10, 0, 0, 0));
    assert_eq!(app.levels(b).await, Levels::new(10, 0, 0, 0));
}

async fn out_of_stock_reserves_nothing_and_names_every_product(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let plenty = app.create_with_stock(5).await;
    let one = app.create_with_stock(1).await;
    let none = app.create_with_stock(0).await;
    let resp = app
        .reserve("short", &[(plenty, 5), (one, 2), (none, 1)])
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let err = error_body(resp).await;
    assert_eq!(err["error"], "OUT_OF_STOCK");
    assert_eq!(
        err["details"],
        format!(
            "product_id={one} requested=2 available=1; product_id={none} requested=1 available=0"
        )
    );
    let message = err["message"].as_str().expect("message");
    assert!(
        message.contains(&one.to_string()) && message.contains(&none.to_string()),
        "{message}"
    );
    // Nothing was reserved, and nothing was recorded under the uid.
    assert_eq!(app.levels(plenty).await, Levels::new(5, 0, 0, 0));
    assert_eq!(app.levels(one).await, Levels::new(1, 0, 0, 0));
    assert_eq!(app.reservation("short").await, None);
    // So the uid is free for a reservation that fits.
    assert_eq!(
        app.reserve("short", &[(plenty, 5), (one, 1)])
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(app.levels(plenty).await, Levels::new(0, 5, 0, 0));
    assert_eq!(app.levels(one).await, Levels::new(0, 1, 0, 0));
}

async fn unknown_products_reserve_nothing(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let known = app.create_with_stock(5).await;
    let resp = app.reserve("x", &[(known, 1), (9999, 1), (4242, 9)]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let err = error_body(resp).await;
    assert_eq!(err["error"], "PRODUCT_NOT_FOUND");
    assert_eq!(err["details"], "product_id=4242; product_id=9999");
    assert_eq!(app.levels(known).await, Levels::new(5, 0, 0, 0));
    assert_eq!(app.reservation("x").await, None);
}

async fn invalid_reservations_are_400_naming_the_field(backend: Backend) {
    let app = spawn_on(backend, 1).await;
    let item = json!({"product_id": 1, "quantity": 1});
    let cases = [
        (json!({"order_uid": "u", "items": []}), "items"),
        (json!({"order_uid": "u"}), "items"),
        (json!({"items": [item]}), "order_uid"),
        (json!({"order_uid": "", "items": [item]}), "order_uid"),
        (json!({"order_uid": "   ", "items": [item]}), "order_uid"),
        (
            json!({"order_uid": "u".repeat(65), "items": [item]}),
            "order_uid",
        ),
        (
            json!({"order_uid": "a\u{0}b", "items": [item]}),
            "order_uid",
        ),
        (json!({"order_uid": 7, "items": [item]}), "order_uid"),
        (
            json!({"order_uid": "u", "items": [item, {"product_id": 1, "quantity": 0}]}),
            "items[1].quantity",
        ),
        (
            json!({"order_uid": "u", "items": [{"product_id": 0, "quantity": 1}]}),
            "items[0].product_id",
        ),
        (
            json!({"order_uid": "u", "items": [{"product_id": 1, "quantity": -2}]}),
            "items[0].quantity",
        ),
        (
            json!({"order_uid": "u", "items": [{"product_id": 1, "quantity": "1"}]}),
            "quantity",
        ),
        (
            json!({"order_uid": "u", "items": [{"product_id": 1, "quantity": 3_000_000_000u64}]}),
            "quantity",
        ),
        (
            json!({"order_uid": "u", "items": [{"product_id": 1, "quantity": 2147483647}, {"product_id": 1, "quantity": 1}]}),
            "items",
        ),
    ];
    for (body, field) in cases {
        let resp = app.post_json("/internal/reservations", &body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let err = error_body(resp).await;
        assert!(err.to_string().contains(field), "{body}: {err}");
    }
    // 64 characters is allowed.
    let uid = "é".repeat(64);
    assert_eq!(
        app.reserve(&uid, &[(1, 1)]).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.status_of(&uid).await, "held");
    assert_eq!(app.levels(1).await, Levels::new(999_999, 1, 0, 0));
}

async fn release_gives_the_stock_back_exactly_once(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let a = app.create_with_stock(10).await;
    assert_eq!(
        app.reserve("r", &[(a, 4)]).await.status(),
        StatusCode::CREATED
    );
    let expected = json!({"order_uid": "r", "status": "released", "items": [{"product_id": a, "quantity": 4}]});
    for attempt in 0..3 {
        let resp = app.release("r").await;
        assert_eq!(resp.status(), StatusCode::OK, "release #{attempt}");
        assert_eq!(resp.json::<Value>().await.expect("json"), expected);
        assert_eq!(app.levels(a).await, Levels::new(10, 0, 0, 0), "#{attempt}");
    }
    assert_eq!(app.status_of("r").await, "released");
    // Unknown, and uids no reservation can have (a NUL, too long): absent on both stores alike.
    let long = "u".repeat(65);
    for uid in ["unknown-uid", "a%00b", long.as_str()] {
        let resp = app.release(uid).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{uid}");
        assert_eq!(error_body(resp).await["error"], "RESERVATION_NOT_FOUND");
        assert_eq!(app.reservation(uid).await, None, "{uid}");
    }
    assert_eq!(app.confirm(&["a\u{0}b", "", &long]).await, 0);
    // A uid with characters that need escaping in a path still works.
    assert_eq!(
        app.reserve("a b/c?", &[(a, 1)]).await.status(),
        StatusCode::CREATED
    );
    let resp = app.release("a%20b%2Fc%3F").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["order_uid"],
        "a b/c?"
    );
}

/// A checkout retried after a declined card reuses its order uid: the stock is taken again.
async fn a_released_reservation_is_held_again_by_a_retry(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let a = app.create_with_stock(5).await;
    assert_eq!(
        app.reserve("retry", &[(a, 2)]).await.status(),
        StatusCode::CREATED
    );
    let first = app.reservation("retry").await.expect("exists");
    assert_eq!(app.release("retry").await.status(), StatusCode::OK);
    assert_eq!(app.levels(a).await, Levels::new(5, 0, 0, 0));
    let resp = app.reserve("retry", &[(a, 2)]).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.json::<Value>().await.expect("json")["status"], "held");
    assert_eq!(app.levels(a).await, Levels::new(3, 2, 0, 0));
    let again = app.reservation("retry").await.expect("exists");
    assert_eq!(
        again["created_at"], first["created_at"],
        "the same reservation"
    );
    assert_eq!(
        app.reserve("retry", &[(a, 2)]).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.levels(a).await, Levels::new(3, 2, 0, 0));

    // Held again only if the stock is there: otherwise 409 and it stays released.
    assert_eq!(app.release("retry").await.status(), StatusCode::OK);
    assert_eq!(app.adjust(a, -4).await.status(), StatusCode::OK);
    let resp = app.reserve("retry", &[(a, 2)]).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(error_body(resp).await["error"], "OUT_OF_STOCK");
    assert_eq!(app.status_of("retry").await, "released");
    assert_eq!(app.levels(a).await, Levels::new(1, 0, 0, 0));
}

async fn confirm_marks_held_reservations_only(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let a = app.create_with_stock(10).await;
    for uid in ["c1", "c2", "c3"] {
        assert_eq!(
            app.reserve(uid, &[(a, 1)]).await.status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(app.release("c3").await.status(), StatusCode::OK);
    // Duplicates, unknown and released uids are ignored.
    assert_eq!(app.confirm(&["c1", "c2", "c1", "nobody", "c3"]).await, 2);
    assert_eq!(app.confirm(&["c1", "c2"]).await, 0, "already confirmed");
    assert_eq!(app.confirm(&[]).await, 0);
    assert_eq!(app.status_of("c1").await, "confirmed");
    assert_eq!(app.status_of("c3").await, "released");
    assert_eq!(
        app.levels(a).await,
        Levels::new(8, 2, 0, 0),
        "stock unchanged"
    );
    // A retried reserve of a confirmed reservation answers it as it is.
    let resp = app.reserve("c1", &[(a, 1)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["status"],
        "confirmed"
    );
    // A confirmed reservation can still be released (a customer's cancel before fulfilment).
    assert_eq!(app.release("c2").await.status(), StatusCode::OK);
    assert_eq!(app.levels(a).await, Levels::new(9, 1, 0, 0));

    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let resp = app
        .post_json(
            "/internal/reservations/confirm",
            &json!({ "order_uids": many }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_body(resp).await["details"], "order_uids");
    let resp = app
        .post_json(
            "/internal/reservations/confirm",
            &json!({ "order_uids": many[..1000] }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "1000 is allowed");
    let resp = app
        .post_json("/internal/reservations/confirm", &json!({"uids": []}))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(error_body(resp).await.to_string().contains("order_uids"));
}

async fn adjustments_move_on_hand_within_bounds(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let a = app.create_with_stock(5).await;
    assert_eq!(
        app.reserve("adj", &[(a, 2)]).await.status(),
        StatusCode::CREATED
    );
    let resp = app.adjust(a, 10).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!({"product_id": a, "quantity_on_hand": 13, "reserved": 2, "sold": 0, "oversold": 0})
    );
    assert_eq!(app.adjust(a, -13).await.status(), StatusCode::OK);
    assert_eq!(app.levels(a).await, Levels::new(0, 2, 0, 0));
    // Reserved units are not on hand: they cannot be adjusted away.
    let resp = app.adjust(a, -1).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let err = error_body(resp).await;
    assert_eq!(err["error"], "INSUFFICIENT_STOCK");
    assert_eq!(err["details"], format!("product_id={a} on_hand=0 delta=-1"));
    assert_eq!(app.adjust(a, i64::MIN).await.status(), StatusCode::CONFLICT);
    assert_eq!(app.adjust(a, 0).await.status(), StatusCode::OK);
    let resp = app.adjust(a, i64::MAX).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_body(resp).await["details"], "delta");
    assert_eq!(app.levels(a).await, Levels::new(0, 2, 0, 0));

    let resp = app.adjust(9999, 1).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_body(resp).await["error"], "PRODUCT_NOT_FOUND");
    for body in [json!({}), json!({"delta": "1"}), json!({"delta": 1.5})] {
        let resp = app
            .post_json(&format!("/internal/products/{a}/stock"), &body)
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(error_body(resp).await.to_string().contains("delta"));
    }
}

/// `FAILURE_RATE` fails the public routes (the load-balancer demonstration), never the
/// checkout's internal path.
async fn internal_routes_never_fail_on_purpose(backend: Backend) {
    let mut settings = Settings::for_tests();
    settings.failure_rate = 1.0;
    settings.seed_products = 1;
    let app = spawn_with(backend, settings).await;
    for path in ["/products/1", "/products", "/products/1/stock"] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(error_body(resp).await["error"], "SERVICE_UNAVAILABLE");
    }
    for i in 0..20 {
        let uid = format!("never-fails-{i}");
        assert_eq!(
            app.reserve(&uid, &[(1, 1)]).await.status(),
            StatusCode::CREATED
        );
        assert_eq!(app.confirm(&[&uid]).await, 1);
        assert!(app.reservation(&uid).await.is_some());
        assert_eq!(app.release(&uid).await.status(), StatusCode::OK);
        assert_eq!(app.adjust(1, 1).await.status(), StatusCode::OK);
        app.levels(1).await;
    }
}

/// 200 checkouts race for the last 50 units: exactly 50 win, nobody oversells.
async fn concurrent_reservations_never_oversell(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let id = app.create_with_stock(50).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = app.client.clone();
            let url = format!("{}/internal/reservations", app.base);
            tokio::spawn(async move {
                let body = json!({"order_uid": format!("race-{i}"), "items": [{"product_id": id, "quantity": 1}]});
                let resp = client.post(url).json(&body).send().await.expect("request");
                let status = resp.status();
                let error = if status == StatusCode::CREATED {
                    None
                } else {
                    Some(error_body(resp).await["error"].clone())
                };
                (status, error)
            })
        })
        .collect();
    let (mut created, mut out_of_stock) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            (StatusCode::CREATED, None) => created += 1,
            (StatusCode::CONFLICT, Some(error)) if error == "OUT_OF_STOCK" => out_of_stock += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((created, out_of_stock), (50, 150));
    assert_eq!(app.levels(id).await, Levels::new(0, 50, 0, 0));
    let held = futures::future::join_all((0..200).map(|i| {
        let app = &app;
        async move {
            app.reservation(&format!("race-{i}"))
                .await
                .map(|r| r["status"].as_str().unwrap_or_default().to_string())
        }
    }))
    .await;
    assert_eq!(
        held.iter().filter(|s| s.as_deref() == Some("held")).count(),
        50
    );
    assert_eq!(held.iter().filter(|s| s.is_none()).count(), 150);
}

/// 240 reservations at once, so the PostgreSQL store takes them in batches: fresh ones, racing
/// retries of the same uid, ones that run out of stock, ones naming an unknown product. Each is
/// answered as if it had come alone, and the books hold exactly the held ones.
async fn a_burst_is_answered_as_if_each_reservation_came_alone(backend: Backend) {
    const A_STOCK: i64 = 60;
    const B_STOCK: i64 = 5;
    let app = Arc::new(spawn_on(backend, 0).await);
    let a = app.create_with_stock(A_STOCK).await;
    let b = app.create_with_stock(B_STOCK).await;
    let unknown = 999_999;
    // (uid, items): i % 6 == 1 retries the uid of i - 1 with the same items.
    let requests: Vec<(String, Vec<(i64, i64)>)> = (0..240)
        .map(|i| match i % 6 {
            0 | 1 => (format!("burst-{}", i - i % 6), vec![(a, 1)]),
            2 => (format!("burst-{i}"), vec![(a, 1), (b, 1)]),
            3 => (format!("burst-{i}"), vec![(a, 1), (unknown, 1)]),
            _ => (format!("burst-{i}"), vec![(a, 1)]),
        })
        .collect();
    let tasks: Vec<_> = requests
        .iter()
        .cloned()
        .map(|(uid, items)| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let resp = app.reserve(&uid, &items).await;
                let status = resp.status();
                let body: Value = resp.json().await.expect("json");
                (status, body)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }

    let mut held: std::collections::BTreeMap<String, Vec<(i64, i64)>> = Default::default();
    let mut refused = std::collections::BTreeSet::new();
    for (i, ((uid, items), (status, body))) in requests.iter().zip(&answers).enumerate() {
        match status.as_u16() {
            201 | 200 => {
                assert_eq!(body["status"], "held", "{uid}: {body}");
                held.insert(uid.clone(), items.clone());
            }
            409 => {
                assert_eq!(body["error"], "OUT_OF_STOCK", "{uid}: {body}");
                refused.insert(uid.clone());
            }
            404 => {
                assert_eq!(i % 6, 3, "{uid}: {body}");
                assert_eq!(body["error"], "PRODUCT_NOT_FOUND", "{uid}: {body}");
                refused.insert(uid.clone());
            }
            other => panic!("{uid}: unexpected {other}: {body}"),
        }
        if i % 6 == 3 {
            assert_eq!(
                status.as_u16(),
                404,
                "{uid}: an unknown product is never held"
            );
        }
    }
    // A uid and its racing retry: one 201 and one 200, or both refused.
    for pair in answers.chunks(6) {
        let statuses = (pair[0].0.as_u16(), pair[1].0.as_u16());
        assert!(
            matches!(statuses, (201, 200) | (200, 201) | (409, 409)),
            "{statuses:?}"
        );
    }
    let short = answers.iter().filter(|(s, _)| s.as_u16() == 409).count();
    assert!(short > 0, "twice as much was asked of product a as it has");
    assert!(held.keys().all(|uid| !refused.contains(uid)));

    let on = |id: i64| -> i64 {
        held.values()
            .flat_map(|items| items.iter())
            .filter(|(p, _)| *p == id)
            .map(|(_, q)| q)
            .sum()
    };
    assert_eq!(on(a), A_STOCK, "product a is sold out, never oversold");
    assert_eq!(app.levels(a).await, Levels::new(0, on(a), 0, 0));
    assert_eq!(
        app.levels(b).await,
        Levels::new(B_STOCK - on(b), on(b), 0, 0)
    );
    for uid in held.keys() {
        assert_eq!(app.status_of(uid).await, "held", "{uid}");
    }
    for uid in &refused {
        assert_eq!(
            app.reservation(uid).await,
            None,
            "{uid}: refused, so not recorded"
        );
    }
    if matches!(backend, Backend::Postgres) {
        let batches = app.metric("product_reservation_batches_total").await;
        let batched = app.metric("product_reservations_batched_total").await;
        let alone = app.metric("product_reservations_alone_total").await;
        assert_eq!(batched + alone, 240, "every reservation decided once");
        assert!(
            batched > batches,
            "some batch held more than one: {batched} in {batches}"
        );
        // A 200 is a uid found already reserved, which only a reservation alone answers.
        let retried = answers.iter().filter(|(s, _)| s.as_u16() == 200).count() as u64;
        assert!(
            retried > 0 && alone >= retried,
            "{alone} alone, {retried} answered 200"
        );
    }
}

/// Reserves, releases, retries and adjustments race on a few products; afterwards every
/// product's books balance, and what is reserved is exactly what the held reservations hold.
async fn concurrent_reserves_and_releases_keep_the_books_balanced(backend: Backend) {
    const INITIAL: i64 = 40;
    let app = Arc::new(spawn_on(backend, 0).await);
    let mut products = Vec::new();
    for _ in 0..3 {
        products.push(app.create_with_stock(INITIAL).await);
    }
    let tasks: Vec<_> = (0..120)
        .map(|i: i64| {
            let app = Arc::clone(&app);
            let products = products.clone();
            tokio::spawn(async move {
                let uid = format!("mix-{i}");
                let a = products[(i % 3) as usize];
                let b = products[((i + 1) % 3) as usize];
                let items = [(a, 1 + i % 3), (b, 1 + i % 2)];
                let mut adjusted = [(a, 0i64)];
                app.reserve(&uid, &items).await;
                match i % 4 {
                    0 => {
                        app.release(&uid).await;
                    }
                    1 => {
                        app.release(&uid).await;
                        app.reserve(&uid, &items).await;
                    }
                    2 => {
                        app.confirm(&[&uid]).await;
                        app.release(&uid).await;
                        app.release(&uid).await;
                    }
                    _ => {
                        let delta = if i % 8 == 3 { 2 } else { -1 };
                        if app.adjust(a, delta).await.status() == StatusCode::OK {
                            adjusted = [(a, delta)];
                        }
                    }
                }
                adjusted
            })
        })
        .collect();
    let mut adjustments = std::collections::HashMap::new();
    for task in tasks {
        for (id, delta) in task.await.expect("task") {
            *adjustments.entry(id).or_insert(0) += delta;
        }
    }
    let mut reserved_by_reservations = std::collections::HashMap::new();
    for i in 0..120 {
        let Some(r) = app.reservation(&format!("mix-{i}")).await else {
            continue;
        };
        if matches!(r["status"].as_str(), Some("held" | "confirmed")) {
            for item in r["items"].as_array().expect("items") {
                *reserved_by_reservations
                    .entry(item["product_id"].as_i64().expect("id"))
                    .or_insert(0) += item["quantity"].as_i64().expect("quantity");
            }
        }
    }
    for id in products {
        let levels = app.levels(id).await;
        let adjusted = adjustments.get(&id).copied().unwrap_or(0);
        assert_eq!(
            levels.total(),
            INITIAL + adjusted,
            "product {id}: {levels:?}"
        );
        assert_eq!(
            levels.reserved,
            reserved_by_reservations.get(&id).copied().unwrap_or(0),
            "product {id}: {levels:?}"
        );
        assert!(levels.on_hand >= 0 && levels.sold == 0, "{levels:?}");
    }
}

async fn the_timeout_releases_held_reservations_only(backend: Backend) {
    let mut settings = Settings::for_tests();
    // Long enough for the confirm below to beat it on a loaded machine.
    settings.reservation_ttl = Duration::from_millis(1000);
    settings.seed_products = 1;
    settings.seed_stock = 10;
    let app = spawn_with(backend, settings).await;
    assert_eq!(
        app.reserve("ttl-held", &[(1, 2)]).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.reserve("ttl-confirmed", &[(1, 3)]).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.confirm(&["ttl-confirmed"]).await, 1);
    assert_eq!(app.levels(1).await, Levels::new(5, 5, 0, 0));

    wait_for(
        "the held reservation to time out",
        Duration::from_secs(10),
        || async { (app.status_of("ttl-held").await == "released").then_some(()) },
    )
    .await;
    assert_eq!(app.levels(1).await, Levels::new(7, 3, 0, 0));
    assert_eq!(
        app.metric("product_reservations_released_by_ttl_total")
            .await,
        1
    );
    // Well past the timeout, the confirmed one is still held for its order.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.status_of("ttl-confirmed").await, "confirmed");
    assert_eq!(app.levels(1).await, Levels::new(7, 3, 0, 0));

    // A re-held reservation's timeout counts from the re-hold.
    assert_eq!(
        app.reserve("ttl-held", &[(1, 2)]).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.status_of("ttl-held").await, "held");
    wait_for(
        "the re-held reservation to time out",
        Duration::from_secs(10),
        || async { (app.status_of("ttl-held").await == "released").then_some(()) },
    )
    .await;
    assert_eq!(app.levels(1).await, Levels::new(7, 3, 0, 0));
    assert_eq!(
        app.metric("product_reservations_released_by_ttl_total")
            .await,
        2
    );
}
