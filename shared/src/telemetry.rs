//! Logs and metrics plumbing shared by both binaries.
//!
//! Metrics go through an explicit [`Metrics`] registry instead of the global `metrics!`
//! macros: each gateway or worker instance owns its series, so two instances started in one
//! test process do not mix their numbers, and handles are registered once at start-up, so
//! every series exists (at 0) before the first request and the hot path does no lookups.

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tracing_subscriber::EnvFilter;

use crate::config::{LogArgs, LogFormat};

/// Installs the global `tracing` subscriber. Fails on an invalid filter; a second call (as in
/// tests that start several instances) leaves the first subscriber in place.
pub fn init_tracing(args: &LogArgs) -> Result<(), String> {
    init(args, std::io::stdout, std::io::IsTerminal::is_terminal(&std::io::stdout()))
}

/// Like [`init_tracing`], with log lines on stderr: for operator commands whose stdout is
/// their JSON output.
pub fn init_tracing_stderr(args: &LogArgs) -> Result<(), String> {
    init(args, std::io::stderr, std::io::IsTerminal::is_terminal(&std::io::stderr()))
}

fn init<W>(args: &LogArgs, writer: W, ansi: bool) -> Result<(), String>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&args.log_filter).map_err(|e| format!("invalid RUST_LOG: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    Ok(())
}

/// Latency buckets (seconds) for request paths: sub-millisecond to a few seconds.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// One process's Prometheus registry.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect();
    Key::from_parts(name, labels)
}

/// A gauge nobody updated for this long leaves the exposition (see [`Metrics::with_gauge_idle`]).
pub const GAUGE_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

impl Metrics {
    /// `histograms` names each histogram with its explicit buckets.
    pub fn new(histograms: &[(&'static str, &[f64])]) -> Self {
        Self::build(histograms, None)
    }

    /// Like [`Metrics::new`], and a gauge not updated for `idle` disappears from the
    /// exposition: per-event gauges of an event that left Redis do not stay forever. Every
    /// gauge that should stay must be set more often than that.
    pub fn with_gauge_idle(histograms: &[(&'static str, &[f64])], idle: std::time::Duration) -> Self {
        Self::build(histograms, Some(idle))
    }

    fn build(histograms: &[(&'static str, &[f64])], gauge_idle: Option<std::time::Duration>) -> Self {
        let mut builder = PrometheusBuilder::new();
        if let Some(idle) = gauge_idle {
            builder = builder.idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(idle));
        }
        for (name, buckets) in histograms {
            builder = builder
                .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
                .expect("bucket lists are non-empty constants");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Self { recorder, handle }
    }

    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        self.recorder.describe_counter(name.into(), None, SharedString::const_str(help));
        let counter = self.recorder.register_counter(&key(name, labels), &METADATA);
        counter.increment(0);
        counter
    }

    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.describe_gauge(name.into(), None, SharedString::const_str(help));
        let gauge = self.recorder.register_gauge(&key(name, labels), &METADATA);
        gauge.increment(0.0);
        gauge
    }

    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        self.recorder.describe_histogram(name.into(), Some(Unit::Seconds), SharedString::const_str(help));
        self.recorder.register_histogram(&key(name, labels), &METADATA)
    }

    /// `flashsale_build_info{version, revision} 1`: which build runs where (both binaries).
    pub fn build_info(&self) {
        self.gauge(
            "flashsale_build_info",
            "Always 1; its labels say which version and git revision this process runs.",
            &[("version", env!("CARGO_PKG_VERSION")), ("revision", env!("FLASHSALE_REVISION"))],
        )
        .set(1.0);
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains buffered histogram samples; call periodically so memory stays flat between
    /// scrapes (rendering does the same).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}
