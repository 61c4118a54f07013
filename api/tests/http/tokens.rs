//! Buyer tokens for the tests: minted here with jsonwebtoken from the test keys in `keys/`
//! (or a secret), never by the gateway under test.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{Api, Reply};

/// A secret long enough for `BUYER_JWT_SECRET`.
pub const SECRET: &str = "test-buyer-secret-0123456789abcdef0123";

pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/http/keys").join(name)
}

pub fn key_pem(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("test key")
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Claims valid for ten minutes for `sub`.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iat": now(), "exp": now() + 600})
}

pub fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign")
}

/// HS256 with `secret`.
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    sign(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret).unwrap())
}

/// A valid HS256 token for `sub` under [`SECRET`].
pub fn token(sub: &str) -> String {
    hs256(SECRET.as_bytes(), &claims(sub))
}

/// Signed with the private key `keys/<name>`, with `kid` if given.
pub fn signed_with(name: &str, algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let pem = key_pem(name);
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("no test key for {other:?}"),
    }
    .expect("test key");
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    sign(&header, claims, &key)
}

/// `header.claims.` with `header` and `claims` as given, base64url: for tokens no library
/// would sign (`alg: none`).
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", base64url(header.to_string().as_bytes()), base64url(claims.to_string().as_bytes()))
}

/// Unpadded base64url (RFC 4648 section 5), as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            text.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    text
}

/// POSTs a purchase with `Authorization: Bearer <token>` (none when `token` is `None`) and
/// `body` as given.
pub async fn buy(api: &Api, event: &str, token: Option<&str>, key: Option<&str>, body: Value) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    api.send(Method::POST, &format!("/v1/events/{event}/purchases"), &headers, Some(&body)).await
}

pub async fn get_order(api: &Api, event: &str, order_id: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    api.send(Method::GET, &format!("/v1/events/{event}/orders/{order_id}"), &headers, None).await
}

/// Asserts the 401 of a refused buyer token.
#[track_caller]
pub fn assert_refused(reply: &Reply, what: &str) {
    assert_eq!(reply.status.as_u16(), 401, "{what}: {reply:?}");
    reply.assert_problem(401, "unauthorized");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#),
        "{what}: {reply:?}"
    );
}
