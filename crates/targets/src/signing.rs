//! The vendors' request signatures (DingTalk and Feishu custom robots).
//!
//! The two are easy to confuse: both are HMAC-SHA256 over `timestamp + "\n" + secret`, but
//! DingTalk uses the secret as the key and that string as the message, with the timestamp in
//! milliseconds, while Feishu uses that string as the key over an empty message, with the
//! timestamp in seconds (Feishu's own demo code; a crate that signs Feishu DingTalk-style gets
//! 19021 back).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// DingTalk's `sign` query parameter before URL encoding:
/// `base64(HMAC-SHA256(key = secret, msg = timestamp_ms + "\n" + secret))`.
pub fn dingtalk(secret: &str, timestamp_ms: i64) -> String {
    let message = format!("{timestamp_ms}\n{secret}");
    STANDARD.encode(hmac(secret.as_bytes(), message.as_bytes()))
}

/// Feishu's `sign` body field:
/// `base64(HMAC-SHA256(key = timestamp_s + "\n" + secret, msg = ""))`.
pub fn feishu(secret: &str, timestamp_s: i64) -> String {
    let key = format!("{timestamp_s}\n{secret}");
    STANDARD.encode(hmac(key.as_bytes(), b""))
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed with Python's `hmac`/`base64`, following each vendor's demo code.
    #[test]
    fn vectors() {
        assert_eq!(
            dingtalk("SEC000000000000000000000", 1_700_000_000_000),
            "1zJ/w34EOSVAYr7cu7Vo8LnebmK2/GrCgegtr8mQrqM="
        );
        assert_eq!(
            feishu("demo-secret", 1_700_000_000),
            "mYHw2R2SOm8Rw/sne3lQdmz4sOfntKR+1P/8RKKTwmA="
        );
    }

    #[test]
    fn the_two_are_not_interchangeable() {
        assert_ne!(dingtalk("s", 1000), feishu("s", 1));
    }
}
