//! The default holder name, and the random nonce that tells one acquisition (or
//! one fenced write) from every other.

use rand::Rng as _;

/// `HOST:PID`, the default holder identity.
pub fn default_identity() -> String {
    let host = gethostname::gethostname();
    format!("{}:{}", host.to_string_lossy(), std::process::id())
}

/// A fresh random nonce, 32 hex digits.
pub(crate) fn new_nonce() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}
