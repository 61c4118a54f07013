//! `spawn_app()`: a gateway (and, on request, a worker) in this test process, on port 0,
//! against a private Redis; everything stops when the `TestApp` is dropped.

use std::time::Duration;

use flashsale_shared::config::RedisArgs;
use testkit::{ADMIN_TOKEN, Api, RedisServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub redis: RedisServer,
    /// The worker's ledger, once a worker runs.
    pub ledger: Option<testkit::Postgres>,
    pub api: Api,
    stop: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let log = flashsale_shared::config::LogArgs {
            log_filter: "info".into(),
            log_format: flashsale_shared::config::LogFormat::Text,
        };
        let _ = flashsale_shared::telemetry::init_tracing(&log);
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], letting the test adjust the gateway's configuration first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut flashsale_api::config::Config)) -> TestApp {
    init_logs();
    let redis = RedisServer::start();
    let mut config = flashsale_api::config::Config::new(RedisArgs::new(&redis.url()).expect("valid URL"));
    config.admin_token = Some(flashsale_api::config::AdminToken::parse(ADMIN_TOKEN).expect("token"));
    adjust(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    tokio::spawn(flashsale_api::run(listener, config, stop.clone().cancelled_owned()));
    TestApp { redis, ledger: None, api: Api::new(&base), stop }
}

impl TestApp {
    /// Starts an in-process worker that stops with the app.
    pub async fn start_worker(&mut self) {
        let ledger = testkit::Postgres::start();
        let mut config = flashsale_worker::Config::new(
            RedisArgs::new(&self.redis.url()).expect("valid URL"),
            flashsale_ledger::LedgerArgs::new(&ledger.url()).expect("valid URL"),
        );
        self.ledger = Some(ledger);
        config.consumer_name = Some("test-worker".into());
        config.discovery_interval_ms = 50;
        config.block_ms = 100;
        config.trim_interval_ms = 100;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        tokio::spawn(flashsale_worker::run(config, listener, self.stop.clone().cancelled_owned()));
    }

    /// Polls an order until it has `status`.
    pub async fn wait_order_status(&self, event: &str, order_id: &str, status: &str) -> serde_json::Value {
        testkit::wait_until(Duration::from_secs(10), &format!("order {order_id} to be {status}"), || async {
            let reply = self.api.get_order(event, order_id).await;
            (reply.body["status"] == status).then_some(reply.body)
        })
        .await
    }
}
