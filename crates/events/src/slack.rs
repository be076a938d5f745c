//! Harbor's Slack rendering (SPEC §2): a Block Kit body of six `mrkdwn` sections.
//!
//! Three things differ from Harbor's own template, each so that Slack accepts every event:
//! - The body is valid JSON: Harbor pastes the pretty-printed event data into its template with
//!   raw newlines inside the string, which Slack tolerates and strict parsers refuse.
//! - Slack refuses a section whose text is over [`MAX_SECTION_TEXT`] characters, which a scan
//!   report can exceed. The event data block is cut at a line boundary to fit, and ends with a
//!   line [`TRUNCATION_MARKER`] so a reader knows there was more.
//! - `&`, `<` and `>` in the operator and the event data are written as `&amp;`, `&lt;`, `&gt;`,
//!   as Slack asks of message text: otherwise `<...>` would be read as a link or mention.
//!
//! The event data is pretty-printed with a 4-space indent, as in Harbor's documentation (seed
//! 000 and 001), keeping the received key order.

use serde::Serialize;
use serde_json::ser::{PrettyFormatter, Serializer};
use serde_json::{json, Value};

use crate::event::RegistryEvent;

/// The `Content-Type` of a Slack incoming-webhook body.
pub const CONTENT_TYPE: &str = "application/json";

/// Slack's limit on the text of one `section` block, in characters.
pub const MAX_SECTION_TEXT: usize = 3000;

/// The last line of a truncated event data block, before the closing fence.
pub const TRUNCATION_MARKER: &str = "… (truncated)";

const FENCE_OPEN: &str = "```\n";
const FENCE_CLOSE: &str = "\n```";

/// Harbor's Block Kit body `{"blocks":[...]}`, six `section` blocks of `mrkdwn` text:
/// `*Harbor webhook events*`; `*event_type:* <type>`;
/// `*occur_at:* <!date^<occur_at>^{date} at {time}|<fallback>>` (fallback
/// "2023-04-03 06:04:53 UTC", shown by clients that cannot localise); `*operator:* <operator>`;
/// `*event_data:*`; and the event data pretty-printed in a code fence, truncated to fit Slack's
/// limit (see the module docs).
pub fn render(event: &RegistryEvent) -> Vec<u8> {
    let occur_at = event.occur_at();
    let texts = [
        "*Harbor webhook events*".to_owned(),
        format!("*event_type:* {}", event.event_type()),
        format!(
            "*occur_at:* <!date^{occur_at}^{{date}} at {{time}}|{}>",
            crate::time::slack_fallback(occur_at)
        ),
        // A username cannot realistically reach the limit, but one section over it makes Slack
        // refuse the whole message, so it is capped the same way.
        cap_line(&format!("*operator:* {}", escape(event.operator()))),
        "*event_data:*".to_owned(),
        code_block(&pretty(event.event_data_json())),
    ];
    let blocks: Vec<Value> = texts
        .into_iter()
        .map(|text| json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } }))
        .collect();
    // `Value`'s Display is compact JSON and cannot fail, unlike `to_vec`'s signature.
    json!({ "blocks": blocks }).to_string().into_bytes()
}

/// Re-indents JSON text with 4 spaces, keeping key order. The text was validated at ingest, so
/// the raw-text fallback is unreachable in practice; it keeps this infallible.
fn pretty(json: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(json) else {
        return json.to_owned();
    };
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, PrettyFormatter::with_indent(b"    "));
    if value.serialize(&mut ser).is_err() {
        return json.to_owned();
    }
    String::from_utf8(out).unwrap_or_else(|_| json.to_owned())
}

/// Slack's required escaping for message text.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        c => out.push(c),
    }
}

/// The event data in a code fence, at most [`MAX_SECTION_TEXT`] characters in all.
fn code_block(pretty: &str) -> String {
    let escaped = escape(pretty);
    let whole = format!("{FENCE_OPEN}{escaped}{FENCE_CLOSE}");
    if whole.chars().count() <= MAX_SECTION_TEXT {
        return whole;
    }
    let tail = format!("\n{TRUNCATION_MARKER}{FENCE_CLOSE}");
    let budget = MAX_SECTION_TEXT - FENCE_OPEN.chars().count() - tail.chars().count();
    let kept = keep_within(pretty, budget);
    format!("{FENCE_OPEN}{kept}{tail}")
}

/// The longest escaped prefix of `text` that fits in `budget` characters, cut after the last
/// whole line that fits; escaping happens here, char by char, so an entity is never split.
/// Only when not even the first line fits is a line cut in the middle.
fn keep_within(text: &str, budget: usize) -> String {
    let mut out = String::new();
    let mut chars = 0;
    let mut last_newline = None;
    for c in text.chars() {
        let mut piece = String::new();
        push_escaped(&mut piece, c);
        let len = piece.chars().count();
        if chars + len > budget {
            break;
        }
        if c == '\n' {
            last_newline = Some(out.len());
        }
        out.push_str(&piece);
        chars += len;
    }
    if let Some(at) = last_newline {
        out.truncate(at);
    }
    out
}

/// Caps a one-line text at the section limit, marking the cut with an ellipsis.
fn cap_line(text: &str) -> String {
    if text.chars().count() <= MAX_SECTION_TEXT {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_SECTION_TEXT - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_slack_control_characters() {
        assert_eq!(escape("a<b>&c"), "a&lt;b&gt;&amp;c");
    }

    #[test]
    fn short_data_is_not_truncated() {
        assert_eq!(
            code_block("{\n    \"a\": 1\n}"),
            "```\n{\n    \"a\": 1\n}\n```"
        );
    }

    #[test]
    fn truncation_keeps_whole_lines_and_fits() {
        let line = "    \"key\": \"value\",\n";
        let text: String = line.repeat(1000);
        let block = code_block(&text);
        assert!(block.chars().count() <= MAX_SECTION_TEXT);
        assert!(
            block.ends_with("\n    \"key\": \"value\",\n… (truncated)\n```"),
            "{block}"
        );
        // Within one line's length of the limit: nothing that fit was given away.
        assert!(block.chars().count() > MAX_SECTION_TEXT - line.len());
    }

    #[test]
    fn truncation_cuts_an_overlong_single_line_without_splitting_entities() {
        let text = "<".repeat(5000);
        let block = code_block(&text);
        assert!(block.chars().count() <= MAX_SECTION_TEXT);
        let body = block
            .strip_prefix("```\n")
            .and_then(|b| b.strip_suffix("\n… (truncated)\n```"))
            .unwrap();
        assert_eq!(body.len() % 4, 0);
        assert!(body.chars().all(|c| "&lt;".contains(c)));
        assert_eq!(body, "&lt;".repeat(body.len() / 4));
    }

    #[test]
    fn counts_characters_not_bytes() {
        let text = "é\n".repeat(2000);
        let block = code_block(&text);
        assert!(block.chars().count() <= MAX_SECTION_TEXT);
        assert!(block.len() > MAX_SECTION_TEXT);
    }

    #[test]
    fn cap_line_caps() {
        let long = "x".repeat(4000);
        let capped = cap_line(&long);
        assert_eq!(capped.chars().count(), MAX_SECTION_TEXT);
        assert!(capped.ends_with('…'));
        assert_eq!(cap_line("short"), "short");
    }
}
