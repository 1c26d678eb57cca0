//! A token issuer for tests: a fresh ES256 (P-256) key, its JWKS, and tokens signed with it —
//! valid ones and the forgeries a verifier must refuse.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "shop-test";

pub struct TestIssuer {
    pub kid: String,
    pkcs8: Vec<u8>,
    x: String,
    y: String,
}

impl TestIssuer {
    pub fn new(kid: &str) -> Self {
        super::ring_provider::install();
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("a P-256 key")
            .as_ref()
            .to_vec();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .expect("the key just made");
        // An uncompressed point: 0x04 ‖ x ‖ y.
        let point = pair.public_key().as_ref();
        Self {
            kid: kid.to_string(),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..65]),
            pkcs8,
        }
    }

    /// This issuer's public key as a JWKS document.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk()]})
    }

    pub fn jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
               "kid": self.kid, "x": self.x, "y": self.y})
    }

    /// Claims a verifier configured with [`ISSUER`] and [`AUDIENCE`] accepts, valid `ttl` seconds
    /// from now (negative: expired that long ago).
    pub fn claims(subject: &str, ttl: i64) -> Value {
        let now = now();
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + ttl})
    }

    /// `claims` signed with this issuer's key, naming its key id.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .expect("signing")
    }

    /// A customer's token, valid for an hour.
    pub fn customer_token(&self, customer_id: i32) -> String {
        let mut claims = Self::claims(&format!("user-{customer_id}"), 3600);
        claims["customer_id"] = json!(customer_id);
        self.sign(&claims)
    }

    /// An administrator's token, valid for an hour.
    pub fn admin_token(&self) -> String {
        let mut claims = Self::claims("ops", 3600);
        claims["role"] = json!("admin");
        self.sign(&claims)
    }
}

/// `{"alg":"none"}` with `claims` and an empty signature: the classic forgery.
pub fn unsigned_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// HS256 over `claims` with `secret` (what an attacker tries with the public key as the secret).
pub fn hs256_token(claims: &Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
