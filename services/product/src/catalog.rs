//! The catalog domain: what a valid product is, and the deterministic demo products of
//! `SEED_PRODUCTS`. Where products live is [`crate::store`]'s business.

use bytes::Bytes;
use common::ApiError;
use serde::{Deserialize, Serialize};

/// A product as the contract describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    pub product_id: i32,
    pub sku: String,
    pub manufacturer: String,
    pub category_id: i32,
    pub weight: i32,
    pub some_other_id: i32,
}

impl Product {
    pub fn new(product_id: i32, new: NewProduct) -> Self {
        Self {
            product_id,
            sku: new.sku,
            manufacturer: new.manufacturer,
            category_id: new.category_id,
            weight: new.weight,
            some_other_id: new.some_other_id,
        }
    }

    /// The JSON a `GET` answers, rendered once per stored (or cached) product. Every store renders
    /// it here, so both stores answer the same bytes for the same product.
    pub fn to_json(&self) -> Bytes {
        // Serialising plain strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// The body of `POST /product`. A `product_id` in the body is ignored: the server assigns ids.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NewProduct {
    pub sku: String,
    pub manufacturer: String,
    pub category_id: i32,
    pub weight: i32,
    pub some_other_id: i32,
    /// The product's initial stock; absent (or null) means `SEED_STOCK`. Not part of the
    /// product's JSON: stock changes, the catalog entry does not.
    #[serde(default)]
    pub quantity_on_hand: Option<i64>,
}

impl NewProduct {
    /// Every constraint of the contract's `Product` schema; the error names the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_text("sku", &self.sku, 100)?;
        check_text("manufacturer", &self.manufacturer, 200)?;
        check_min("category_id", self.category_id, 1)?;
        check_min("weight", self.weight, 0)?;
        check_min("some_other_id", self.some_other_id, 1)?;
        if let Some(stock) = self.quantity_on_hand {
            crate::stock::check_initial_stock(stock)
                .map_err(|problem| ApiError::invalid_field("quantity_on_hand", problem))?;
        }
        Ok(())
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let len = value.chars().count();
    if len == 0 {
        return Err(ApiError::invalid_field(field, "must not be empty"));
    }
    if len > max {
        return Err(ApiError::invalid_field(
            field,
            format!("must be at most {max} characters, got {len}"),
        ));
    }
    // PostgreSQL text cannot hold U+0000; refusing it in every store keeps them answering alike.
    if value.contains('\0') {
        return Err(ApiError::invalid_field(
            field,
            "must not contain the NUL character",
        ));
    }
    Ok(())
}

fn check_min(field: &str, value: i32, min: i32) -> Result<(), ApiError> {
    if value < min {
        return Err(ApiError::invalid_field(
            field,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(())
}

/// The manufacturers of the seeded products. The PostgreSQL seed binds this very list, so both
/// stores seed the same catalog.
pub const SEED_MAKERS: [&str; 8] = [
    "Acme Corporation",
    "Globex",
    "Initech",
    "Umbrella Goods",
    "Stark Industries",
    "Wayne Enterprises",
    "Hooli",
    "Tyrell Supply",
];

/// Seeded product `i` (ids 1..=N): valid, varied and deterministic, so every instance seeded with
/// the same N serves the same catalog. `store::postgres` computes the same fields in SQL.
pub fn seed_product(i: u32) -> NewProduct {
    let i = i as usize;
    NewProduct {
        sku: format!("SKU{:07}", i % 10_000_000),
        manufacturer: SEED_MAKERS[i % SEED_MAKERS.len()].to_string(),
        category_id: (i % 50 + 1) as i32,
        weight: ((i * 37) % 5000) as i32,
        some_other_id: (i % 1000 + 1) as i32,
        quantity_on_hand: None,
    }
}

/// A product every rule accepts, for the unit tests of this crate.
#[cfg(test)]
pub(crate) fn valid_new_product() -> NewProduct {
    NewProduct {
        sku: "ABC123XYZ0".into(),
        manufacturer: "Acme".into(),
        category_id: 1,
        weight: 0,
        some_other_id: 1,
        quantity_on_hand: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> NewProduct {
        valid_new_product()
    }

    fn failing_field(p: &NewProduct) -> Option<String> {
        p.validate().err().and_then(|e| e.body.details)
    }

    #[test]
    fn validation_names_the_field() {
        assert!(valid().validate().is_ok());
        let mut p = valid();
        p.sku = "x".repeat(101);
        assert_eq!(failing_field(&p).as_deref(), Some("sku"));
        let mut p = valid();
        p.weight = -1;
        assert_eq!(failing_field(&p).as_deref(), Some("weight"));
        let mut p = valid();
        p.manufacturer = String::new();
        assert_eq!(failing_field(&p).as_deref(), Some("manufacturer"));
        let mut p = valid();
        p.manufacturer = "Ac\0me".into();
        assert_eq!(failing_field(&p).as_deref(), Some("manufacturer"));
        let mut p = valid();
        p.quantity_on_hand = Some(-1);
        assert_eq!(failing_field(&p).as_deref(), Some("quantity_on_hand"));
        p.quantity_on_hand = Some(crate::stock::MAX_STOCK + 1);
        assert_eq!(failing_field(&p).as_deref(), Some("quantity_on_hand"));
        p.quantity_on_hand = Some(0);
        assert!(p.validate().is_ok());
    }

    #[test]
    fn seeded_products_are_valid_and_deterministic() {
        for i in [1, 2, 7, 49, 50, 999, 1000, 5_000_000] {
            assert!(seed_product(i).validate().is_ok(), "{i}");
            assert_eq!(seed_product(i), seed_product(i));
        }
        assert_eq!(seed_product(7).sku, "SKU0000007");
        assert_ne!(seed_product(1), seed_product(2));
    }
}
