//! API keys, known only by their SHA-256: `API_KEYS=<sha256-hex>:admin,<sha256-hex>:service,
//! <sha256-hex>:customer:<customer_id>,…`. A presented `X-API-Key` is hashed and looked up, so the
//! service never holds a key in clear and a leaked configuration gives no key away.

use super::{Principal, Role};
use std::collections::HashMap;
use std::sync::Arc;

/// The configured keys, by the SHA-256 of the key.
#[derive(Clone, Default)]
pub struct ApiKeys(HashMap<[u8; 32], Principal>);

impl ApiKeys {
    /// Parses `API_KEYS`. Errors name the entry by position, never by its text.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for (index, entry) in value.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let position = index + 1;
            let (hash, role) = entry.split_once(':').ok_or_else(|| {
                format!("entry {position}: expected <sha256-hex>:<role>, role admin, service or customer:<id>")
            })?;
            let digest = parse_digest(hash).ok_or_else(|| {
                format!("entry {position}: the hash must be 64 hexadecimal digits (the SHA-256 of the key)")
            })?;
            let role = match role.split_once(':') {
                None if role == "admin" => Role::Admin,
                None if role == "service" => Role::Service,
                Some(("customer", id)) => match id.parse::<i32>() {
                    Ok(id) if id > 0 => Role::Customer(id),
                    _ => {
                        return Err(format!(
                            "entry {position}: the customer id must be a positive integer"
                        ))
                    }
                },
                _ => {
                    return Err(format!(
                        "entry {position}: unknown role; expected admin, service or customer:<id>"
                    ))
                }
            };
            // The hash's first 8 digits name the key in logs and rate-limit buckets: enough to
            // tell keys apart, nothing to guess a key from.
            let name: Arc<str> = format!("key:{}", &hash[..8].to_ascii_lowercase()).into();
            if keys.insert(digest, Principal { role, name }).is_some() {
                return Err(format!("entry {position}: this key is listed twice"));
            }
        }
        Ok(Self(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The principal a presented key stands for.
    pub fn find(&self, presented: &[u8]) -> Option<&Principal> {
        let digest = ring::digest::digest(&ring::digest::SHA256, presented);
        let digest: [u8; 32] = digest.as_ref().try_into().ok()?;
        self.0.get(&digest)
    }
}

/// SHA-256 of `key` as lowercase hex: what goes into `API_KEYS` for it.
pub fn hash_hex(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_hash_with_their_role() {
        let admin = hash_hex("admin-secret");
        let customer = hash_hex("customer-secret").to_uppercase();
        let keys = ApiKeys::parse(&format!(
            " {admin}:admin , {customer}:customer:42,{}:service",
            hash_hex("svc")
        ))
        .expect("valid");
        assert_eq!(
            keys.find(b"admin-secret").map(|p| &p.role),
            Some(&Role::Admin)
        );
        assert_eq!(
            keys.find(b"customer-secret").map(|p| &p.role),
            Some(&Role::Customer(42))
        );
        assert_eq!(keys.find(b"svc").map(|p| &p.role), Some(&Role::Service));
        assert!(keys.find(b"admin-secreT").is_none());
        assert_eq!(
            keys.find(b"admin-secret").map(|p| p.name.to_string()),
            Some(format!("key:{}", &admin[..8]))
        );
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_them() {
        let hash = hash_hex("k");
        for (value, expected) in [
            (hash.clone(), "entry 1: expected"),
            (format!("{}:admin", &hash[..63]), "64 hexadecimal"),
            (format!("{}x:admin", &hash[..63]), "64 hexadecimal"),
            (format!("{hash}:root"), "unknown role"),
            (format!("{hash}:customer:0"), "positive integer"),
            (format!("{hash}:customer:abc"), "positive integer"),
            (
                format!("{hash}:admin,{hash}:service"),
                "entry 2: this key is listed twice",
            ),
        ] {
            let err = ApiKeys::parse(&value).err().unwrap_or_default();
            assert!(err.contains(expected), "{value} -> {err}");
            assert!(!err.contains(&hash[..16]), "{err}");
        }
        assert!(ApiKeys::parse("").expect("empty is valid").is_empty());
    }
}
