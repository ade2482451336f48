//! One module per subcommand: its arguments, help text and handler.

pub mod break_lock;
pub mod cat;
pub mod elect;
mod fenced;
pub mod generate;
pub mod list;
pub mod observe;
mod places;
pub mod put;
pub mod run;
pub mod status;
