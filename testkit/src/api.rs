use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::ADMIN_TOKEN;

/// A minimal client of the gateway's HTTP API.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

/// What came back: status, headers and the body as JSON (`Value::Null` when not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// The problem `code` of an error reply.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// Asserts an RFC 9457 problem with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "status of {self:?}");
        assert_eq!(self.content_type(), "application/problem+json", "content type of {self:?}");
        assert_eq!(self.code(), code, "problem code of {self:?}");
        for member in ["type", "title", "detail"] {
            assert!(self.body[member].is_string(), "problem without `{member}`: {self:?}");
        }
        assert_eq!(self.body["status"], status, "problem status member of {self:?}");
    }
}

impl Api {
    pub fn new(base: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(512)
            .build()
            .expect("HTTP client");
        Self { base: base.trim_end_matches('/').to_owned(), client }
    }

    /// Sends a request; `body` is sent as JSON when given. Panics when nothing answers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        self.try_send(method, path, headers, body).await.expect("request sent")
    }

    /// Like [`Api::send`], but a connection failure is returned, not a panic (for tests that
    /// kill gateways).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, reqwest::Error> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, headers, body, text })
    }

    pub async fn put_event(&self, event: &str, config: Value) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.send(Method::PUT, &format!("/v1/events/{event}"), &[("authorization", &auth)], Some(&config))
            .await
    }

    /// Creates a live event with `stock` units and the given per-user limit; asserts 201.
    pub async fn create_event(&self, event: &str, stock: u64, per_user_limit: u32) {
        let reply = self.put_event(event, json!({"stock": stock, "per_user_limit": per_user_limit})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "create {event}: {reply:?}");
    }

    pub async fn get_event(&self, event: &str) -> Reply {
        self.send(Method::GET, &format!("/v1/events/{event}"), &[], None).await
    }

    /// POSTs a purchase of `quantity` units for `user`, with an `Idempotency-Key` if given.
    pub async fn purchase(&self, event: &str, user: &str, quantity: u32, key: Option<&str>) -> Reply {
        self.try_purchase(event, user, quantity, key).await.expect("request sent")
    }

    pub async fn try_purchase(
        &self,
        event: &str,
        user: &str,
        quantity: u32,
        key: Option<&str>,
    ) -> Result<Reply, reqwest::Error> {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("idempotency-key", k)]).unwrap_or_default();
        let body = json!({"user_id": user, "quantity": quantity});
        self.try_send(Method::POST, &format!("/v1/events/{event}/purchases"), &headers, Some(&body)).await
    }

    pub async fn get_order(&self, event: &str, order_id: &str) -> Reply {
        self.send(Method::GET, &format!("/v1/events/{event}/orders/{order_id}"), &[], None).await
    }

    /// Polls an order until it has `status`; returns its body.
    pub async fn wait_order_status(&self, event: &str, order_id: &str, status: &str) -> Value {
        crate::wait_until(Duration::from_secs(15), &format!("order {order_id} to be {status}"), || async {
            let reply = self.get_order(event, order_id).await;
            (reply.body["status"] == status).then_some(reply.body)
        })
        .await
    }

    pub async fn metrics(&self) -> String {
        self.send(Method::GET, "/metrics", &[], None).await.text
    }
}

/// The value of one series in a Prometheus text exposition, e.g.
/// `metric_value(text, "flashsale_purchases_total", &[("outcome", "accepted")])`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            return None;
        }
        let present: Vec<&str> =
            if series_labels.is_empty() { Vec::new() } else { series_labels.split(',').collect() };
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let matches = present.len() == wanted.len() && wanted.iter().all(|w| present.contains(&w.as_str()));
        matches.then(|| value.parse().ok()).flatten()
    })
}
