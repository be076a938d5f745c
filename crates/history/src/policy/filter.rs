//! Repository and tag filters with Tencent TCR's glob rules (SPEC §4, seed 004).
//!
//! Design constraints:
//! - The rules are TCR's: `*` is any run of characters within one path segment (never `/`), `**`
//!   any run including `/` (as a whole segment; `path**` means `path*`), `?` one character other
//!   than `/`, `{a,b}` alternatives (spaces after the commas, as TCR's examples write them, are
//!   ignored). `globset` with `literal_separator(true)` implements exactly that.
//! - Repository patterns are written relative to the project (TCR writes `/path*`; the leading `/`
//!   is optional), and may also name the full repository (`library/**`), which is what a system-wide
//!   policy needs: a pattern matches if it matches either form.
//! - An empty list matches everything. A non-empty repository filter never matches an event without
//!   a repository (REPLICATION, TAG_RETENTION); a non-empty tag filter never matches an event
//!   without tags.
//! - Matching is pure and allocation-free, because it runs for every (event, policy) pair.

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use super::error::PolicyError;
use super::model::Filters;

/// [`Filters`] compiled once, for matching many events.
#[derive(Debug, Clone)]
pub struct CompiledFilters {
    /// `None`: no repository filter.
    repositories: Option<GlobSet>,
    /// `None`: no tag filter.
    tags: Option<GlobSet>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FilterKind {
    Repository,
    Tag,
}

impl CompiledFilters {
    pub fn compile(filters: &Filters) -> Result<Self, PolicyError> {
        Ok(Self {
            repositories: compile_set(&filters.repositories, FilterKind::Repository)?,
            tags: compile_set(&filters.tags, FilterKind::Tag)?,
        })
    }

    /// Whether an event passes both filters. `repository` is the full name (`library/foo/bar`),
    /// `project` the event's project (`library`), `tags` the event's tags.
    pub fn matches(&self, repository: Option<&str>, project: &str, tags: &[String]) -> bool {
        self.repository_matches(repository, project) && self.tags_match(tags)
    }

    fn repository_matches(&self, repository: Option<&str>, project: &str) -> bool {
        let Some(set) = &self.repositories else {
            return true;
        };
        let Some(full) = repository else {
            return false;
        };
        let relative = full
            .strip_prefix(project)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|rest| !rest.is_empty());
        set.is_match_candidate(&Candidate::new(full))
            || relative.is_some_and(|r| set.is_match_candidate(&Candidate::new(r)))
    }

    fn tags_match(&self, tags: &[String]) -> bool {
        match &self.tags {
            None => true,
            Some(set) => tags.iter().any(|tag| set.is_match(tag.as_str())),
        }
    }
}

fn compile_set(patterns: &[String], kind: FilterKind) -> Result<Option<GlobSet>, PolicyError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let invalid = |pattern: &str, reason: String| match kind {
        FilterKind::Repository => PolicyError::InvalidRepositoryFilter {
            pattern: pattern.to_owned(),
            reason,
        },
        FilterKind::Tag => PolicyError::InvalidTagFilter {
            pattern: pattern.to_owned(),
            reason,
        },
    };
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let normalised = normalise(pattern, kind);
        if normalised.is_empty() {
            return Err(invalid(pattern, "empty pattern".to_owned()));
        }
        let glob = GlobBuilder::new(&normalised)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| invalid(pattern, e.kind().to_string()))?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| invalid(&patterns.join(", "), e.kind().to_string()))
}

/// Trims the pattern, drops a repository pattern's leading `/` (TCR writes `/path*`) and whitespace
/// inside `{...}` (TCR writes `{path1, path2}`); names never contain whitespace.
fn normalise(pattern: &str, kind: FilterKind) -> String {
    let trimmed = pattern.trim();
    let trimmed = match kind {
        FilterKind::Repository => trimmed.strip_prefix('/').unwrap_or(trimmed),
        FilterKind::Tag => trimmed,
    };
    let mut out = String::with_capacity(trimmed.len());
    let mut depth = 0usize;
    let mut escaped = false;
    for c in trimmed.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '{' {
            depth += 1;
        } else if c == '}' {
            depth = depth.saturating_sub(1);
        } else if depth > 0 && c.is_whitespace() {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(repositories: &[&str], tags: &[&str]) -> CompiledFilters {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        CompiledFilters::compile(&Filters {
            repositories: owned(repositories),
            tags: owned(tags),
        })
        .unwrap()
    }

    /// Repository filter `patterns` against the repository `full` (`None`: an event without one) in
    /// project `library`.
    fn check(patterns: &[&str], full: Option<&str>, expected: bool) {
        let got = filters(patterns, &[]).matches(full, "library", &[]);
        assert_eq!(got, expected, "patterns {patterns:?} against {full:?}");
    }

    fn check_tags(patterns: &[&str], tags: &[&str], expected: bool) {
        let tags: Vec<String> = tags.iter().map(|s| (*s).to_owned()).collect();
        let got = filters(&[], patterns).matches(Some("library/app"), "library", &tags);
        assert_eq!(got, expected, "patterns {patterns:?} against tags {tags:?}");
    }

    #[test]
    fn empty_filters_match_everything() {
        check(&[], Some("library/foo"), true);
        check(&[], None, true);
        check_tags(&[], &[], true);
        check_tags(&[], &["v1"], true);
    }

    #[test]
    fn tcr_repository_rules() {
        // `**` or nothing: every repository of the project.
        check(&["**"], Some("library/foo"), true);
        check(&["**"], Some("library/foo/bar"), true);
        // `*` stays within a segment.
        check(&["*"], Some("library/foo"), true);
        check(&["*"], Some("library/foo/bar"), false);
        // `/path*`: one-level repositories whose name starts with path.
        check(&["/path*"], Some("library/path"), true);
        check(&["/path*"], Some("library/pathology"), true);
        check(&["/path*"], Some("library/path/sub"), false);
        check(&["/path*"], Some("library/other"), false);
        // `/path**` is the same as `/path*`.
        check(&["/path**"], Some("library/pathx"), true);
        check(&["/path**"], Some("library/pathx/sub"), false);
        // `/path/**`: everything under path.
        check(&["/path/**"], Some("library/path/a"), true);
        check(&["/path/**"], Some("library/path/a/b"), true);
        check(&["/path/**"], Some("library/pathx/a"), false);
        // `/{path1, path2}*`: one-level repositories with either prefix.
        check(&["/{path1, path2}*"], Some("library/path1x"), true);
        check(&["/{path1, path2}*"], Some("library/path2"), true);
        check(&["/{path1, path2}*"], Some("library/path3"), false);
        check(&["/{path1, path2}*"], Some("library/path1/x"), false);
        // `/{path1, path2}/**`: everything under either.
        check(&["/{path1, path2}/**"], Some("library/path2/a/b"), true);
        check(&["/{path1, path2}/**"], Some("library/path1x/a"), false);
        // `/{path1, path2}*/**`: everything under a directory with either prefix.
        check(&["/{path1, path2}*/**"], Some("library/path1x/a/b"), true);
        check(&["/{path1, path2}*/**"], Some("library/path3/a"), false);
        // `?` is one character, never `/`.
        check(&["fo?"], Some("library/foo"), true);
        check(&["fo?"], Some("library/fooo"), false);
        check(&["a?b"], Some("library/a/b"), false);
    }

    #[test]
    fn repository_patterns_match_the_relative_or_the_full_name() {
        check(&["foo/bar"], Some("library/foo/bar"), true);
        check(&["library/foo/bar"], Some("library/foo/bar"), true);
        check(&["library/**"], Some("library/foo/bar"), true);
        check(&["other/**"], Some("library/foo/bar"), false);
        check(&["foo"], Some("library/foo/bar"), false);
        // Any pattern of the list.
        check(&["nope", "foo/*"], Some("library/foo/bar"), true);
        // The project name alone is not a repository of it.
        check(&["library"], Some("libraryx/foo"), false);
        // Matching is case-sensitive (repository names are lowercase).
        check(&["Foo"], Some("library/foo"), false);
    }

    #[test]
    fn events_without_a_repository_match_only_an_empty_repository_filter() {
        check(&["**"], None, false);
        check(&[], None, true);
    }

    #[test]
    fn tag_rules() {
        check_tags(&["1.?"], &["1.x"], true);
        check_tags(&["1.?"], &["1.10"], false);
        check_tags(&["v*"], &["latest", "v2"], true);
        check_tags(&["v*"], &["latest"], false);
        check_tags(&["{env1, env2}"], &["env2"], true);
        check_tags(&["{env1, env2}"], &["env3"], false);
        check_tags(&["{env1,env2}*"], &["env1-prod"], true);
        check_tags(&["**"], &[], false);
        check_tags(&["latest"], &[], false);
        check_tags(&["sha256:*"], &["sha256:abc"], true);
    }

    #[test]
    fn both_filters_must_match() {
        let f = filters(&["foo"], &["v*"]);
        assert!(f.matches(Some("library/foo"), "library", &["v1".to_owned()]));
        assert!(!f.matches(Some("library/foo"), "library", &["latest".to_owned()]));
        assert!(!f.matches(Some("library/bar"), "library", &["v1".to_owned()]));
    }

    #[test]
    fn normalisation() {
        let n = |p: &str, kind| normalise(p, kind);
        assert_eq!(n("/{a, b}*", FilterKind::Repository), "{a,b}*");
        assert_eq!(n(" /x ", FilterKind::Repository), "x");
        assert_eq!(n("/x", FilterKind::Tag), "/x");
        assert_eq!(n(r"\{ a}", FilterKind::Tag), r"\{ a}");
    }
}
