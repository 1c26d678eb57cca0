//! The catalog domain: what a valid product is, and where products live.

use bytes::Bytes;
use common::ApiError;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI32, Ordering};

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

/// The body of `POST /product`. A `product_id` in the body is ignored: the server assigns ids.
#[derive(Debug, Clone, Deserialize)]
pub struct NewProduct {
    pub sku: String,
    pub manufacturer: String,
    pub category_id: i32,
    pub weight: i32,
    pub some_other_id: i32,
}

impl NewProduct {
    /// Every constraint of the contract's `Product` schema; the error names the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_len("sku", &self.sku, 100)?;
        check_len("manufacturer", &self.manufacturer, 200)?;
        check_min("category_id", self.category_id, 1)?;
        check_min("weight", self.weight, 0)?;
        check_min("some_other_id", self.some_other_id, 1)?;
        Ok(())
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
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

/// A stored product: the value and its JSON, rendered once.
#[derive(Debug, Clone)]
pub struct Stored {
    pub product: Product,
    pub json: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("the catalog is full: no product id left in the int32 range")]
    Full,
}

#[derive(Debug)]
pub struct Catalog {
    products: DashMap<i32, Stored>,
    /// The last id handed out.
    last_id: AtomicI32,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            products: DashMap::new(),
            last_id: AtomicI32::new(0),
        }
    }
}

impl Catalog {
    pub fn get(&self, id: i32) -> Option<Bytes> {
        self.products.get(&id).map(|stored| stored.json.clone())
    }

    pub fn get_product(&self, id: i32) -> Option<Product> {
        self.products.get(&id).map(|stored| stored.product.clone())
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// Stores a validated product under the next id.
    pub fn create(&self, new: NewProduct) -> Result<i32, CatalogError> {
        let id = self
            .last_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                last.checked_add(1)
            })
            .map_err(|_| CatalogError::Full)?
            + 1;
        let product = Product {
            product_id: id,
            sku: new.sku,
            manufacturer: new.manufacturer,
            category_id: new.category_id,
            weight: new.weight,
            some_other_id: new.some_other_id,
        };
        let json = Bytes::from(serde_json::to_vec(&product).unwrap_or_default());
        self.products.insert(id, Stored { product, json });
        Ok(id)
    }

    /// Creates products 1..=n with valid, varied, deterministic fields, so every instance seeded
    /// with the same `n` serves the same catalog.
    pub fn seed(&self, n: u32) {
        const MAKERS: [&str; 8] = [
            "Acme Corporation",
            "Globex",
            "Initech",
            "Umbrella Goods",
            "Stark Industries",
            "Wayne Enterprises",
            "Hooli",
            "Tyrell Supply",
        ];
        for i in 1..=n {
            let i = i as usize;
            let _ = self.create(NewProduct {
                sku: format!("SKU{:07}", i % 10_000_000),
                manufacturer: MAKERS[i % MAKERS.len()].to_string(),
                category_id: (i % 50 + 1) as i32,
                weight: ((i * 37) % 5000) as i32,
                some_other_id: (i % 1000 + 1) as i32,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> NewProduct {
        NewProduct {
            sku: "ABC123XYZ0".into(),
            manufacturer: "Acme".into(),
            category_id: 1,
            weight: 0,
            some_other_id: 1,
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(valid().validate().is_ok());
        let mut p = valid();
        p.sku = "x".repeat(101);
        assert_eq!(
            p.validate().unwrap_err().body.details.as_deref(),
            Some("sku")
        );
        let mut p = valid();
        p.weight = -1;
        assert_eq!(
            p.validate().unwrap_err().body.details.as_deref(),
            Some("weight")
        );
        let mut p = valid();
        p.manufacturer = String::new();
        assert_eq!(
            p.validate().unwrap_err().body.details.as_deref(),
            Some("manufacturer")
        );
    }

    #[test]
    fn ids_start_at_one_and_the_seed_is_deterministic() {
        let a = Catalog::default();
        a.seed(20);
        let b = Catalog::default();
        b.seed(20);
        assert_eq!(a.len(), 20);
        assert_eq!(a.get(7), b.get(7));
        assert_eq!(a.create(valid()), Ok(21));
        for id in 1..=20 {
            let p = a.get_product(id).expect("seeded");
            assert!(NewProduct {
                sku: p.sku,
                manufacturer: p.manufacturer,
                category_id: p.category_id,
                weight: p.weight,
                some_other_id: p.some_other_id
            }
            .validate()
            .is_ok());
        }
    }

    #[test]
    fn a_full_catalog_refuses_instead_of_wrapping() {
        let c = Catalog::default();
        c.last_id.store(i32::MAX, Ordering::SeqCst);
        assert_eq!(c.create(valid()), Err(CatalogError::Full));
    }
}
