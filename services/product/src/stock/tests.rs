//! The stock rules, on hand-made working sets (no store).

use super::*;
use axum::http::StatusCode;
use common::messaging::{OrderEvent, OrderOutcome};

fn item(product_id: i32, quantity: i32) -> Item {
    Item {
        product_id,
        quantity,
    }
}

fn rows(levels: &[(i32, i64)]) -> BTreeMap<i32, Levels> {
    levels
        .iter()
        .map(|&(id, stock)| (id, Levels::new(stock)))
        .collect()
}

fn detail_field(err: ApiError) -> Option<String> {
    err.body.details
}

#[test]
fn items_are_merged_sorted_and_checked() {
    let merged = normalise(&[item(7, 1), item(3, 2), item(7, 4)]).expect("valid");
    assert_eq!(merged, vec![item(3, 2), item(7, 5)]);
    assert_eq!(
        detail_field(normalise(&[]).unwrap_err()).as_deref(),
        Some("items")
    );
    assert_eq!(
        detail_field(normalise(&[item(1, 1), item(0, 1)]).unwrap_err()).as_deref(),
        Some("items[1].product_id")
    );
    assert_eq!(
        detail_field(normalise(&[item(1, 0)]).unwrap_err()).as_deref(),
        Some("items[0].quantity")
    );
    let huge = normalise(&[item(1, i32::MAX), item(1, 1)]).unwrap_err();
    assert_eq!(detail_field(huge).as_deref(), Some("items"));
}

#[test]
fn order_uids_are_checked() {
    assert!(check_order_uid("a").is_ok());
    assert!(check_order_uid(&"u".repeat(64)).is_ok());
    for bad in ["", "  ", "a\u{0}b", "a\nb"] {
        assert!(check_order_uid(bad).is_err(), "{bad:?}");
    }
    assert!(check_order_uid(&"é".repeat(65)).is_err());
}

#[test]
fn hold_is_all_or_nothing_and_names_every_problem() {
    let mut r = rows(&[(1, 5), (2, 1), (3, 0)]);
    let before = r.clone();
    let err = hold(&mut r, &[item(1, 2), item(2, 2), item(3, 1)]).unwrap_err();
    match err {
        StockError::OutOfStock(short) => assert_eq!(
            short,
            vec![
                Shortage {
                    product_id: 2,
                    requested: 2,
                    available: 1
                },
                Shortage {
                    product_id: 3,
                    requested: 1,
                    available: 0
                }
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(r, before, "nothing moved");
    let api = ApiError::from(hold(&mut r, &[item(2, 2), item(3, 1)]).expect_err("short"));
    assert_eq!(api.status, StatusCode::CONFLICT);
    assert_eq!(
        api.body.details.as_deref(),
        Some("product_id=2 requested=2 available=1; product_id=3 requested=1 available=0")
    );
    let missing = hold(&mut r, &[item(1, 1), item(9, 1)]).unwrap_err();
    assert!(matches!(missing, StockError::ProductsNotFound(ref ids) if ids == &[9]));
    assert_eq!(r, before);
    hold(&mut r, &[item(1, 5), item(2, 1)]).expect("enough");
    assert_eq!(r[&1].on_hand, 0);
    assert_eq!(r[&1].reserved, 5);
    assert!(r.values().all(Levels::is_balanced));
}

#[test]
fn selling_a_released_reservation_counts_the_shortfall() {
    let mut r = rows(&[(1, 3), (2, 0)]);
    let short = sell_from_hand(&mut r, &[item(1, 5), item(2, 1)]).expect("sold");
    assert_eq!(short, 3);
    assert_eq!(r[&1].on_hand, 0);
    assert_eq!(r[&1].sold, 3);
    assert_eq!(r[&1].oversold, 2);
    assert_eq!(r[&2].oversold, 1);
    assert!(r.values().all(Levels::is_balanced));
}

#[test]
fn adjustments_keep_stock_within_bounds() {
    let mut l = Levels::new(5);
    adjust(&mut l, 1, -5).expect("to zero");
    assert_eq!((l.on_hand, l.received), (0, 0));
    assert!(matches!(
        adjust(&mut l, 1, -1),
        Err(StockError::Insufficient { on_hand: 0, .. })
    ));
    assert!(matches!(
        adjust(&mut l, 1, i64::MIN),
        Err(StockError::Insufficient { .. })
    ));
    assert!(matches!(
        adjust(&mut l, 1, MAX_STOCK + 1),
        Err(StockError::TooMuch { .. })
    ));
    assert!(matches!(
        adjust(&mut l, 1, i64::MAX),
        Err(StockError::TooMuch { .. })
    ));
    adjust(&mut l, 1, MAX_STOCK).expect("up to the cap");
    assert!(l.is_balanced());
}

fn reservation(uid: &str, status: Status, items: Vec<Item>) -> Reservation {
    let t = now();
    Reservation {
        order_uid: uid.into(),
        status,
        items,
        created_at: t,
        updated_at: t,
    }
}

fn event(uid: &str, outcome: OrderOutcome) -> OrderEvent {
    OrderEvent {
        order_uid: uid.into(),
        order_id: 1,
        outcome,
        reason: None,
        order: None,
    }
}

#[test]
fn events_settle_reservations_once() {
    let mut levels = rows(&[(1, 10)]);
    hold(&mut levels, &[item(1, 2)]).expect("hold a");
    hold(&mut levels, &[item(1, 3)]).expect("hold b");
    let reservations = [
        reservation("a", Status::Held, vec![item(1, 2)]),
        reservation("b", Status::Confirmed, vec![item(1, 3)]),
        reservation("c", Status::Released, vec![item(1, 10)]),
    ]
    .into_iter()
    .map(|r| (r.order_uid.clone(), r))
    .collect();
    let mut w = Working::new(reservations, levels);
    let events = [
        event("a", OrderOutcome::Fulfilled),
        event("b", OrderOutcome::Cancelled),
        event("c", OrderOutcome::Fulfilled),
        event("zzz", OrderOutcome::Fulfilled),
        event("a", OrderOutcome::Fulfilled),
        event("a", OrderOutcome::Cancelled),
    ];
    let tally = apply_events(&mut w, &events, now()).expect("applied");
    assert_eq!(tally.committed, 1);
    assert_eq!(tally.released, 1);
    assert_eq!(tally.sold_after_release, 1);
    assert_eq!(
        tally.oversold_units, 2,
        "10 wanted, 8 on hand after b's release"
    );
    assert_eq!(tally.unknown, 1);
    assert_eq!(tally.unchanged, 1);
    assert_eq!(tally.cancelled_after_commit, vec!["a".to_string()]);
    let l = w.rows[&1];
    assert_eq!((l.on_hand, l.reserved, l.sold, l.oversold), (0, 0, 10, 2));
    assert_eq!(w.changed_reservations().len(), 3);
    // The same message again changes nothing.
    let mut again = Working::new(w.reservations.clone(), w.rows.clone());
    apply_events(&mut again, &events, now()).expect("applied");
    assert!(again.changed_reservations().is_empty());
    assert!(again.changed_rows().expect("balanced").is_empty());
}

#[test]
fn reserve_plans() {
    let items = vec![item(1, 2)];
    assert!(matches!(plan_reserve(None, &items), Ok(ReservePlan::Hold)));
    for (status, hold_again) in [
        (Status::Held, false),
        (Status::Confirmed, false),
        (Status::Committed, false),
        (Status::Released, true),
    ] {
        let r = reservation("u", status, items.clone());
        let plan = plan_reserve(Some(&r), &items).expect("same items");
        assert_eq!(matches!(plan, ReservePlan::Hold), hold_again, "{status:?}");
        let other = plan_reserve(Some(&r), &[item(1, 3)]);
        if status == Status::Released {
            assert!(matches!(other, Ok(ReservePlan::Hold)), "{other:?}");
        } else {
            assert!(
                matches!(other, Err(StockError::Mismatch { .. })),
                "{other:?}"
            );
        }
    }
    let committed = reservation("u", Status::Committed, items);
    assert!(matches!(
        plan_release(&committed),
        Err(StockError::Committed(_))
    ));
}
