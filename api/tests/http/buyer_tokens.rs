//! Buyer tokens (`BUYER_AUTH=jwt`), tried as an attacker would: the identity is the verified
//! token's `sub` and nothing else.

use std::time::Duration;

use flashsale_api::config::JwtSecret;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app_with};
use crate::tokens::{
    SECRET, assert_refused, buy, claims, get_order, hs256, key_path, key_pem, now, signed_with, token,
    unsigned,
};

/// A gateway taking HS256 tokens signed with [`SECRET`].
async fn with_secret(adjust: impl FnOnce(&mut flashsale_api::config::Config)) -> TestApp {
    spawn_app_with(|c| {
        c.buyer_jwt_secret = Some(JwtSecret::parse(SECRET).unwrap());
        adjust(c);
    })
    .await
}

#[tokio::test]
async fn purchases_and_order_polls_need_a_valid_buyer_token() {
    let app = with_secret(|_| {}).await;
    app.api.create_event("drop", 10, 1).await;
    let body = json!({"quantity": 1});

    assert_refused(&buy(&app.api, "drop", None, None, body.clone()).await, "no token");
    for garbage in ["", "abc", "a.b.c", "Zm9v.YmFy.YmF6"] {
        assert_refused(&buy(&app.api, "drop", Some(garbage), None, body.clone()).await, garbage);
    }
    let forged = hs256(b"another-secret-of-the-right-length-000", &claims("alice"));
    assert_refused(&buy(&app.api, "drop", Some(&forged), None, body.clone()).await, "forged signature");
    // A valid token whose signature was tampered with (its claims changed).
    let valid = token("alice");
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let tampered = format!("{head}.{}.{signature}", token("mallory").split('.').nth(1).unwrap());
    assert_refused(&buy(&app.api, "drop", Some(&tampered), None, body.clone()).await, "tampered claims");
    // Not a buyer id.
    let bad_sub = hs256(SECRET.as_bytes(), &claims("alice bob!"));
    assert_refused(&buy(&app.api, "drop", Some(&bad_sub), None, body.clone()).await, "invalid sub");
    let no_sub = hs256(SECRET.as_bytes(), &json!({"exp": now() + 600}));
    assert_refused(&buy(&app.api, "drop", Some(&no_sub), None, body.clone()).await, "no sub");

    // Nothing refused changed anything; the valid token buys, as its `sub`.
    assert_eq!(app.api.get_event("drop").await.body["remaining"], 10);
    let bought = buy(&app.api, "drop", Some(&valid), None, body).await;
    assert_eq!(bought.status, StatusCode::ACCEPTED, "{bought:?}");
    assert_eq!(bought.body["user_id"], "alice");
    let order_id = bought.body["order_id"].as_str().unwrap();
    assert_refused(&get_order(&app.api, "drop", order_id, None).await, "poll without a token");
    assert_refused(&get_order(&app.api, "drop", order_id, Some(&forged)).await, "poll with a forged token");
    assert_eq!(get_order(&app.api, "drop", order_id, Some(&valid)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn expiry_and_not_before_are_honoured_with_thirty_seconds_of_leeway() {
    let app = with_secret(|_| {}).await;
    app.api.create_event("drop", 10, 1).await;
    let at = |sub: &str, exp: i64, nbf: Option<i64>| {
        let mut claims = json!({"sub": sub, "exp": exp});
        if let Some(nbf) = nbf {
            claims["nbf"] = json!(nbf);
        }
        hs256(SECRET.as_bytes(), &claims)
    };
    let t = now();
    for (what, token) in [
        ("expired a minute ago", at("a", t - 60, None)),
        ("not before two minutes from now", at("b", t + 600, Some(t + 120))),
        ("no exp", hs256(SECRET.as_bytes(), &json!({"sub": "c"}))),
    ] {
        assert_refused(&buy(&app.api, "drop", Some(&token), None, json!({})).await, what);
    }
    for (what, sub, token) in [
        ("expired ten seconds ago: within the leeway", "d", at("d", t - 10, None)),
        ("not before in ten seconds: within the leeway", "e", at("e", t + 600, Some(t + 10))),
    ] {
        let reply = buy(&app.api, "drop", Some(&token), None, json!({})).await;
        assert_eq!(
            (reply.status, reply.body["user_id"].as_str()),
            (StatusCode::ACCEPTED, Some(sub)),
            "{what}"
        );
    }
}

#[tokio::test]
async fn alg_none_algorithm_confusion_and_a_wrong_key_are_refused() {
    // RSA public key and a secret, both configured: an HS256 token "signed" with the public
    // key's bytes must be checked against the secret only.
    let app = with_secret(|c| c.buyer_jwt_keys = Some(key_path("rsa.pub.pem"))).await;
    app.api.create_event("drop", 10, 1).await;
    let none = unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims("mallory"));
    assert_refused(&buy(&app.api, "drop", Some(&none), None, json!({})).await, "alg none");
    let none_upper = unsigned(&json!({"alg": "None"}), &claims("mallory"));
    assert_refused(&buy(&app.api, "drop", Some(&none_upper), None, json!({})).await, "alg None");
    let confused = hs256(&key_pem("rsa.pub.pem"), &claims("mallory"));
    assert_refused(
        &buy(&app.api, "drop", Some(&confused), None, json!({})).await,
        "HS256 with the public key",
    );
    let wrong_key = signed_with("other-rsa.pem", Algorithm::RS256, None, &claims("mallory"));
    assert_refused(&buy(&app.api, "drop", Some(&wrong_key), None, json!({})).await, "an unknown RSA key");
    // An RS256 signature relabelled as another RSA algorithm.
    let rs256 = signed_with("rsa.pem", Algorithm::RS256, None, &claims("mallory"));
    let relabelled = format!(
        "{}.{}",
        unsigned(&json!({"alg": "RS512", "typ": "JWT"}), &claims("mallory")).trim_end_matches('.'),
        rs256.rsplit('.').next().unwrap()
    );
    assert_refused(&buy(&app.api, "drop", Some(&relabelled), None, json!({})).await, "RS512 label");
    assert_eq!(app.api.get_event("drop").await.body["remaining"], 10, "nothing refused changed anything");

    let rsa = signed_with("rsa.pem", Algorithm::RS256, None, &claims("alice"));
    assert_eq!(buy(&app.api, "drop", Some(&rsa), None, json!({})).await.status, StatusCode::ACCEPTED);
    let hs = token("bob");
    assert_eq!(buy(&app.api, "drop", Some(&hs), None, json!({})).await.status, StatusCode::ACCEPTED);

    // Only an asymmetric key configured: HS256 is not accepted at all.
    let keys_only = spawn_app_with(|c| c.buyer_jwt_keys = Some(key_path("rsa.pub.pem"))).await;
    keys_only.api.create_event("drop", 10, 1).await;
    assert_refused(&buy(&keys_only.api, "drop", Some(&confused), None, json!({})).await, "HS256, no secret");
}

/// A JWKS of the three public test keys, with `kid`s `rsa-1`, `ec-1`, `ed-1`.
fn jwks_file() -> tempfile::NamedTempFile {
    use jsonwebtoken::DecodingKey;
    let keys = [
        ("rsa-1", Algorithm::RS256, DecodingKey::from_rsa_pem(&key_pem("rsa.pub.pem")).unwrap()),
        ("ec-1", Algorithm::ES256, DecodingKey::from_ec_pem(&key_pem("ec.pub.pem")).unwrap()),
        ("ed-1", Algorithm::EdDSA, DecodingKey::from_ed_pem(&key_pem("ed.pub.pem")).unwrap()),
    ];
    let set = JwkSet {
        keys: keys
            .into_iter()
            .map(|(kid, alg, key)| {
                let mut jwk: Jwk = Jwk::from_decoding_key(&key, Some(alg)).unwrap();
                jwk.common.key_id = Some(kid.to_owned());
                jwk
            })
            .collect(),
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&set).unwrap()).unwrap();
    file
}

#[tokio::test]
async fn rs256_es256_and_eddsa_keys_from_a_jwks_are_chosen_by_kid() {
    let jwks = jwks_file();
    let path = jwks.path().to_owned();
    let app = spawn_app_with(|c| c.buyer_jwt_keys = Some(path)).await;
    app.api.create_event("drop", 10, 1).await;
    for (n, (key, alg, kid)) in [
        ("rsa.pem", Algorithm::RS256, "rsa-1"),
        ("ec.pem", Algorithm::ES256, "ec-1"),
        ("ed.pem", Algorithm::EdDSA, "ed-1"),
    ]
    .into_iter()
    .enumerate()
    {
        let sub = format!("buyer-{n}");
        let good = signed_with(key, alg, Some(kid), &claims(&sub));
        let reply = buy(&app.api, "drop", Some(&good), None, json!({})).await;
        assert_eq!(
            (reply.status, reply.body["user_id"].as_str()),
            (StatusCode::ACCEPTED, Some(&*sub)),
            "{kid}"
        );
        let unknown_kid = signed_with(key, alg, Some("retired-key"), &claims(&sub));
        assert_refused(&buy(&app.api, "drop", Some(&unknown_kid), None, json!({})).await, "unknown kid");
    }
    // A kid naming a key of another type: that key accepts only its own algorithm.
    let ec_as_rsa = signed_with("ec.pem", Algorithm::ES256, Some("rsa-1"), &claims("mallory"));
    assert_refused(&buy(&app.api, "drop", Some(&ec_as_rsa), None, json!({})).await, "ES256 under an RSA kid");
    let unknown = signed_with("other-rsa.pem", Algorithm::RS256, Some("rsa-1"), &claims("mallory"));
    assert_refused(&buy(&app.api, "drop", Some(&unknown), None, json!({})).await, "another key under rsa-1");

    // PEM files work too: one key per block, its type giving its algorithm.
    let both = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(both.path(), [key_pem("ec.pub.pem"), key_pem("ed.pub.pem")].concat()).unwrap();
    let path = both.path().to_owned();
    let pem = spawn_app_with(|c| c.buyer_jwt_keys = Some(path)).await;
    pem.api.create_event("drop", 10, 1).await;
    for (key, alg) in [("ec.pem", Algorithm::ES256), ("ed.pem", Algorithm::EdDSA)] {
        let token = signed_with(key, alg, None, &claims(&format!("carol-{key}")));
        let reply = buy(&pem.api, "drop", Some(&token), None, json!({})).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{key}: {reply:?}");
    }
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_set() {
    let app = with_secret(|c| {
        c.buyer_jwt_issuer = Some("https://login.shop.example".into());
        c.buyer_jwt_audience = Some("flashsale".into());
    })
    .await;
    app.api.create_event("drop", 10, 1).await;
    let with = |iss: Option<&str>, aud: Option<serde_json::Value>| {
        let mut claims = claims("alice");
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            claims["aud"] = aud;
        }
        hs256(SECRET.as_bytes(), &claims)
    };
    let iss = Some("https://login.shop.example");
    for (what, token) in [
        ("wrong issuer", with(Some("https://evil.example"), Some(json!("flashsale")))),
        ("no issuer", with(None, Some(json!("flashsale")))),
        ("wrong audience", with(iss, Some(json!("another-service")))),
        ("no audience", with(iss, None)),
    ] {
        assert_refused(&buy(&app.api, "drop", Some(&token), None, json!({})).await, what);
    }
    let good = with(iss, Some(json!(["another-service", "flashsale"])));
    assert_eq!(buy(&app.api, "drop", Some(&good), None, json!({})).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_user_id_in_the_body_must_be_the_token_subject() {
    let app = with_secret(|_| {}).await;
    app.api.create_event("drop", 10, 2).await;
    let alice = token("alice");
    let posing = buy(&app.api, "drop", Some(&alice), None, json!({"user_id": "victim", "quantity": 1})).await;
    posing.assert_problem(403, "user_mismatch");
    assert_eq!(app.api.get_event("drop").await.body["remaining"], 10, "nothing bought for the victim");
    let own = buy(&app.api, "drop", Some(&alice), None, json!({"user_id": "alice", "quantity": 1})).await;
    assert_eq!((own.status, own.body["user_id"].as_str()), (StatusCode::ACCEPTED, Some("alice")));
    // The body's user_id and none at all name the same scope: this is a replay.
    let again = buy(&app.api, "drop", Some(&alice), None, json!({"quantity": 1})).await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(again.body["order_id"], own.body["order_id"]);
}

#[tokio::test]
async fn an_order_is_visible_only_to_its_buyer() {
    let app = with_secret(|_| {}).await;
    app.api.create_event("drop", 10, 2).await;
    let (alice, bob) = (token("alice"), token("bob"));
    let placed = buy(&app.api, "drop", Some(&alice), Some("checkout-1"), json!({"quantity": 1})).await;
    assert_eq!(placed.status, StatusCode::ACCEPTED);
    let order_id = placed.body["order_id"].as_str().unwrap().to_owned();

    get_order(&app.api, "drop", &order_id, Some(&bob)).await.assert_problem(404, "order_not_found");
    let own = get_order(&app.api, "drop", &order_id, Some(&alice)).await;
    assert_eq!((own.status, own.body["order_id"].as_str()), (StatusCode::OK, Some(&*order_id)));

    // Bob reusing Alice's key with another payload is his own scope: a new order of his, not
    // a mismatch naming hers; and nothing he gets back carries her order id.
    let replies = [
        buy(&app.api, "drop", Some(&bob), Some("checkout-1"), json!({"quantity": 2})).await,
        buy(&app.api, "drop", Some(&bob), Some("checkout-1"), json!({"quantity": 1})).await,
        buy(&app.api, "drop", Some(&bob), Some("checkout-1"), json!({"user_id": "alice", "quantity": 1}))
            .await,
    ];
    assert_eq!(replies[0].status, StatusCode::ACCEPTED, "{:?}", replies[0]);
    assert_eq!(replies[0].body["user_id"], "bob");
    replies[1].assert_problem(422, "idempotency_key_mismatch");
    assert_eq!(replies[1].body["order_id"], replies[0].body["order_id"], "his own order");
    replies[2].assert_problem(403, "user_mismatch");
    for reply in &replies {
        assert!(!reply.text.contains(&order_id), "Alice's order id leaked to Bob: {reply:?}");
    }
}

#[tokio::test]
async fn without_a_key_the_body_names_the_buyer_as_before() {
    let app = spawn_app_with(|_| {}).await;
    app.api.create_event("drop", 10, 1).await;
    // A token is ignored; user_id is required.
    let reply = buy(&app.api, "drop", Some("not-even-a-jwt"), None, json!({"user_id": "alice"})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    buy(&app.api, "drop", None, None, json!({"quantity": 1})).await.assert_problem(422, "invalid_fields");
    let order_id = reply.body["order_id"].as_str().unwrap();
    assert_eq!(get_order(&app.api, "drop", order_id, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_document_names_a_security_scheme_on_every_route() {
    for (mode, app) in [("jwt", with_secret(|_| {}).await), ("none", spawn_app_with(|_| {}).await)] {
        let doc = app.api.send(reqwest::Method::GET, "/openapi.json", &[], None).await.body;
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["buyer_token"]["scheme"], "bearer", "{mode}: {schemes}");
        assert_eq!(schemes["buyer_token"]["bearerFormat"], "JWT", "{mode}: {schemes}");
        assert_eq!(schemes["admin_token"]["scheme"], "bearer", "{mode}: {schemes}");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                assert!(operation["security"].is_array(), "{mode}: {method} {path} declares no security");
            }
        }
        let purchase = &doc["paths"]["/v1/events/{event_id}/purchases"]["post"];
        let expected = if mode == "jwt" { json!([{"buyer_token": []}]) } else { json!([{}]) };
        assert_eq!(purchase["security"], expected, "{mode}");
        assert_eq!(
            doc["paths"]["/v1/events/{event_id}/orders/{order_id}"]["get"]["security"], expected,
            "{mode}"
        );
        for status in ["401", "403", "429"] {
            assert!(purchase["responses"][status].is_object(), "{mode}: purchase {status} undocumented");
        }
    }
}

#[tokio::test]
async fn the_token_command_prints_a_token_the_gateway_accepts() {
    let app = with_secret(|_| {}).await;
    app.api.create_event("drop", 10, 1).await;
    let (status, out) = testkit::run_to_exit(
        "flashsale-api",
        &[("BUYER_JWT_SECRET", SECRET)],
        &["token", "--sub", "operator-check", "--ttl", "10m"],
        Duration::from_secs(30),
    )
    .await;
    assert!(status.success(), "{out}");
    let reply = buy(&app.api, "drop", Some(out.trim()), None, json!({})).await;
    assert_eq!(
        (reply.status, reply.body["user_id"].as_str()),
        (StatusCode::ACCEPTED, Some("operator-check"))
    );

    // With an asymmetric key: the private key signs, the gateway knows the public one.
    let keyed = spawn_app_with(|c| c.buyer_jwt_keys = Some(key_path("ed.pub.pem"))).await;
    keyed.api.create_event("drop", 10, 1).await;
    let pem = key_path("ed.pem");
    let (status, out) = testkit::run_to_exit(
        "flashsale-api",
        &[],
        &["token", "--sub", "operator-ed", "--key", pem.to_str().unwrap()],
        Duration::from_secs(30),
    )
    .await;
    assert!(status.success(), "{out}");
    assert_eq!(buy(&keyed.api, "drop", Some(out.trim()), None, json!({})).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn bad_buyer_settings_stop_the_gateway_without_echoing_secrets() {
    let short = "a-secret-too-short-to-use";
    let private = key_path("rsa.pem");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("BUYER_JWT_SECRET", short)], "BUYER_JWT_SECRET"),
        (&[("BUYER_AUTH", "jwt")], "BUYER_AUTH=jwt needs"),
        (&[("BUYER_JWT_KEYS", private.to_str().unwrap())], "private key"),
        (&[("ADMIN_TOKENS", "long-enough-token-0001,short")], "token 2"),
    ];
    for (env, expected) in cases {
        let mut env = env.to_vec();
        env.push(("REDIS_URL", "redis://127.0.0.1:1"));
        env.push(("LISTEN_ADDR", "127.0.0.1:0"));
        let (status, out) = testkit::run_to_exit("flashsale-api", &env, &[], Duration::from_secs(30)).await;
        assert!(!status.success(), "{env:?} started:\n{out}");
        assert!(out.contains(expected), "{env:?}: {out}");
        assert!(
            !out.contains(short) && !out.contains("long-enough-token-0001"),
            "a secret was echoed: {out}"
        );
    }
}
