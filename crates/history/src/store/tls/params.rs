//! The TLS parameters of a connection string ([`TlsParams`]): `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey`, taken out of a `postgres://` URL or a libpq `key=value` string
//! ([`split_tls_params`]), the rest left for tokio-postgres as written.

/// The TLS parameters of a connection string, as written.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) sslmode: Option<String>,
    pub(crate) sslrootcert: Option<String>,
    pub(crate) sslcert: Option<String>,
    pub(crate) sslkey: Option<String>,
}

impl TlsParams {
    /// Takes `key` if it is one of ours.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Splits `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a `postgres://` URL (query
/// parameters) or a `key=value` connection string; returns the rest for tokio-postgres.
pub(crate) fn split_tls_params(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // The query starts at the first `?` after the credentials (a password may hold a `?`
        // only percent-encoded, but an `@` marks where the credentials end either way).
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        let search_from = url[after_scheme..]
            .rfind('@')
            .map_or(after_scheme, |i| after_scheme + i + 1);
        let Some(q) = url[search_from..].find('?').map(|i| search_from + i) else {
            return Ok((url.to_owned(), params));
        };
        let mut kept = Vec::new();
        for pair in url[q + 1..].split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !params.take(&percent_decode(key), percent_decode(value)) {
                kept.push(pair);
            }
        }
        let mut rest = url[..q].to_owned();
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        return Ok((rest, params));
    }
    let mut kept = Vec::new();
    for (key, value) in parse_key_values(url)? {
        if !params.take(&key, value.clone()) {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{escaped}'"));
        }
    }
    Ok((kept.join(" "), params))
}

/// libpq's `key=value` syntax, as tokio-postgres parses it: values bare (backslash escapes) or in
/// single quotes (backslash escapes), separated by whitespace, `=` optionally spaced.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if chars.peek().is_some() {
                return Err("invalid connection string: a parameter has no name".into());
            }
            return Ok(out);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "invalid connection string: expected `=` after {key}"
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(format!(
                            "invalid connection string: unterminated quoted value of {key}"
                        ))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(format!("invalid connection string: {key} has no value"));
            }
        }
        out.push((key, value));
    }
}

/// `%XX` escapes decoded, as libpq reads a URL's values; an invalid escape is kept as written.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsParams) {
        split_tls_params(url).unwrap()
    }

    #[test]
    fn tls_parameters_are_taken_out_of_urls() {
        let (rest, params) = split(
            "postgres://u:p%3Fw@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p%3Fw@db:5432/app?application_name=x");
        assert_eq!(params.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let (rest, params) = split("postgresql://db/app?sslmode=require");
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(params.sslmode.as_deref(), Some("require"));
        let (rest, params) = split("postgres://db/app");
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(params, TlsParams::default());
        // A `?` in the password (before the `@`) is not the query.
        let (rest, params) = split("postgres://u:a?b@db/app?sslmode=disable");
        assert_eq!(rest, "postgres://u:a?b@db/app");
        assert_eq!(params.sslmode.as_deref(), Some("disable"));
    }

    #[test]
    fn tls_parameters_are_taken_out_of_key_value_strings() {
        let (rest, params) = split(
            "host=db  sslmode = verify-ca password='it\\'s secret' sslrootcert='/my certs/ca.pem' sslcert=/c.pem sslkey=/k.pem",
        );
        assert_eq!(rest, "host='db' password='it\\'s secret'");
        assert_eq!(params.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/my certs/ca.pem"));
        assert_eq!(params.sslcert.as_deref(), Some("/c.pem"));
        assert_eq!(params.sslkey.as_deref(), Some("/k.pem"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's secret"[..]));
        assert!(split_tls_params("host=db sslmode='x").is_err());
        assert!(split_tls_params("host").is_err());
    }
}
