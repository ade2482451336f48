//! The fencing token: the number each new holder of a lock gets, larger than
//! every earlier holder's.

use std::fmt;

/// A number that grows with every new holder of a lock: hand it to the systems
/// your critical section writes to, and have them reject writes carrying a token
/// smaller than one they have already seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token with this value (as parsed from a command line or another system).
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token as a number.
    pub const fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
