//! Credentials sealed at rest: [`SecretsKeyring`] (the configured `secrets_key`) and the sealed
//! form of one stored credential value.
//!
//! - [`SecretsKeyring::parse`]: `id:base64(32 bytes)[,id:base64(32 bytes)...]`; the first key seals,
//!   every key opens.
//! - [`is_sealed`], [`SEALED_PREFIX`]: whether a stored value is sealed (`enc:v1:<key id>:<base64>`);
//!   defined with the policy model, whose validation needs them, and re-exported here.
//! - `seal_targets` / `open_targets`: a policy's targets as written to and read from the
//!   `targets` column; `reseal_stored` is `regrelay migrate --reencrypt`'s per-row step.
//!
//! Design constraints:
//! - The cipher is ChaCha20-Poly1305 (RustCrypto `chacha20poly1305`), a fresh random 96-bit nonce
//!   per value (`OsRng`): values are few and small, so random nonces are far from their bound.
//! - A sealed value is bound to its place by the associated data `regrelay/v1/policy/<id>/<field>`
//!   (field: `auth_header`, `secret`, `header/<name>`): copied to another policy or field in the
//!   table, it no longer opens. The policy id is known before the insert (the store takes it from
//!   the identity sequence first), so every value is bound to its policy.
//! - A value without the prefix is plain text: rows written before a key was configured, or with
//!   none. They are read as they are and sealed on their next write or by `--reencrypt`.
//! - A value that does not open (no key configured, an unknown key id, the wrong key, a damaged
//!   value) is left sealed in the loaded [`Target`]: [`Target::unreadable_credential`] names it, the
//!   consumer dead-letters deliveries to that target instead of sending ciphertext, the API shows
//!   `********` as for any credential, and a write that keeps it (`********` sent back) stores the
//!   sealed text unchanged. Loading never fails because of one: one bad row must not stop the
//!   consumer's reload of every other policy.
//! - Key material is never shown: `Debug` of a keyring lists its key ids, errors name the key id or
//!   the position of the bad entry, never its text.
//! - Empty values are not sealed: there is nothing to hide, and "empty" keeps meaning "not set".

use std::collections::BTreeSet;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

pub use crate::policy::{is_sealed, SEALED_PREFIX};
use crate::policy::{PolicyError, Target};

/// Longest key id.
pub const MAX_KEY_ID_CHARS: usize = 32;
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// The configured keys: the first seals, all open. Built once at start-up from `secrets_key`.
pub struct SecretsKeyring {
    /// In configuration order; never empty.
    keys: Vec<(String, ChaCha20Poly1305)>,
}

/// Why `secrets_key` cannot be used. The text names an entry by position or id, never its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("is empty; give one or more comma-separated <key id>:<base64 of 32 bytes> entries")]
    Empty,
    #[error("entry {0} is not <key id>:<base64 of 32 bytes>")]
    Malformed(usize),
    #[error("entry {0}: the key id must be 1 to {MAX_KEY_ID_CHARS} characters of A-Z, a-z, 0-9, '-' or '_'")]
    BadKeyId(usize),
    #[error("key {0}: the key is not valid base64")]
    NotBase64(String),
    #[error("key {id}: the key is {bytes} bytes; it must be exactly 32 (e.g. `openssl rand -base64 32`)")]
    WrongLength { id: String, bytes: usize },
    #[error("key id {0} is given more than once")]
    DuplicateId(String),
}

/// Why one stored value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("it is sealed with key {0}, but no secrets_key is configured")]
    NoKeyring(String),
    #[error("it is sealed with key {0}, which is not among the configured secrets_key ids")]
    UnknownKey(String),
    #[error(
        "it does not decrypt with key {0}: a wrong key under that id, or an altered or moved value"
    )]
    Undecryptable(String),
    #[error("its sealed form is damaged")]
    Damaged,
}

/// One value that stayed sealed on load or on `--reencrypt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableValue {
    pub policy_id: i64,
    /// The place, e.g. `auth_header`, `secret` or `header/X-Token`.
    pub field: String,
    pub error: OpenError,
}

impl SecretsKeyring {
    /// Parses `secrets_key`: comma-separated `<key id>:<base64 of 32 bytes>` entries, the sealing
    /// key first. Whitespace around entries is ignored.
    pub fn parse(text: &str) -> Result<SecretsKeyring, KeyringError> {
        let mut keys = Vec::new();
        let mut ids = BTreeSet::new();
        for (index, entry) in text.split(',').map(str::trim).enumerate() {
            if entry.is_empty() && text.trim().is_empty() {
                return Err(KeyringError::Empty);
            }
            let position = index + 1;
            let (id, key) = entry
                .split_once(':')
                .ok_or(KeyringError::Malformed(position))?;
            if id.is_empty()
                || id.chars().count() > MAX_KEY_ID_CHARS
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(KeyringError::BadKeyId(position));
            }
            let bytes = STANDARD
                .decode(key.trim())
                .map_err(|_| KeyringError::NotBase64(id.to_owned()))?;
            if bytes.len() != KEY_BYTES {
                return Err(KeyringError::WrongLength {
                    id: id.to_owned(),
                    bytes: bytes.len(),
                });
            }
            if !ids.insert(id.to_owned()) {
                return Err(KeyringError::DuplicateId(id.to_owned()));
            }
            let cipher = ChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| KeyringError::Malformed(position))?;
            keys.push((id.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(SecretsKeyring { keys })
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Every key id, the sealing one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// `enc:v1:<current key id>:<base64(nonce || ciphertext)>`, bound to `place`.
    fn seal(&self, place: &[u8], plaintext: &str) -> Result<String, PolicyError> {
        let (id, cipher) = &self.keys[0];
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: place,
                },
            )
            // Only a plaintext beyond the cipher's 256 GiB bound fails; credentials are 4 KiB.
            .map_err(|_| PolicyError::Unsealable)?;
        let mut joined = Vec::with_capacity(NONCE_BYTES + sealed.len());
        joined.extend_from_slice(&nonce);
        joined.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{id}:{}", STANDARD.encode(joined)))
    }

    fn open(&self, place: &[u8], sealed: &str) -> Result<String, OpenError> {
        let (id, body) = split_sealed(sealed)?;
        let cipher = self
            .keys
            .iter()
            .find(|(key_id, _)| key_id == id)
            .map(|(_, cipher)| cipher)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let bytes = STANDARD.decode(body).map_err(|_| OpenError::Damaged)?;
        if bytes.len() < NONCE_BYTES {
            return Err(OpenError::Damaged);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: place,
                },
            )
            .map_err(|_| OpenError::Undecryptable(id.to_owned()))?;
        String::from_utf8(plaintext).map_err(|_| OpenError::Damaged)
    }
}

impl fmt::Debug for SecretsKeyring {
    /// Key ids only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsKeyring")
            .field("key_ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

/// `(key id, base64 body)` of a sealed value.
fn split_sealed(sealed: &str) -> Result<(&str, &str), OpenError> {
    sealed
        .strip_prefix(SEALED_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or(OpenError::Damaged)
}

/// The key id a sealed value names, if it has one (for messages).
fn key_id_of(sealed: &str) -> String {
    split_sealed(sealed).map_or_else(|_| "?".to_owned(), |(id, _)| id.to_owned())
}

/// The associated data binding a value to its place.
fn place(policy_id: i64, field: &str) -> Vec<u8> {
    format!("regrelay/v1/policy/{policy_id}/{field}").into_bytes()
}

/// Opens one stored value: plain text as it is, a sealed value with its key. `Err` keeps the text.
fn open_value(
    keyring: Option<&SecretsKeyring>,
    policy_id: i64,
    field: &str,
    stored: &str,
) -> Result<String, OpenError> {
    if !is_sealed(stored) {
        return Ok(stored.to_owned());
    }
    match keyring {
        Some(keyring) => keyring.open(&place(policy_id, field), stored),
        None => Err(OpenError::NoKeyring(key_id_of(stored))),
    }
}

/// Every credential of a target, with its place name, for reading and rewriting in place.
fn for_each_credential(
    target: &mut Target,
    mut visit: impl FnMut(&str, &mut String) -> Result<(), PolicyError>,
) -> Result<(), PolicyError> {
    if let Some(value) = target.auth_header.as_mut() {
        visit("auth_header", value)?;
    }
    if let Some(value) = target.secret.as_mut() {
        visit("secret", value)?;
    }
    if let Some(value) = target.options.bot_token.as_mut() {
        visit("bot_token", value)?;
    }
    for (name, value) in target.headers.iter_mut() {
        visit(&format!("header/{name}"), value)?;
    }
    Ok(())
}

/// The targets as loaded: sealed values opened; those that do not open are left sealed and
/// returned, so the caller can log them (the policy stays loadable).
pub(crate) fn open_targets(
    keyring: Option<&SecretsKeyring>,
    policy_id: i64,
    targets: &mut [Target],
) -> Vec<UnreadableValue> {
    let mut unreadable = Vec::new();
    for target in targets.iter_mut() {
        // The visitor never fails.
        let _ = for_each_credential(target, |field, value| {
            match open_value(keyring, policy_id, field, value) {
                Ok(plain) => *value = plain,
                Err(error) => unreadable.push(UnreadableValue {
                    policy_id,
                    field: field.to_owned(),
                    error,
                }),
            }
            Ok(())
        });
    }
    unreadable
}

/// The targets as written: with a keyring, every non-empty credential sealed with the current key
/// (a fresh nonce each time); without one, as given (today's plain text). A value that is still
/// sealed (one that did not open on load, kept by the client's `********`) is stored unchanged, if
/// it is one of `stored_sealed` (the row's sealed values before this write); a sealed value that
/// opens for this place is resealed; any other sealed-looking value is refused, so a client cannot
/// plant a value that would only ever dead-letter.
pub(crate) fn seal_targets(
    keyring: Option<&SecretsKeyring>,
    policy_id: i64,
    targets: &[Target],
    stored_sealed: &BTreeSet<String>,
) -> Result<Vec<Target>, PolicyError> {
    let mut sealed = targets.to_vec();
    for target in sealed.iter_mut() {
        for_each_credential(target, |field, value| {
            if value.is_empty() {
                return Ok(());
            }
            let plain = if is_sealed(value) {
                match open_value(keyring, policy_id, field, value) {
                    Ok(plain) => plain,
                    Err(_) if stored_sealed.contains(value.as_str()) => return Ok(()),
                    Err(_) => return Err(PolicyError::SealedLookingValue(field_kind(field))),
                }
            } else {
                value.clone()
            };
            if let Some(keyring) = keyring {
                *value = keyring.seal(&place(policy_id, field), &plain)?;
            }
            Ok(())
        })?;
    }
    Ok(sealed)
}

/// Every sealed value of stored targets (what a write may keep unchanged).
pub(crate) fn sealed_values(targets: &[Target]) -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    for target in targets {
        let mut target = target.clone();
        let _ = for_each_credential(&mut target, |_, value| {
            if is_sealed(value) {
                values.insert(value.clone());
            }
            Ok(())
        });
    }
    values
}

/// `regrelay migrate --reencrypt`'s step for one row: every credential sealed with the current key.
/// `Ok(None)` when nothing changes (every value already sealed with it, or empty); values that do
/// not open stay as they are and are added to `unreadable`.
pub(crate) fn reseal_stored(
    keyring: &SecretsKeyring,
    policy_id: i64,
    targets: &[Target],
    unreadable: &mut Vec<UnreadableValue>,
) -> Result<Option<Vec<Target>>, PolicyError> {
    let mut changed = false;
    let mut resealed = targets.to_vec();
    let current = format!("{SEALED_PREFIX}{}:", keyring.current_id());
    for target in resealed.iter_mut() {
        for_each_credential(target, |field, value| {
            if value.is_empty() || value.starts_with(&current) {
                return Ok(());
            }
            match open_value(Some(keyring), policy_id, field, value) {
                Ok(plain) => {
                    *value = keyring.seal(&place(policy_id, field), &plain)?;
                    changed = true;
                }
                Err(error) => unreadable.push(UnreadableValue {
                    policy_id,
                    field: field.to_owned(),
                    error,
                }),
            }
            Ok(())
        })?;
    }
    Ok(changed.then_some(resealed))
}

/// The field's kind for a message (`header/X` → "a custom header value"), never the value.
fn field_kind(field: &str) -> &'static str {
    match field {
        "auth_header" => "auth_header",
        "secret" => "secret",
        "bot_token" => "bot_token",
        _ => "a custom header value",
    }
}

impl Target {
    /// The first credential of this target that is still sealed after loading, i.e. that could
    /// not be decrypted (see the module's design constraints): the target cannot be called.
    pub fn unreadable_credential(&self) -> Option<&'static str> {
        if self.auth_header.as_deref().is_some_and(is_sealed) {
            return Some("auth_header");
        }
        if self.secret.as_deref().is_some_and(is_sealed) {
            return Some("secret");
        }
        if self.options.bot_token.as_deref().is_some_and(is_sealed) {
            return Some("bot_token");
        }
        self.headers
            .values()
            .any(|v| is_sealed(v))
            .then_some("a custom header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PayloadFormat, TargetKind};

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn target() -> Target {
        Target {
            kind: TargetKind::Http,
            address: "https://example.com/hook".into(),
            auth_header: Some("Bearer top-secret".into()),
            skip_cert_verify: false,
            payload_format: PayloadFormat::Default,
            secret: Some("whsec_c2lnbmluZw==".into()),
            headers: [("X-Token".to_owned(), "header-secret".to_owned())]
                .into_iter()
                .collect(),
            options: Default::default(),
        }
    }

    fn ring(text: &str) -> SecretsKeyring {
        SecretsKeyring::parse(text).unwrap()
    }

    #[test]
    fn keyring_parsing_names_the_entry_never_the_key() {
        let check = |text: &str, expected: Result<Vec<&str>, &str>| {
            let got = SecretsKeyring::parse(text)
                .map(|r| r.ids().map(str::to_owned).collect::<Vec<_>>())
                .map_err(|e| e.to_string());
            let expected = expected
                .map(|ids| ids.into_iter().map(str::to_owned).collect::<Vec<_>>())
                .map_err(str::to_owned);
            assert_eq!(got, expected, "{text}");
        };
        check(K1, Ok(vec!["k1"]));
        check(&format!("{K2}, {K1}"), Ok(vec!["k2", "k1"]));
        check(
            "",
            Err("is empty; give one or more comma-separated <key id>:<base64 of 32 bytes> entries"),
        );
        check(
            "  ",
            Err("is empty; give one or more comma-separated <key id>:<base64 of 32 bytes> entries"),
        );
        check(
            "c2VjcmV0",
            Err("entry 1 is not <key id>:<base64 of 32 bytes>"),
        );
        check(
            &format!("{K1},"),
            Err("entry 2 is not <key id>:<base64 of 32 bytes>"),
        );
        check(
            "k 1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            Err("entry 1: the key id must be 1 to 32 characters of A-Z, a-z, 0-9, '-' or '_'"),
        );
        check("k1:not base64!", Err("key k1: the key is not valid base64"));
        check(
            "k1:c2hvcnQ=",
            Err("key k1: the key is 5 bytes; it must be exactly 32 (e.g. `openssl rand -base64 32`)"),
        );
        check(
            &format!("{K1},{K1}"),
            Err("key id k1 is given more than once"),
        );
        let debug = format!("{:?}", ring(K1));
        assert_eq!(debug, "SecretsKeyring { key_ids: [\"k1\"] }");
    }

    #[test]
    fn sealed_targets_hide_every_credential_and_open_again() {
        let keyring = ring(K1);
        let sealed = seal_targets(Some(&keyring), 7, &[target()], &BTreeSet::new()).unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        for plain in ["top-secret", "whsec_c2lnbmluZw==", "header-secret"] {
            assert!(!json.contains(plain), "{json}");
        }
        assert!(sealed[0]
            .auth_header
            .as_deref()
            .unwrap()
            .starts_with("enc:v1:k1:"));
        assert_eq!(sealed[0].address, "https://example.com/hook");
        let mut opened = sealed.clone();
        assert_eq!(open_targets(Some(&keyring), 7, &mut opened), vec![]);
        assert_eq!(opened, vec![target()]);
        // A fresh nonce each time.
        let again = seal_targets(Some(&keyring), 7, &[target()], &BTreeSet::new()).unwrap();
        assert_ne!(again[0].auth_header, sealed[0].auth_header);
    }

    #[test]
    fn a_value_moved_to_another_policy_or_field_does_not_open() {
        let keyring = ring(K1);
        let sealed = seal_targets(Some(&keyring), 7, &[target()], &BTreeSet::new()).unwrap();
        let mut other_policy = sealed.clone();
        let unreadable = open_targets(Some(&keyring), 8, &mut other_policy);
        assert_eq!(unreadable.len(), 3);
        assert_eq!(unreadable[0].error, OpenError::Undecryptable("k1".into()));
        assert_eq!(other_policy[0].unreadable_credential(), Some("auth_header"));
        let mut swapped = sealed.clone();
        swapped[0].secret = sealed[0].auth_header.clone();
        swapped[0].auth_header = sealed[0].secret.clone();
        let unreadable = open_targets(Some(&keyring), 7, &mut swapped);
        let fields: Vec<_> = unreadable.iter().map(|u| u.field.as_str()).collect();
        assert_eq!(fields, ["auth_header", "secret"]);
    }

    #[test]
    fn rotation_and_missing_keys() {
        let old = ring(K1);
        let sealed = seal_targets(Some(&old), 1, &[target()], &BTreeSet::new()).unwrap();
        // k2 seals now, k1 still opens.
        let both = ring(&format!("{K2},{K1}"));
        let mut opened = sealed.clone();
        assert!(open_targets(Some(&both), 1, &mut opened).is_empty());
        assert_eq!(opened, vec![target()]);
        let mut unreadable = Vec::new();
        let resealed = reseal_stored(&both, 1, &sealed, &mut unreadable)
            .unwrap()
            .unwrap();
        assert!(unreadable.is_empty());
        assert!(resealed[0]
            .secret
            .as_deref()
            .unwrap()
            .starts_with("enc:v1:k2:"));
        // Already under the current key: nothing to do.
        assert_eq!(
            reseal_stored(&both, 1, &resealed, &mut unreadable).unwrap(),
            None
        );
        // k1 gone: the resealed row opens with k2 alone, the old one does not.
        let new = ring(K2);
        let mut opened = resealed.clone();
        assert!(open_targets(Some(&new), 1, &mut opened).is_empty());
        assert_eq!(opened, vec![target()]);
        let mut stale = sealed.clone();
        let errors = open_targets(Some(&new), 1, &mut stale);
        assert_eq!(errors[0].error, OpenError::UnknownKey("k1".into()));
        assert_eq!(
            errors[0].error.to_string(),
            "it is sealed with key k1, which is not among the configured secrets_key ids"
        );
        assert_eq!(stale, sealed, "values that do not open stay sealed");
        let mut no_key = sealed.clone();
        let errors = open_targets(None, 1, &mut no_key);
        assert_eq!(errors[0].error, OpenError::NoKeyring("k1".into()));
        // Plain text (a row from before the key) reads as it is, with or without a key.
        let mut plain = vec![target()];
        assert!(open_targets(Some(&new), 1, &mut plain).is_empty());
        assert!(open_targets(None, 1, &mut plain).is_empty());
        assert_eq!(plain, vec![target()]);
    }

    #[test]
    fn writes_keep_unreadable_stored_values_and_refuse_planted_ones() {
        let old = ring(K1);
        let sealed = seal_targets(Some(&old), 1, &[target()], &BTreeSet::new()).unwrap();
        let new = ring(K2);
        let mut loaded = sealed.clone();
        let _ = open_targets(Some(&new), 1, &mut loaded);
        // Written back as loaded (`********` kept every credential): unchanged, still sealed.
        let stored = sealed_values(&sealed);
        let written = seal_targets(Some(&new), 1, &loaded, &stored).unwrap();
        assert_eq!(written, sealed);
        // The same text sent by a client for a new policy is refused.
        assert_eq!(
            seal_targets(Some(&new), 2, &loaded, &BTreeSet::new()),
            Err(PolicyError::SealedLookingValue("auth_header"))
        );
        // Without a key, plain text is stored as given.
        assert_eq!(
            seal_targets(None, 1, &[target()], &BTreeSet::new()).unwrap(),
            vec![target()]
        );
        let mut empty = target();
        empty.auth_header = Some(String::new());
        let written = seal_targets(Some(&new), 1, &[empty], &BTreeSet::new()).unwrap();
        assert_eq!(written[0].auth_header.as_deref(), Some(""));
    }
}
