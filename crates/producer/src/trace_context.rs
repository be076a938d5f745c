//! W3C trace context (`traceparent`, `tracestate`) carried in AMQP message headers, so one trace
//! follows an event from the ingest request through the broker to every delivery attempt.
//!
//! Design constraints:
//! - Every publish goes through [`crate::ConfirmedPublisher`], which calls [`inject_current`]: events,
//!   delivery tasks, retries and dead letters all carry the context of the span that published them,
//!   with no call site able to forget it.
//! - The headers are written by whatever propagator the process installed globally
//!   (`opentelemetry::global::set_text_map_propagator`). A process that never installs one (tracing
//!   off, or a library user without OpenTelemetry) gets the no-op propagator: nothing is written and
//!   the cost is one lookup of the current span.
//! - A header that is not a string is ignored on extraction, never an error: trace context is
//!   advisory and must not stop a delivery.

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Adds the current span's trace context to `properties`' headers (replacing any carried over from
/// an earlier message), if there is a context to add.
pub fn inject_current(properties: BasicProperties) -> BasicProperties {
    let span = tracing::Span::current();
    // No span (none is built while traces are off): nothing to carry, and no lookups on the
    // publish path.
    if span.is_none() {
        return properties;
    }
    inject(&span.context(), properties)
}

/// Adds `context` to `properties`' headers through the global propagator.
pub fn inject(context: &Context, properties: BasicProperties) -> BasicProperties {
    let mut carrier = HeaderCarrier(None);
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut carrier);
    });
    let Some(fields) = carrier.0 else {
        return properties;
    };
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (key, value) in fields {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    properties.with_headers(headers)
}

/// The trace context a message carries (an empty context when it carries none).
pub fn extract(properties: &BasicProperties) -> Context {
    let Some(headers) = properties.headers() else {
        return Context::new();
    };
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&TableExtractor(headers))
    })
}

/// Collects what the propagator writes; `None` until it writes something.
struct HeaderCarrier(Option<Vec<(String, String)>>);

impl Injector for HeaderCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .get_or_insert_with(Vec::new)
            .push((key.to_owned(), value));
    }
}

struct TableExtractor<'a>(&'a FieldTable);

impl Extractor for TableExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|key| key.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn a_context_goes_into_the_headers_and_comes_back_out() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let context = Context::new().with_remote_span_context(span.clone());
        let mut existing = FieldTable::default();
        existing.insert("x-regrelay-schema".into(), AMQPValue::LongLongInt(1));
        let properties = inject(&context, BasicProperties::default().with_headers(existing));

        let headers = properties.headers().clone().unwrap();
        assert!(headers.inner().contains_key("x-regrelay-schema"));
        match headers.inner().get("traceparent") {
            Some(AMQPValue::LongString(value)) => assert_eq!(
                value.as_bytes(),
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            ),
            other => panic!("no traceparent header: {other:?}"),
        }
        let extracted = extract(&properties);
        let extracted = extracted.span().span_context().clone();
        assert_eq!(extracted.trace_id(), span.trace_id());
        assert_eq!(extracted.span_id(), span.span_id());
        assert!(extracted.is_remote());
    }

    #[test]
    fn no_context_adds_no_headers_and_a_missing_one_extracts_empty() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let properties = inject(&Context::new(), BasicProperties::default());
        assert!(properties.headers().is_none());
        let extracted = extract(&properties);
        assert!(!extracted.span().span_context().is_valid());
    }
}
