//! The logs, on stderr only (stdout is the MCP stdio channel): `text`, coloured only when stderr
//! is a terminal, or `json`, one object a line with the fields of the spans it happened in
//! (request_id, tenant, sandbox_id, execution_id) at the top level beside the event's own.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogArgs, LogFormat};

/// Installs the global subscriber. An invalid filter falls back to `info`.
pub fn init(log: &LogArgs) {
    // The zeromq crate reports every reconnect attempt to a kernel that is going away (a
    // destroyed sandbox, a restarting kernel) as a warning; the engine reports what matters.
    let directives = if log.filter.contains("zeromq") {
        log.filter.clone()
    } else {
        format!("{},zeromq=error", log.filter)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zeromq=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.log_format {
        // Colours only for a person at a terminal: captured logs (Claude Desktop, CI, files) get
        // plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .init(),
    }
}

/// One JSON object a line: `timestamp`, `level`, `target`, the fields of the spans the event
/// happened in (outer first, an inner span's value winning), the event's own fields (`message`
/// among them) and `spans`, the span names joined by `:`.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            for span in scope.from_root() {
                names.push(span.name());
                let extensions = span.extensions();
                // The span's fields as `JsonFields` wrote them: a JSON object.
                let fields = extensions
                    .get::<FormattedFields<N>>()
                    .and_then(|fields| serde_json::from_str::<Map<String, Value>>(fields).ok());
                line.extend(fields.into_iter().flatten());
            }
            line.insert("spans".into(), names.join(":").into());
        }
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Records an event's fields into the line.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}
