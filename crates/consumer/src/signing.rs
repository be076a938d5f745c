//! Standard Webhooks signatures (SPEC §3): `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{webhook-id}.{webhook-timestamp}.{body}"`.
//!
//! Design constraints:
//! - The key is parsed once per delivery ([`SigningKey::from_secret`]) and its HMAC state is kept
//!   ready, so [`sign`] cannot fail: an unusable secret is found before any request is made, and
//!   the delivery is dead-lettered rather than sent unsigned.
//! - The key never appears in logs: [`SigningKey`]'s `Debug` prints a placeholder.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret; the rest is the key, base64-encoded.
pub const SECRET_PREFIX: &str = "whsec_";

/// The version prefix of a Standard Webhooks signature (HMAC-SHA256).
pub const SIGNATURE_VERSION: &str = "v1";

/// A target's signing key, ready to sign.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

/// Why a target's secret cannot be used as a signing key.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("the signing secret is empty")]
    Empty,
    #[error("the signing secret starts with `whsec_` but the rest is not valid base64")]
    InvalidBase64(#[source] base64::DecodeError),
    #[error("the signing key cannot be used for HMAC-SHA256")]
    InvalidKey(#[source] hmac::digest::InvalidLength),
}

impl SigningKey {
    /// The key for a target's secret: `whsec_<base64>` is the Standard Webhooks form (the key is
    /// the decoded bytes); any other non-empty string is used as-is (its UTF-8 bytes), for
    /// receivers that share a plain token.
    pub fn from_secret(secret: &str) -> Result<SigningKey, SigningError> {
        let key = match secret.strip_prefix(SECRET_PREFIX) {
            Some(encoded) => STANDARD
                .decode(encoded)
                .map_err(SigningError::InvalidBase64)?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(SigningError::Empty);
        }
        Hmac::<Sha256>::new_from_slice(&key)
            .map(SigningKey)
            .map_err(SigningError::InvalidKey)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// The `webhook-signature` value for one request: `v1,` + base64(HMAC-SHA256(key,
/// "{msg_id}.{timestamp}.{body}")).
pub fn sign(key: &SigningKey, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = key.0.clone();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("{SIGNATURE_VERSION},{}", STANDARD.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        assert_eq!(
            sign(&key, MSG_ID, TIMESTAMP, BODY),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_input_changes_the_signature() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        let reference = sign(&key, MSG_ID, TIMESTAMP, BODY);
        let other_key = SigningKey::from_secret("whsec_AAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_ne!(sign(&other_key, MSG_ID, TIMESTAMP, BODY), reference);
        assert_ne!(sign(&key, "msg_other", TIMESTAMP, BODY), reference);
        assert_ne!(sign(&key, MSG_ID, TIMESTAMP + 1, BODY), reference);
        assert_ne!(sign(&key, MSG_ID, TIMESTAMP, b"{}"), reference);
    }

    #[test]
    fn secrets_are_parsed() {
        // A plain token is its own bytes: the same as the base64 form of those bytes.
        let plain = SigningKey::from_secret("s3cret-token").unwrap();
        let encoded =
            SigningKey::from_secret(&format!("whsec_{}", STANDARD.encode("s3cret-token"))).unwrap();
        assert_eq!(sign(&plain, "id", 1, b"x"), sign(&encoded, "id", 1, b"x"));

        assert!(matches!(
            SigningKey::from_secret(""),
            Err(SigningError::Empty)
        ));
        assert!(matches!(
            SigningKey::from_secret("whsec_"),
            Err(SigningError::Empty)
        ));
        assert!(matches!(
            SigningKey::from_secret("whsec_not base64!"),
            Err(SigningError::InvalidBase64(_))
        ));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = SigningKey::from_secret("plain-secret-value").unwrap();
        let printed = format!("{key:?}");
        assert!(!printed.contains("plain-secret-value"), "{printed}");
        assert_eq!(printed, "SigningKey(<redacted>)");
    }
}
