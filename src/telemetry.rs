//! Logging and tracing set-up, in one place. Logs go to stdout as JSON (or pretty for humans);
//! spans become OpenTelemetry traces exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! A tracer is installed even without an exporter so that W3C `traceparent` context is created
//! and propagated on every hop either way.

use opentelemetry::{global, propagation::TextMapCompositePropagator, trace::TracerProvider as _};
use opentelemetry_sdk::{
    Resource,
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::SdkTracerProvider,
};

use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::config::{LogFormat, LogSettings};

/// Flushes pending spans when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Nothing useful can be done with a failed flush while exiting.
        let _ = self.provider.shutdown();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global subscriber is already installed: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber and propagators for a process named `service_name`.
pub fn init(service_name: &str, log: &LogSettings) -> Result<TelemetryGuard, TelemetryError> {
    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(service_name.to_string())
            .build(),
    );
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    install_propagator();
    global::set_tracer_provider(provider.clone());

    let filter_text = std::env::var("RUST_LOG").unwrap_or_else(|_| log.filter.clone());
    let filter = EnvFilter::try_new(&filter_text).map_err(|source| TelemetryError::Filter {
        filter: filter_text.clone(),
        source,
    })?;
    let json = (log.format == LogFormat::Json).then(|| {
        let format = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false);
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(WithTraceId(format))
    });
    // Colours only for a terminal: `ordermesh up` and log collectors read plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let pretty =
        (log.format == LogFormat::Pretty).then(|| tracing_subscriber::fmt::layer().with_ansi(ansi));
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(pretty)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name.to_string())))
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// JSON log lines that start with the `trace_id` of the request or message they belong to, taken
/// from the nearest enclosing span that recorded one (see [`crate::context::record_trace_id`]):
/// a log line leads straight to its trace.
struct WithTraceId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let trace_id = ctx.event_scope().and_then(|scope| {
            scope.into_iter().find_map(|span| {
                let extensions = span.extensions();
                let fields = extensions.get::<FormattedFields<N>>()?;
                trace_id_in(&fields.fields)
            })
        });
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match (trace_id, line.strip_prefix('{')) {
            (Some(id), Some(rest)) => write!(writer, "{{\"trace_id\":\"{id}\",{rest}"),
            _ => writer.write_str(&line),
        }
    }
}

/// The `trace_id` in a span's JSON-formatted fields, if it recorded one.
fn trace_id_in(fields: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(fields).ok()?;
    let id = value.get("trace_id")?.as_str()?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Makes W3C `traceparent`/`tracestate` and `baggage` the headers that carry trace context in
/// and out of every process (gRPC metadata and NATS headers alike).
pub fn install_propagator() {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_trace_id_is_taken_from_span_fields() {
        assert_eq!(
            trace_id_in(r#"{"request_id":"r1","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".into())
        );
        assert_eq!(trace_id_in(r#"{"trace_id":"\",\"evil\":1"}"#), None);
        assert_eq!(trace_id_in(r#"{"request_id":"r1"}"#), None);
        assert_eq!(trace_id_in("not json"), None);
    }
}
