//! jsonwebtoken's cryptography on ring.
//!
//! jsonwebtoken 10+ leaves the signature maths to a pluggable `CryptoProvider`; its two built-in
//! ones are aws-lc-rs (a C build this workspace dropped) and RustCrypto (a second crypto stack
//! beside ring, which rustls already uses for AMQP and PostgreSQL). This one covers exactly the
//! algorithms the shop accepts, RS256 and ES256; anything else is refused as unsupported.
//! Signing is here for tests and the demo token script (`scripts/demo-jwt.sh` uses openssl, the
//! tests this).

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, RsaKeyPair, RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256,
};

/// The provider; installed once per process by [`install`].
pub static RING: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes [`RING`] jsonwebtoken's provider for this process (idempotent).
pub fn install() {
    // Err means one is installed already: ours, by an earlier call.
    let _ = RING.install_default();
}

fn unsupported() -> Error {
    ErrorKind::InvalidAlgorithm.into()
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match (algorithm, key.family()) {
        (Algorithm::RS256, AlgorithmFamily::Rsa) | (Algorithm::ES256, AlgorithmFamily::Ec) => {
            Ok(Box::new(RingVerifier {
                algorithm: *algorithm,
                key: key.clone(),
            }))
        }
        (Algorithm::RS256 | Algorithm::ES256, _) => Err(ErrorKind::InvalidKeyFormat.into()),
        _ => Err(unsupported()),
    }
}

struct RingVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let verified = match (self.algorithm, self.key.kind()) {
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, message, sig)
            }
            (Algorithm::RS256, DecodingKeyKind::SecretOrDer(der)) => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der).verify(message, sig)
            }
            // An uncompressed point (0x04 ‖ x ‖ y), as `DecodingKey::from_ec_components` builds.
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(message, sig)
            }
            _ => return Err(signature::Error::new()),
        };
        verified.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    let der = key.as_bytes();
    let signer = match (algorithm, key.family()) {
        (Algorithm::ES256, AlgorithmFamily::Ec) => RingSigner::Ec(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?,
        ),
        (Algorithm::RS256, AlgorithmFamily::Rsa) => RingSigner::Rsa(
            RsaKeyPair::from_pkcs8(der)
                .or_else(|_| RsaKeyPair::from_der(der))
                .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))?,
        ),
        (Algorithm::RS256 | Algorithm::ES256, _) => return Err(ErrorKind::InvalidKeyFormat.into()),
        _ => return Err(unsupported()),
    };
    Ok(Box::new(signer))
}

enum RingSigner {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = SystemRandom::new();
        match self {
            Self::Ec(pair) => pair
                .sign(&rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            Self::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|_| signature::Error::new())?;
                Ok(sig)
            }
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ec(_) => Algorithm::ES256,
            Self::Rsa(_) => Algorithm::RS256,
        }
    }
}
