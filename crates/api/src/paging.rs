//! Harbor's paging: `page` (from 1, default 1) and `page_size` (default 10, at most 100) in, the
//! `X-Total-Count` and `Link` headers out.

use axum::http::{HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::error::{echo, ApiError};

pub const DEFAULT_PAGE_SIZE: u64 = 10;
pub const MAX_PAGE_SIZE: u64 = 100;

/// The paging and listing query parameters Harbor's list endpoints take.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    pub page: Option<String>,
    pub page_size: Option<String>,
    pub q: Option<String>,
    pub sort: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: u64,
    pub size: u64,
}

impl ListParams {
    pub fn page(&self) -> Result<Page, ApiError> {
        let page = parse_positive("page", self.page.as_deref(), 1)?;
        let size = parse_positive("page_size", self.page_size.as_deref(), DEFAULT_PAGE_SIZE)?;
        if size > MAX_PAGE_SIZE {
            return Err(ApiError::BadRequest(format!(
                "page_size must be at most {MAX_PAGE_SIZE}"
            )));
        }
        Ok(Page { page, size })
    }

    /// `key=value` / `key=~value` pairs of Harbor's `q`, comma-separated. A control character
    /// anywhere in `q` is refused (`400`): PostgreSQL refuses NUL, so it must not get that far.
    pub fn query_terms(&self) -> Result<Vec<QueryTerm>, ApiError> {
        let Some(q) = self.q.as_deref().filter(|q| !q.trim().is_empty()) else {
            return Ok(Vec::new());
        };
        if q.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(
                "invalid query: q contains a control character".into(),
            ));
        }
        q.split(',')
            .map(|term| {
                let (key, value) = term.split_once('=').ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "invalid query {:?}: expected key=value",
                        echo(term)
                    ))
                })?;
                let (fuzzy, value) = match value.strip_prefix('~') {
                    Some(rest) => (true, rest),
                    None => (false, value),
                };
                Ok(QueryTerm {
                    key: key.trim().to_owned(),
                    value: value.trim().to_owned(),
                    fuzzy,
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryTerm {
    pub key: String,
    pub value: String,
    /// `key=~value`: a substring match.
    pub fuzzy: bool,
}

fn parse_positive(name: &str, value: Option<&str>, default: u64) -> Result<u64, ApiError> {
    match value {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "{name} must be a positive integer, got {:?}",
                echo(text)
            ))),
        },
    }
}

/// Adds `X-Total-Count` and, when there are neighbouring pages, Harbor's `Link` header:
/// `</path?page=1&page_size=10>; rel="prev" , </path?page=3&page_size=10>; rel="next"`.
pub fn paging_headers(path: &str, params: &ListParams, page: Page, total: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total));
    let link = |n: u64| {
        let mut query = format!("page={n}&page_size={}", page.size);
        for (key, value) in [("q", &params.q), ("sort", &params.sort)] {
            if let Some(value) = value {
                query.push_str(&format!("&{key}={}", encode_query_value(value)));
            }
        }
        format!("<{path}?{query}>")
    };
    let mut links = Vec::new();
    if page.page > 1 && total > 0 {
        links.push(format!("{}; rel=\"prev\"", link(page.page - 1)));
    }
    if page.page.saturating_mul(page.size) < total {
        links.push(format!("{}; rel=\"next\"", link(page.page + 1)));
    }
    if !links.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&links.join(" , ")) {
            headers.insert("link", value);
        }
    }
    headers
}

fn encode_query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'=' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(page: Option<&str>, size: Option<&str>) -> ListParams {
        ListParams {
            page: page.map(str::to_owned),
            page_size: size.map(str::to_owned),
            ..ListParams::default()
        }
    }

    #[test]
    fn pages_are_validated() {
        assert_eq!(
            params(None, None).page().unwrap(),
            Page { page: 1, size: 10 }
        );
        assert_eq!(
            params(Some("3"), Some("100")).page().unwrap(),
            Page { page: 3, size: 100 }
        );
        assert!(params(Some("0"), None).page().is_err());
        assert!(params(None, Some("101")).page().is_err());
        assert!(params(Some("x"), None).page().is_err());
    }

    #[test]
    fn link_header_names_neighbours() {
        let p = params(Some("2"), Some("10"));
        let headers = paging_headers("/x", &p, p.page().unwrap(), 25);
        assert_eq!(headers["x-total-count"], "25");
        assert_eq!(
            headers["link"],
            "</x?page=1&page_size=10>; rel=\"prev\" , </x?page=3&page_size=10>; rel=\"next\""
        );
        let last = params(Some("3"), Some("10"));
        let headers = paging_headers("/x", &last, last.page().unwrap(), 25);
        assert_eq!(headers["link"], "</x?page=2&page_size=10>; rel=\"prev\"");
        let only = params(None, None);
        assert!(!paging_headers("/x", &only, only.page().unwrap(), 5).contains_key("link"));
    }

    #[test]
    fn query_terms_parse() {
        let p = ListParams {
            q: Some("name=~hook,enabled=true".into()),
            ..ListParams::default()
        };
        let terms = p.query_terms().unwrap();
        assert_eq!(
            terms[0],
            QueryTerm {
                key: "name".into(),
                value: "hook".into(),
                fuzzy: true
            }
        );
        assert_eq!(
            terms[1],
            QueryTerm {
                key: "enabled".into(),
                value: "true".into(),
                fuzzy: false
            }
        );
        let bad = ListParams {
            q: Some("name".into()),
            ..ListParams::default()
        };
        assert!(bad.query_terms().is_err());
    }
}
