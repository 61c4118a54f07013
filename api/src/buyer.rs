//! Buyer identity: who is buying, as the merchant vouches for it.
//!
//! With `BUYER_AUTH=jwt` the buyer routes take the [`crate::extract::Buyer`] extractor: `Authorization:
//! Bearer <JWT>` (RFC 7519), verified with [`jsonwebtoken`] against the configured keys
//! ([`BuyerKeys`]), and the buyer is the token's `sub`. With `BUYER_AUTH=none` the extractor
//! yields nothing and the body's `user_id` is trusted (a proxy in front authenticates).
//!
//! What is refused, each a `401 unauthorized` with `WWW-Authenticate: Bearer
//! error="invalid_token"`:
//! - no token, or not three base64url parts of JSON; `alg: none` (not an algorithm here);
//! - an algorithm other than the one its key was configured for: every key has exactly one
//!   (HS256 for `BUYER_JWT_SECRET`, RS256, ES256 or EdDSA by the public key's type), so an
//!   HS256 token "signed" with a public key (algorithm confusion) is checked against the
//!   secret, or against nothing, never against that key;
//! - a signature no configured key verifies; a `kid` no key has (when no key without a `kid`
//!   has the token's algorithm either);
//! - a token without `exp` or `sub`, expired, or not yet valid (`nbf`), with 30 s of leeway for
//!   clocks; the wrong `iss` or `aud` when `BUYER_JWT_ISSUER` / `BUYER_JWT_AUDIENCE` are set;
//! - a `sub` that is not a valid user id (`shared::UserId::parse`).
//!
//! Every token is verified before anything else about the request is looked at, the local
//! sold-out flag included: that flag's answer depends on the buyer's idempotency scope (a
//! replay gets its order back), so answering before verification would tell a forger, by
//! `409` against `401` or by the time taken, whether the buyer named in a forged token has an
//! order. HS256 verification costs about a microsecond (see the README's Performance).

use std::path::Path;

use flashsale_shared::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Config, JwtSecret};
use crate::error::TokenError;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Longest token looked at: real ones are a few hundred bytes, and a bound keeps a forger
/// from making the gateway decode megabytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why jsonwebtoken refused a token, as the problem's detail names it.
fn token_error(error: &jsonwebtoken::errors::Error) -> TokenError {
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::InvalidKeyFormat => {
            TokenError::UnknownKey
        }
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
        _ => TokenError::Malformed,
    }
}

/// One verification key: its algorithm (the only one it accepts) and `kid`, if any.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// The keys buyer tokens are verified with, from `BUYER_JWT_SECRET` and `BUYER_JWT_KEYS`.
pub struct BuyerKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for BuyerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<_> = self.keys.iter().map(|k| (k.algorithm, k.kid.as_deref())).collect();
        f.debug_struct("BuyerKeys").field("keys", &keys).finish()
    }
}

/// The claims the gateway reads; `exp`, `nbf`, `iss` and `aud` are checked by
/// [`jsonwebtoken`]'s validation.
#[derive(Debug, Deserialize)]
struct Claims {
    /// Optional here so that a token without one is refused as such (validation requires it).
    sub: Option<String>,
}

impl BuyerKeys {
    /// The configured keys, or `None` when none is. Errors name the setting and say what is
    /// wrong, never the secret or a key's bytes.
    pub fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.buyer_jwt_secret {
            keys.push((None, Algorithm::HS256, secret_key(secret)?));
        }
        if let Some(path) = &config.buyer_jwt_keys {
            keys.extend(
                read_keys(path).map_err(|why| format!("BUYER_JWT_KEYS ({}): {why}", path.display()))?,
            );
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let (issuer, audience) = (config.buyer_jwt_issuer.as_deref(), config.buyer_jwt_audience.as_deref());
        let keys = keys
            .into_iter()
            .map(|(kid, algorithm, key)| Key {
                kid,
                algorithm,
                key,
                validation: validation(algorithm, issuer, audience),
            })
            .collect();
        Ok(Some(Self { keys }))
    }

    /// The buyer a token names, once a configured key verified it and its claims hold.
    ///
    /// The token's header picks the candidates: keys of its algorithm whose `kid` is the
    /// token's, then keys of its algorithm without a `kid`. Each candidate's validation
    /// accepts its own algorithm only.
    pub fn verify(&self, token: &str) -> Result<UserId, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        // An `alg` outside jsonwebtoken's set (`none`, say) fails here, as malformed.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.as_deref();
        let by_kid = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg && kid.is_some() && k.kid.as_deref() == kid);
        let kidless = self.keys.iter().filter(|k| k.algorithm == header.alg && k.kid.is_none());
        let mut refused = TokenError::UnknownKey;
        for key in by_kid.chain(kidless) {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => {
                    let sub = data.claims.sub.ok_or(TokenError::MissingClaim)?;
                    return UserId::parse(sub).map_err(|_| TokenError::Subject);
                }
                Err(error) => match token_error(&error) {
                    // The signature was good: the claims are what is wrong, whatever other
                    // keys would say.
                    TokenError::Signature | TokenError::UnknownKey => refused = TokenError::Signature,
                    other => return Err(other),
                },
            }
        }
        Err(refused)
    }
}

fn validation(algorithm: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn secret_key(secret: &JwtSecret) -> Result<DecodingKey, String> {
    DecodingKey::from_secret(secret.as_bytes())
        .map_err(|_| "BUYER_JWT_SECRET is not a usable HS256 key".into())
}

type KeyEntry = (Option<String>, Algorithm, DecodingKey);

/// A JWKS (`{"keys": [...]}`) or PEM public keys, told apart by the first character.
fn read_keys(path: &Path) -> Result<Vec<KeyEntry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let keys = if text.trim_start().starts_with('{') { jwks_keys(&text)? } else { pem_keys(&text)? };
    if keys.is_empty() {
        return Err("holds no public key".into());
    }
    Ok(keys)
}

fn jwks_keys(text: &str) -> Result<Vec<KeyEntry>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS ({{\"keys\": [...]}}): {e}"))?;
    // jsonwebtoken reads the public parameters only; a private key here is a mistake to stop.
    let private = value["keys"].as_array().into_iter().flatten().position(|key| key.get("d").is_some());
    if let Some(n) = private {
        return Err(format!("key {} holds a private key: the gateway needs only the public one", n + 1));
    }
    let set: JwkSet =
        serde_json::from_value(value).map_err(|e| format!("not a JWKS ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = Vec::new();
    for (n, jwk) in set.keys.iter().enumerate() {
        let name =
            jwk.common.key_id.clone().map_or_else(|| format!("key {}", n + 1), |kid| format!("key {kid:?}"));
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (AlgorithmParameters::OctetKeyPair(okp), None | Some(KeyAlgorithm::EdDSA))
                if okp.curve == EllipticCurve::Ed25519 =>
            {
                Algorithm::EdDSA
            }
            (AlgorithmParameters::OctetKey(_), _) => {
                return Err(format!(
                    "{name} is a symmetric key: an HS256 secret belongs in BUYER_JWT_SECRET"
                ));
            }
            _ => {
                return Err(format!(
                    "{name}: only RS256 (RSA), ES256 (P-256) and EdDSA (Ed25519) keys are accepted"
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{name} is not a usable key: {e}"))?;
        keys.push((jwk.common.key_id.clone(), algorithm, key));
    }
    Ok(keys)
}

/// Every PEM block of the file; each is an RSA, EC (P-256) or Ed25519 public key, whose type
/// gives its algorithm.
fn pem_keys(text: &str) -> Result<Vec<KeyEntry>, String> {
    let mut keys = Vec::new();
    for (n, block) in text.split("-----BEGIN ").skip(1).enumerate() {
        let block = format!("-----BEGIN {block}");
        if block.starts_with("-----BEGIN ENCRYPTED") || block.contains(" PRIVATE KEY-----") {
            return Err(format!("PEM block {} is a private key: the gateway needs only public keys", n + 1));
        }
        let bytes = block.as_bytes();
        let key = DecodingKey::from_rsa_pem(bytes)
            .map(|k| (Algorithm::RS256, k))
            .or_else(|_| DecodingKey::from_ec_pem(bytes).map(|k| (Algorithm::ES256, k)))
            .or_else(|_| DecodingKey::from_ed_pem(bytes).map(|k| (Algorithm::EdDSA, k)))
            .map_err(|_| format!("PEM block {} is not an RSA, EC or Ed25519 public key", n + 1))?;
        keys.push((None, key.0, key.1));
    }
    if keys.is_empty() && !text.trim().is_empty() {
        return Err("is neither a JWKS nor PEM".into());
    }
    Ok(keys)
}

/// What `flashsale-api token` puts in a token.
#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// A signed buyer token for `sub`, valid for `ttl` from now, with the configured issuer and
/// audience: HS256 with the secret, or signed with the private key PEM `private_pem` (RS256,
/// ES256 or EdDSA by its type). For operators' tests; the merchant's login mints the real ones.
pub fn mint(
    config: &Config,
    sub: &str,
    ttl: std::time::Duration,
    private_pem: Option<&[u8]>,
    kid: Option<&str>,
) -> Result<String, String> {
    UserId::parse(sub).map_err(|e| format!("--sub: {}", e.reason))?;
    let (algorithm, key) = match (private_pem, &config.buyer_jwt_secret) {
        (Some(pem), _) => EncodingKey::from_rsa_pem(pem)
            .map(|k| (Algorithm::RS256, k))
            .or_else(|_| EncodingKey::from_ec_pem(pem).map(|k| (Algorithm::ES256, k)))
            .or_else(|_| EncodingKey::from_ed_pem(pem).map(|k| (Algorithm::EdDSA, k)))
            .map_err(|_| "--key is not an RSA, EC P-256 or Ed25519 private key PEM".to_owned())?,
        (None, Some(secret)) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes())
                .map_err(|_| "BUYER_JWT_SECRET is not a usable key")?,
        ),
        (None, None) => return Err("needs BUYER_JWT_SECRET, or --key with a private key PEM".into()),
    };
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintedClaims {
        sub,
        iat: now,
        exp: now + ttl.as_secs(),
        iss: config.buyer_jwt_issuer.as_deref(),
        aud: config.buyer_jwt_audience.as_deref(),
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("cannot sign: {e}"))
}
