//! The maxima a policy keeps (docs/delivery.md, "Limits"). Validation enforces them and the
//! messages of [`PolicyError`](super::PolicyError) quote them, so they live below both.

/// Longest policy name accepted (Harbor's column is `varchar(256)`).
pub const MAX_NAME_CHARS: usize = 256;
/// Longest description accepted.
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
/// Most targets of one policy (one event makes one delivery per target).
pub const MAX_TARGETS: usize = 32;
/// Longest target address.
pub const MAX_ADDRESS_CHARS: usize = 2048;
/// Most custom headers of one target.
pub const MAX_HEADERS: usize = 32;
/// Longest custom header name.
pub const MAX_HEADER_NAME_CHARS: usize = 256;
/// Longest custom header value, `auth_header` and signing secret, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
/// Most patterns per filter list (`repositories`, `tags`).
pub const MAX_FILTER_PATTERNS: usize = 64;
/// Longest filter pattern.
pub const MAX_FILTER_PATTERN_CHARS: usize = 256;
/// Longest piece of a caller's text quoted in an error message or a log line
/// ([`echo`](super::echo)).
pub const ECHO_MAX_CHARS: usize = 128;
/// Longest `template` of a target, in bytes (a message or a body template; a render is bounded
/// separately, in `regrelay_targets::templates`).
pub const MAX_TEMPLATE_BYTES: usize = 32 * 1024;
/// Longest of a target's short options (`bot_token`, `chat_id`, `content_type`, `method`,
/// `rate_limit`), in bytes.
pub const MAX_OPTION_BYTES: usize = 256;
