//! gcslock's own messages: tracing to stderr, as `gcslock: ...` lines or JSON lines,
//! through a queue that never blocks the caller (see `log_queue.rs`).
//!
//! Every event is emitted inside the command's span ([`command_span`]), whose fields
//! each JSON line carries at its top level. Field names, for code that records them
//! once known (`tracing::Span::current().record("token", 7)`):
//!
//! | field       | what                                                         |
//! |-------------|--------------------------------------------------------------|
//! | `url`       | the lock (or prefix) URL, set when the span opens            |
//! | `token`     | the fencing token held, or found on the lock                 |
//! | `holder`    | the lock's holder (ours once acquired, else the one seen)    |
//! | `period`    | the `--once-per` period, as written (`1h`, `7d`)             |
//! | `exit_code` | gcslock's exit code, recorded just before it exits           |

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Span, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::global::{GlobalArgs, LogFormat};
use crate::log_queue::LogQueue;
use crate::output::escape;

/// Target of the one-line outcome messages ("... is busy: ..."), printed without a
/// level label in text mode.
pub const OUTCOME: &str = "gcslock::outcome";

/// The longest gcslock's exit waits for queued messages to reach stderr: a blocked
/// stderr must not hold the process (the lock is settled by then).
const EXIT_FLUSH: Duration = Duration::from_secs(1);

static QUEUE: OnceLock<LogQueue> = OnceLock::new();

/// Installs the global subscriber. Only the first call has an effect.
pub fn init(args: &GlobalArgs) {
    let (default, ours) = if args.errors_only() {
        (LevelFilter::ERROR, LevelFilter::ERROR)
    } else {
        match args.verbose {
            0 => (LevelFilter::WARN, LevelFilter::WARN),
            1 => (LevelFilter::WARN, LevelFilter::INFO),
            2 => (LevelFilter::WARN, LevelFilter::DEBUG),
            _ => (LevelFilter::DEBUG, LevelFilter::TRACE),
        }
    };
    // The library and this binary both log under the `gcslock` target.
    let filter = Targets::new()
        .with_default(default)
        .with_target("gcslock", ours);
    let notice = match args.log_format {
        LogFormat::Text => lost_notice_text as fn(u64) -> Vec<u8>,
        LogFormat::Json => lost_notice_json,
    };
    let queue = QUEUE
        .get_or_init(|| LogQueue::start(std::io::stderr(), notice))
        .clone();
    let layer = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(queue)
            .with_ansi(false)
            .event_format(TextFormat)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(queue)
            .fmt_fields(JsonFields::new())
            .event_format(JsonFormat)
            .boxed(),
    };
    // Fails only if a subscriber is already set, which leaves logging working.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

/// The span every event of one gcslock command is logged in; see the module's
/// table for its fields. `url` and `period` are absent where the command has none.
pub fn command_span(url: Option<&str>, period: Option<&str>) -> Span {
    tracing::error_span!(
        "gcslock",
        url = url,
        token = tracing::field::Empty,
        holder = tracing::field::Empty,
        period = period,
        exit_code = tracing::field::Empty,
    )
}

/// At exit: the loss notice if lines were dropped, and a bounded wait for the queue.
pub fn finish() {
    if let Some(queue) = QUEUE.get() {
        queue.flush_within(EXIT_FLUSH);
    }
}

fn lost_notice_text(lost: u64) -> Vec<u8> {
    format!("gcslock: warning: {lost} log lines were lost while stderr was blocked\n").into_bytes()
}

fn lost_notice_json(lost: u64) -> Vec<u8> {
    let mut line = serde_json::json!({
        "timestamp": now(),
        "level": "WARN",
        "message": format!("{lost} log lines were lost while stderr was blocked"),
        "lost_lines": lost,
        "target": "gcslock",
    })
    .to_string();
    line.push('\n');
    line.into_bytes()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `gcslock: error: message key=value ...`, one line per event. The whole line goes
/// through [`escape`]: messages quote storage (holders, reasons, names), and this
/// way none of it reaches a terminal raw, whoever logged it (the library included).
struct TextFormat;

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        writer.write_str("gcslock: ")?;
        if metadata.target() != OUTCOME {
            let label = match *metadata.level() {
                Level::ERROR => "error: ",
                Level::WARN => "warning: ",
                Level::INFO => "",
                Level::DEBUG => "debug: ",
                Level::TRACE => "trace: ",
            };
            writer.write_str(label)?;
        }
        let mut fields = TextVisitor::default();
        event.record(&mut fields);
        writer.write_str(&escape(&fields.line))?;
        writeln!(writer)
    }
}

/// `message key=value ...`, raw: the caller escapes the whole line once (the fmt
/// crate's own field formatter escapes ESC its own way, which `escape` would double).
#[derive(Default)]
struct TextVisitor {
    line: String,
}

impl Visit for TextVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.line.is_empty() {
            self.line.push(' ');
        }
        if field.name() == "message" {
            self.line.push_str(&format!("{value:?}"));
        } else {
            self.line.push_str(&format!("{}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, `message`, the event's
/// own fields, and the fields of the spans it is in (the command span's `url`,
/// `token`, ...), all at the top level. An event's field beats a span's.
struct JsonFormat;

impl<S> FormatEvent<S, JsonFields> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut object = Map::new();
        object.insert("timestamp".into(), now().into());
        object.insert("level".into(), metadata.level().as_str().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    object.extend(fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut object));
        object.insert("target".into(), metadata.target().into());
        writeln!(writer, "{}", Value::Object(object))
    }
}

/// An event's fields into a JSON object.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_escape_what_they_quote() {
        let lines = capture(LogFormat::Text, || {
            tracing::warn!(target: OUTCOME, "gs://b/o is busy: held by evil\u{1b}[2J\u{202E}x");
        });
        assert_eq!(
            lines,
            ["gcslock: gs://b/o is busy: held by evil\\u{1b}[2J\\u{202e}x"]
        );
    }

    #[test]
    fn json_lines_carry_the_command_span_fields() {
        let lines = capture(LogFormat::Json, || {
            let span = command_span(Some("gs://b/o"), None);
            let _entered = span.enter();
            tracing::warn!("before");
            Span::current().record("token", 7_u64);
            Span::current().record("holder", "vm:1");
            tracing::warn!(pid = 42, "after");
        });
        let parsed: Vec<Value> = lines
            .iter()
            .map(|line| serde_json::from_str(line).expect("JSON"))
            .collect();
        assert_eq!(parsed[0]["url"], "gs://b/o", "{parsed:?}");
        assert_eq!(parsed[0]["message"], "before", "{parsed:?}");
        assert!(parsed[0].get("token").is_none(), "{parsed:?}");
        assert_eq!(parsed[1]["url"], "gs://b/o", "{parsed:?}");
        assert_eq!(parsed[1]["token"], 7, "{parsed:?}");
        assert_eq!(parsed[1]["holder"], "vm:1", "{parsed:?}");
        assert_eq!(parsed[1]["pid"], 42, "{parsed:?}");
        assert_eq!(parsed[1]["level"], "WARN", "{parsed:?}");
    }

    /// The lines `log` produces in `format`, through a scoped subscriber.
    fn capture(format: LogFormat, log: impl FnOnce()) -> Vec<String> {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("sink").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = {
            let sink = sink.clone();
            move || sink.clone()
        };
        let layer = match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .event_format(TextFormat)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .fmt_fields(JsonFields::new())
                .event_format(JsonFormat)
                .boxed(),
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, log);
        let bytes = sink.0.lock().expect("sink").clone();
        String::from_utf8(bytes)
            .expect("UTF-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
