//! The default holder name, and the random nonce that tells one acquisition (or
//! one fenced write) from every other.

use rand::Rng as _;

/// `HOST:PID`, the default holder identity.
pub(crate) fn default_identity() -> String {
    let host = gethostname::gethostname();
    format!("{}:{}", host.to_string_lossy(), std::process::id())
}

/// A fresh random nonce, 32 hex digits.
pub(crate) fn new_nonce() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// The longest holder identity accepted, from options and from storage alike.
pub(crate) const MAX_IDENTITY_LEN: usize = 512;

/// Why `value` cannot be a holder identity (or another name gcslock records), if
/// it cannot: 1 to `max_len` bytes, no control characters. The one check for
/// identities given in options and read from storage.
pub(crate) fn check_name(value: &str, max_len: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max_len {
        return Err(format!(
            "must be 1 to {max_len} bytes long, not {}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}
