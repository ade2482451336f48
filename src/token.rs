//! The fencing token: the number each new holder of a lock gets, larger than
//! every earlier holder's.

use std::fmt;
use std::str::FromStr;

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

/// Parses a token in the one form gcslock writes it: plain decimal, without sign,
/// spaces or leading zeros (`u64::from_str` alone would take `+1`). Storage
/// content and command lines both go through it.
impl FromStr for FencingToken {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        parse_decimal(value)
            .map(Self)
            .ok_or_else(|| format!("not a fencing token (plain decimal below 2^64): {value:?}"))
    }
}

/// A `u64` in canonical decimal: ASCII digits only, no sign, no leading zero.
/// Every number gcslock reads from storage goes through it.
pub(crate) fn parse_decimal(value: &str) -> Option<u64> {
    let canonical = !value.is_empty()
        && value.bytes().all(|byte| byte.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    if canonical {
        value.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_decimal_is_a_token() {
        assert_eq!("0".parse(), Ok(FencingToken::new(0)));
        assert_eq!("42".parse(), Ok(FencingToken::new(42)));
        assert_eq!(
            u64::MAX.to_string().parse(),
            Ok(FencingToken::new(u64::MAX))
        );
        for bad in [
            "",
            "+1",
            " 1",
            "1 ",
            "-1",
            "01",
            "1e3",
            "0x1",
            "18446744073709551616",
        ] {
            assert!(bad.parse::<FencingToken>().is_err(), "{bad:?}");
        }
    }
}
