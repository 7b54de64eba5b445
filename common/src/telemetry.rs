//! Logging and tracing set-up: one call at start-up, log format chosen by
//! `LOG_FORMAT`, OpenTelemetry traces exported over OTLP/gRPC when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set.
//!
//! With no endpoint there is no OpenTelemetry layer at all: spans are
//! tracing's own, and nothing is exported, so tracing costs what it did
//! before. With one, every tracing span becomes an OpenTelemetry span (the
//! `otel.*` fields name it and give its kind), batched and sent by a
//! background thread; the exporter reads the other `OTEL_*` variables itself
//! (`OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`,
//! `OTEL_TRACES_SAMPLER`...), and `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` name the service. `OTEL_SDK_DISABLED=true`
//! turns it off whatever the endpoint.
//!
//! Log lines never make a request wait for stdout: they go through a bounded
//! queue to one `log-writer` thread, which writes as many as
//! are waiting at once. When stdout stalls (a full pipe, a slow collector) and
//! the queue fills, new lines are dropped and counted in
//! `log_lines_dropped_total` ([`register_metrics`]) instead.
//!
//! Trace context crosses process boundaries as W3C `traceparent` and
//! `tracestate` headers: [`extract`] reads them off a request a server
//! received, [`inject`] writes the current span's onto a request about to
//! be sent.

use std::{
    fmt,
    io::Write,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use tracing::Subscriber;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter,
    filter::LevelFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Writer},
    },
    prelude::*,
    registry::LookupSpan,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    #[default]
    Pretty,
}

/// Whether and where spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The OTLP/gRPC collector (`http://collector:4317`); `None`: traces off.
    pub endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Export {
    /// From the standard variables: on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not
    /// `true`); `service.name` from `OTEL_SERVICE_NAME`, else `binary`.
    pub fn from_env(binary: &str) -> Export {
        Export::from_vars(|name| std::env::var(name).ok(), binary)
    }

    /// [`Export::from_env`] over any source of variables.
    fn from_vars(var: impl Fn(&str) -> Option<String>, binary: &str) -> Export {
        let set = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        Export {
            endpoint: endpoint.filter(|_| !disabled),
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| binary.to_owned()),
        }
    }
}

/// Keeps the span exporter running; dropping it sends the spans still
/// queued and stops the exporter (`main` holds it to the end).
#[must_use = "dropping the guard stops exporting traces"]
pub struct Telemetry {
    /// The OpenTelemetry pipeline, when traces are exported.
    provider: Option<SdkTracerProvider>,
    /// Writes the lines still queued when dropped; `None` when another
    /// subscriber was installed first.
    _log_writer: Option<WorkerGuard>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").field("exporting", &self.provider.is_some()).finish()
    }
}

/// How long the exporter may take to send what is queued when the process stops.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now (tests). Blocks: on a tokio runtime,
    /// call it from `spawn_blocking`.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "exporting spans failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            eprintln!("stopping the span exporter: {e}");
        }
    }
}

/// Installs the global subscriber, exporting spans as `binary` when the
/// `OTEL_*` variables say so ([`Export::from_env`]). The log filter comes
/// from `RUST_LOG` (default `info`); spans are exported from INFO up. Must run inside a tokio runtime (the
/// exporter's gRPC channel). Calling it twice is harmless (tests start many
/// services): the second call installs nothing and exports nothing.
pub fn init(format: LogFormat, binary: &str) -> Telemetry {
    init_with(format, Export::from_env(binary))
}

/// [`init`] with the export settings given.
pub fn init_with(format: LogFormat, export: Export) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = export.endpoint.as_deref().and_then(|endpoint| match provider(endpoint, &export.service_name) {
        Ok(provider) => Some(provider),
        Err(e) => {
            // Traces are an aid, not a duty: the service runs without them.
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT {endpoint:?}: {e}; traces are not exported");
            None
        }
    });
    // No provider, no layer: tracing's spans cost what they did before.
    // Spans are exported from INFO up whatever `RUST_LOG` says (it chooses
    // what is logged), so quiet logs still give whole traces.
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("taskgate")).with_filter(LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(otel);
    let ids = provider.is_some();
    let (writer, log_guard) = log_writer(std::io::stdout(), LOG_LINES_QUEUED);
    let dropped = writer.error_counter();
    let installed = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .fmt_fields(format::JsonFields::new())
                    .event_format(WithTraceIds {
                        inner: format::Format::default().json().flatten_event(true),
                        enabled: ids,
                    })
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Pretty => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(writer).compact().with_filter(filter)).try_init()
        }
    };
    match installed {
        Ok(()) => {
            EXPORTING.store(provider.is_some(), Ordering::Relaxed);
            let _ = DROPPED_LINES.set(dropped);
            Telemetry { provider, _log_writer: Some(log_guard) }
        }
        Err(_) => {
            // Another subscriber was installed first: this pipeline would get no span.
            if let Some(provider) = provider {
                let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
            }
            Telemetry { provider: None, _log_writer: None }
        }
    }
}

/// Most log lines waiting for the `log-writer` thread; past it, lines are
/// dropped and counted rather than waited for. The queue's slots are
/// allocated and touched up front (32 bytes each: 128 KiB resident), and
/// 4,096 lines is half a second of access log at 8,000 requests a second.
pub const LOG_LINES_QUEUED: usize = 4 * 1024;

/// A log writer that never blocks the thread that logs: each line goes
/// through a queue of at most `limit` lines to one `log-writer` thread,
/// which writes every line waiting in one write to `sink` (buffered, flushed
/// whenever the queue runs empty). While the queue is full, lines are
/// dropped and counted by the writer's `error_counter()`. Dropping the guard
/// writes what is queued and stops the thread.
fn log_writer<W: Write + Send + 'static>(sink: W, limit: usize) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .buffered_lines_limit(limit)
        .lossy(true)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::new(sink))
}

/// The dropped-line count of this process's log writer, once [`init`] installed it.
static DROPPED_LINES: OnceLock<ErrorCounter> = OnceLock::new();

/// Adds `log_lines_dropped_total` to `registry`: the log lines this
/// process dropped because stdout did not keep up (0 until [`init`] ran).
pub fn register_metrics(registry: &mut Registry) {
    registry.register("log_lines_dropped", "Log lines dropped because the log output did not keep up", DroppedLines);
}

/// `log_lines_dropped_total`, read from [`DROPPED_LINES`] when scraped.
#[derive(Debug)]
struct DroppedLines;

impl EncodeMetric for DroppedLines {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let dropped = DROPPED_LINES.get().map_or(0, ErrorCounter::dropped_lines);
        encoder.encode_counter::<NoLabelSet, _, u64>(&(dropped as u64), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Whether this process exports spans: read before any per-call tracing
/// work ([`extract`], [`inject`], client spans), so with traces off that
/// work is skipped, not done and thrown away.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans (the global subscriber has an
/// OpenTelemetry layer).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A tracer provider batching spans to the OTLP/gRPC collector at `endpoint`.
fn provider(endpoint: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// A JSON event format that puts `trace_id` and `span_id` (of the span the
/// event is in) first on each line, so a log line leads to its trace.
struct WithTraceIds<F> {
    /// The JSON format.
    inner: F,
    /// Whether spans have OpenTelemetry ids (traces are exported).
    enabled: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let ids = if self.enabled { ctx.lookup_current().and_then(|span| ids(&span.id())) } else { None };
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

/// The OpenTelemetry trace and span ids of the span `id`, when it has valid ones.
fn ids(id: &tracing::span::Id) -> Option<(String, String)> {
    tracing::dispatcher::get_default(|dispatch| {
        let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
    })
}

/// W3C trace context (`traceparent`, `tracestate`), the one format spoken.
static PROPAGATOR: std::sync::LazyLock<TraceContextPropagator> = std::sync::LazyLock::new(TraceContextPropagator::new);

/// Reads [`http::HeaderMap`] for the propagator.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes into [`http::HeaderMap`] for the propagator.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// Makes the trace context in `headers` (a client's `traceparent`) the
/// parent of `span`, a server span; nothing happens when there is none or
/// traces are off.
pub fn extract(span: &tracing::Span, headers: &http::HeaderMap) {
    if !exporting() || span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = PROPAGATOR.extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes the trace context of `span` (a client span, or the current
/// span) into `headers` (`traceparent`, `tracestate`) for the service being
/// called, replacing any there; nothing happens when traces are off.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !exporting() || span.is_disabled() {
        return;
    }
    let context: Context = span.context();
    if context.span().span_context().is_valid() {
        PROPAGATOR.inject_context(&context, &mut HeaderInjector(headers));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn export(vars: &[(&str, &str)]) -> Export {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Export::from_vars(|name| vars.get(name).cloned(), "task-service")
    }

    /// A sink that holds every write until `open` is sent, and keeps what it was given.
    struct Gate {
        open: std::sync::mpsc::Receiver<()>,
        opened: bool,
        written: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.opened {
                let _ = self.open.recv();
                self.opened = true;
            }
            self.written.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_log_output_drops_lines_past_the_bound_instead_of_blocking() {
        const LIMIT: usize = 16;
        const LINES: usize = 2_000;
        let (open, gate) = std::sync::mpsc::channel();
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut writer, guard) = log_writer(Gate { open: gate, opened: false, written: written.clone() }, LIMIT);
        let dropped_lines = writer.error_counter();
        // On a thread of its own, so a writer that blocks fails the test instead of hanging it.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..LINES {
                writer.write_all(format!("{i:0>99}\n").as_bytes()).expect("a lossy writer never fails");
            }
            let _ = done.send(());
        });
        finished.recv_timeout(Duration::from_secs(5)).expect("logging waited for a stalled output");
        let dropped = dropped_lines.dropped_lines();
        // The queue holds LIMIT lines and the writer thread's 8 KiB buffer about 80 more.
        assert!((LINES - LIMIT - 100..=LINES - LIMIT).contains(&dropped), "{dropped} of {LINES} dropped");
        open.send(()).expect("the writer thread waits");
        drop(guard);
        let kept = written.lock().expect("lock").split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        assert_eq!(kept, LINES - dropped, "every line not dropped is written when the guard goes");
    }

    #[test]
    fn dropped_log_lines_are_a_counter() {
        let mut registry = Registry::default();
        register_metrics(&mut registry);
        let text = crate::metrics::render(&registry);
        assert!(text.contains("# TYPE log_lines_dropped_total counter"), "{text}");
        assert!(text.contains("\nlog_lines_dropped_total 0\n"), "{text}");
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_set() {
        assert_eq!(export(&[]).endpoint, None);
        assert_eq!(export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).endpoint, None);
        let on = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]);
        assert_eq!(on.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(on.service_name, "task-service");
        let traces = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_SERVICE_NAME", "tasks-eu"),
        ]);
        assert_eq!(traces.endpoint.as_deref(), Some("http://traces:4317"));
        assert_eq!(traces.service_name, "tasks-eu");
        let disabled =
            export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"), ("OTEL_SDK_DISABLED", "TRUE")]);
        assert_eq!(disabled.endpoint, None);
    }

    #[test]
    fn without_a_subscriber_nothing_is_injected() {
        let mut headers = http::HeaderMap::new();
        inject(&tracing::Span::current(), &mut headers);
        assert!(headers.is_empty());
    }
}
