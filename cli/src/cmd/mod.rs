//! One module per subcommand: its arguments, help text and handler.

pub mod break_lock;
pub mod cat;
mod fenced;
pub mod generate;
pub mod list;
mod places;
pub mod put;
pub mod run;
pub mod status;
