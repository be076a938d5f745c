//! The bounds an accepted event keeps. Validation ([`crate::event`], [`crate::distribution`])
//! enforces them and the refusal messages ([`crate::error`]) quote them, so they live below both.

/// Longest project name accepted, in characters: Harbor's limit (1–255), and the `projects`
/// table's. Longer names are refused at ingest (422), so every accepted event can be stored,
/// matched and routed.
pub const MAX_PROJECT_CHARS: usize = 255;

/// The largest accepted `occur_at`: 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
pub(crate) const MAX_OCCUR_AT: i64 = 253_402_300_799;
