//! One attempt as one line of a task's log ([`format_log_line`]). No I/O.

use chrono::{DateTime, SecondsFormat, Utc};

/// One line of a task's log: `2026-11-24T20:00:00.000Z attempt 1: HTTP 503 in 12 ms: <snippet>`.
/// Line breaks in the error or the snippet are escaped, so one attempt is always one line.
pub fn format_log_line(
    attempt: i32,
    time: DateTime<Utc>,
    status_code: Option<i32>,
    error: Option<&str>,
    duration_ms: i64,
    response_snippet: Option<&str>,
) -> String {
    let mut line = format!(
        "{} attempt {attempt}: ",
        time.to_rfc3339_opts(SecondsFormat::Millis, true)
    );
    match status_code {
        Some(code) => line.push_str(&format!("HTTP {code}")),
        None => line.push_str("no response"),
    }
    line.push_str(&format!(" in {duration_ms} ms"));
    if let Some(error) = error.filter(|e| !e.is_empty()) {
        line.push_str(": ");
        line.push_str(&one_line(error));
    }
    if let Some(snippet) = response_snippet.filter(|s| !s.is_empty()) {
        line.push_str(if error.is_some_and(|e| !e.is_empty()) {
            "; response: "
        } else {
            ": "
        });
        line.push_str(&one_line(snippet));
    }
    line
}

/// `\n`, `\r` and `\t` written as escapes; other control characters dropped.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_read_well_and_stay_one_line() {
        let at: DateTime<Utc> = "2026-11-24T20:00:00Z".parse().unwrap();
        let check = |line: String, expected: &str| assert_eq!(line, expected);
        check(
            format_log_line(1, at, Some(503), None, 12, Some("busy")),
            "2026-11-24T20:00:00.000Z attempt 1: HTTP 503 in 12 ms: busy",
        );
        check(
            format_log_line(2, at, None, Some("connection refused"), 3, None),
            "2026-11-24T20:00:00.000Z attempt 2: no response in 3 ms: connection refused",
        );
        check(
            format_log_line(3, at, Some(200), None, 40, None),
            "2026-11-24T20:00:00.000Z attempt 3: HTTP 200 in 40 ms",
        );
        check(
            format_log_line(4, at, Some(500), Some("boom"), 5, Some("a\nb\r\u{7}c")),
            "2026-11-24T20:00:00.000Z attempt 4: HTTP 500 in 5 ms: boom; response: a\\nb\\rc",
        );
    }
}
