//! The webhook policy model and its validation. No I/O.
//!
//! - `model`: [`PolicySpec`] (what a client writes), [`Policy`] (a stored policy, as `api` shows
//!   it and `consumer` matches and delivers it) and its [`Project`]; [`Target`], [`TargetKind`],
//!   [`PayloadFormat`]: where a policy delivers, and in which format; [`parse_event_types`]: event
//!   type names to [`EventType`](regrelay_events::EventType)s, Harbor's message on an unknown one;
//!   [`is_sealed`], [`SEALED_PREFIX`]: the form of a credential sealed at rest (`sealing` seals
//!   and opens it; validation needs only to recognise it).
//! - `validation`: [`PolicySpec::validate`] applies Harbor's rules, with Harbor's messages, and
//!   regrelay's own (custom headers, [`RESERVED_HEADERS`], filters).
//! - `error`: [`PolicyError`], the messages; [`echo`] (and [`clip`]): a caller's text made safe to
//!   quote in an error message or a log line.
//! - `limits`: the maxima ([`MAX_TARGETS`], ...), below both `validation` and `error`.
//! - `redaction`: [`REDACTED`], [`redact_address`] and the `Debug` of a [`Target`]: what may be
//!   shown of a credential.
//! - `filter`: [`Filters`] compiled into [`CompiledFilters`], repository and tag globs with TCR's
//!   rules.
//!
//! Design constraints:
//! - Messages are Harbor's, word for word, where Harbor has one: Harbor's API clients show them to
//!   users, and scripts match on them.
//! - Credentials (`auth_header`, `secret`, custom header values) are plain text in a [`Target`],
//!   because the consumer must send them (the store seals them at rest, see `sealing`; one that
//!   does not decrypt stays sealed, [`Target::unreadable_credential`]); `Debug` of a [`Target`]
//!   redacts them, so a logged policy leaks nothing. The API shows [`REDACTED`] in their place.
//! - A spec that passes [`PolicySpec::validate`] is deliverable: its addresses parse as http(s) URLs,
//!   its headers are valid HTTP and cannot override the headers regrelay sets, its globs compile.
//! - A spec that passes is storable: no text field holds a control character (PostgreSQL refuses
//!   NUL, and a line break in a name or address only ever causes trouble; a description may hold
//!   tabs and line breaks), and every list and text is within the maxima (`limits`, docs/delivery.md,
//!   "Limits"), so a policy's size, and the work one test delivery or one event makes, are bounded.
//! - Messages quote a caller's text through [`echo`] only: cut to [`ECHO_MAX_CHARS`], control
//!   characters replaced, so an error or a log line cannot be made huge or forged.

mod error;
mod filter;
mod limits;
mod model;
mod redaction;
mod validation;

pub use error::{clip, echo, PolicyError};
pub use filter::CompiledFilters;
pub use limits::{
    ECHO_MAX_CHARS, MAX_ADDRESS_CHARS, MAX_DESCRIPTION_CHARS, MAX_FILTER_PATTERNS,
    MAX_FILTER_PATTERN_CHARS, MAX_HEADERS, MAX_HEADER_NAME_CHARS, MAX_HEADER_VALUE_BYTES,
    MAX_NAME_CHARS, MAX_OPTION_BYTES, MAX_TARGETS, MAX_TEMPLATE_BYTES,
};
pub use model::{
    is_sealed, parse_event_types, Filters, PayloadFormat, Policy, PolicySpec, Project, Target,
    TargetKind, TargetOptions, SEALED_PREFIX,
};
pub use redaction::{redact_address, REDACTED};
pub use validation::RESERVED_HEADERS;
