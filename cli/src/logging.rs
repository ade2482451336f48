//! gcslock's own messages: tracing to stderr, as `gcslock: ...` lines or JSON lines.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::global::{GlobalArgs, LogFormat};

/// Target of the one-line outcome messages ("... is busy: ..."), printed without a
/// level label in text mode.
pub const OUTCOME: &str = "gcslock::outcome";

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
    let layer = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(TextFormat)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    // Fails only if a subscriber is already set, which leaves logging working.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

/// `gcslock: error: message key=value ...`, one line per event.
struct TextFormat;

impl<S, N> FormatEvent<S, N> for TextFormat
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
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
