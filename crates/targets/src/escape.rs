//! One escaper per message dialect: every value taken from an event goes through the escaper of
//! the dialect it lands in, so a repository named `a_b*c[d](e)~f` or a tag `1.0-rc.1+build!`
//! shows as written and can never open, close or inject formatting.
//!
//! Design constraints:
//! - Telegram MarkdownV2 follows Telegram's rules exactly (Bot API, "MarkdownV2 style"): outside
//!   entities every one of ``_*[]()~`>#+-=|{}.!`` and `\` is escaped; inside `code` and `pre` only
//!   `` ` `` and `\`; inside a link's `(...)` only `)` and `\`. Telegram refuses a message with an
//!   unescaped special character (400 "can't parse entities"), so this is a correctness rule, not
//!   a cosmetic one.
//! - The CommonMark-like dialects (DingTalk, WeCom, Teams' Adaptive Card text, Discord) take a
//!   backslash before each character that opens or closes inline formatting there, and before
//!   a block marker (`#`, `>`, `-`, `1.`) at the start of a value. Line breaks in a value become
//!   spaces, so a value never starts a block (a heading, a list, a quote) of its own. These
//!   vendors document their markdown only loosely; CommonMark's backslash escapes are what
//!   their renderers are reported to follow, and escaping no more than needed keeps stray
//!   backslashes out of sight where a renderer ignores one.
//! - Feishu's `lark_md` is escaped with HTML entities, as Feishu's card documentation asks.
//! - Slack mrkdwn needs only `&`, `<`, `>` (Slack's "escaping text" rule).

/// A message dialect: where an escaped value ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Telegram MarkdownV2, outside entities.
    Telegram,
    /// Telegram MarkdownV2, inside `code` or `pre`.
    TelegramCode,
    /// Slack mrkdwn.
    Slack,
    /// DingTalk markdown.
    DingTalk,
    /// WeCom (企业微信) markdown.
    WeCom,
    /// Adaptive Card `TextBlock`/`FactSet` text (Teams' markdown subset).
    Teams,
    /// Discord markdown (message content, embed descriptions and field values).
    Discord,
    /// Feishu/Lark card `lark_md`.
    Feishu,
    /// A JSON string literal, quotes included.
    Json,
}

impl Dialect {
    /// Every dialect, in the order the template filters are documented.
    pub const ALL: [Dialect; 9] = [
        Dialect::Telegram,
        Dialect::TelegramCode,
        Dialect::Slack,
        Dialect::DingTalk,
        Dialect::WeCom,
        Dialect::Teams,
        Dialect::Discord,
        Dialect::Feishu,
        Dialect::Json,
    ];

    /// The name of the template filter that applies this dialect's escaping.
    pub fn filter_name(self) -> &'static str {
        match self {
            Dialect::Telegram => "telegram",
            Dialect::TelegramCode => "telegram_code",
            Dialect::Slack => "slack",
            Dialect::DingTalk => "dingtalk",
            Dialect::WeCom => "wecom",
            Dialect::Teams => "teams",
            Dialect::Discord => "discord",
            Dialect::Feishu => "feishu",
            Dialect::Json => "json",
        }
    }

    /// `text`, escaped for this dialect.
    pub fn escape(self, text: &str) -> String {
        match self {
            Dialect::Telegram => telegram(text),
            Dialect::TelegramCode => telegram_code(text),
            Dialect::Slack => slack(text),
            Dialect::DingTalk => dingtalk(text),
            Dialect::WeCom => wecom(text),
            Dialect::Teams => teams(text),
            Dialect::Discord => discord(text),
            Dialect::Feishu => feishu(text),
            Dialect::Json => json(text),
        }
    }
}

/// The characters Telegram's MarkdownV2 requires escaped outside entities (besides `\`).
pub const TELEGRAM_SPECIAL: &str = "_*[]()~`>#+-=|{}.!";

/// Telegram MarkdownV2 text outside entities.
pub fn telegram(text: &str) -> String {
    backslash(text, |c| c == '\\' || TELEGRAM_SPECIAL.contains(c), false)
}

/// Telegram MarkdownV2 text inside `code` or `pre`.
pub fn telegram_code(text: &str) -> String {
    backslash(text, |c| c == '\\' || c == '`', false)
}

/// Telegram MarkdownV2 text inside the `(...)` of an inline link.
pub fn telegram_link_url(text: &str) -> String {
    backslash(text, |c| c == '\\' || c == ')', false)
}

/// Slack mrkdwn: `&`, `<`, `>` as entities.
pub fn slack(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// DingTalk markdown: the inline formatting characters and the `<` of HTML tags.
pub fn dingtalk(text: &str) -> String {
    markdown(text, "\\`*_[]~<")
}

/// WeCom markdown (its subset: headings, bold, links, code, quotes, `<font>`).
pub fn wecom(text: &str) -> String {
    markdown(text, "\\`*_[]~<")
}

/// Adaptive Card text (Teams renders bold, italic, lists and links).
pub fn teams(text: &str) -> String {
    markdown(text, "\\`*_[]~")
}

/// Discord markdown (also `||spoilers||` and `<@mentions>`).
pub fn discord(text: &str) -> String {
    markdown(text, "\\`*_[]~|<")
}

/// A CommonMark-like dialect: a backslash before each of `inline` (the characters that open or
/// close formatting anywhere), line breaks folded to spaces, and a block marker at the start of
/// the value escaped (`#`/`-`/`+` followed by a space, `>`, or `1.`/`1)` followed by a space),
/// so the value cannot start a heading, a quote or a list. Characters that only format at a
/// line start are left alone elsewhere: a reader whose renderer ignores an escape sees fewer
/// stray backslashes.
fn markdown(text: &str, inline: &str) -> String {
    let folded = backslash(text, |c| inline.contains(c), true);
    let bytes = folded.as_bytes();
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let spaced = |at: usize| matches!(bytes.get(at), None | Some(b' '));
    let at = match bytes.first() {
        Some(b'>') => Some(0),
        Some(b'#') => spaced(bytes.iter().take_while(|b| **b == b'#').count()).then_some(0),
        Some(b'-' | b'+') if spaced(1) => Some(0),
        _ if digits > 0 && matches!(bytes.get(digits), Some(b'.' | b')')) && spaced(digits + 1) => {
            Some(digits)
        }
        _ => None,
    };
    match at {
        Some(at) => format!("{}\\{}", &folded[..at], &folded[at..]),
        None => folded,
    }
}

/// Feishu/Lark `lark_md`: HTML entities for the characters that format.
pub fn feishu(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '*' => out.push_str("&#42;"),
            '~' => out.push_str("&#126;"),
            '_' => out.push_str("&#95;"),
            '[' => out.push_str("&#91;"),
            ']' => out.push_str("&#93;"),
            '`' => out.push_str("&#96;"),
            '\\' => out.push_str("&#92;"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A JSON string literal for `text`, quotes included.
pub fn json(text: &str) -> String {
    // Serialising a `str` cannot fail; the fallback keeps this infallible all the same.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A backslash before each character `special` picks; line breaks become spaces when
/// `fold_newlines` (a value must not start a block of its own).
fn backslash(text: &str, special: impl Fn(char) -> bool, fold_newlines: bool) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for c in text.chars() {
        if fold_newlines && (c == '\n' || c == '\r') {
            out.push(' ');
            continue;
        }
        if special(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE_REPO: &str = "a_b*c[d](e)~f";
    const HOSTILE_TAG: &str = "1.0-rc.1+build!";

    #[test]
    fn the_table() {
        let table: &[(Dialect, &str, &str)] = &[
            (Dialect::Telegram, HOSTILE_REPO, r"a\_b\*c\[d\]\(e\)\~f"),
            (Dialect::Telegram, HOSTILE_TAG, r"1\.0\-rc\.1\+build\!"),
            (
                Dialect::Telegram,
                r"\ ` > # = | { } .",
                r"\\ \` \> \# \= \| \{ \} \.",
            ),
            (
                Dialect::Telegram,
                "plain text 123 é ✓",
                "plain text 123 é ✓",
            ),
            (Dialect::TelegramCode, HOSTILE_REPO, HOSTILE_REPO),
            (Dialect::TelegramCode, HOSTILE_TAG, HOSTILE_TAG),
            (Dialect::TelegramCode, r"a`b\c", r"a\`b\\c"),
            (Dialect::Slack, HOSTILE_REPO, HOSTILE_REPO),
            (
                Dialect::Slack,
                "<!channel> & co",
                "&lt;!channel&gt; &amp; co",
            ),
            (Dialect::DingTalk, HOSTILE_REPO, r"a\_b\*c\[d\](e)\~f"),
            (Dialect::DingTalk, HOSTILE_TAG, HOSTILE_TAG),
            (Dialect::DingTalk, "# x\n> y", r"\# x > y"),
            (Dialect::DingTalk, "> quote", r"\> quote"),
            (Dialect::DingTalk, "- item", r"\- item"),
            (Dialect::DingTalk, "-1", "-1"),
            (Dialect::DingTalk, "12. item", r"12\. item"),
            (Dialect::DingTalk, "1.0", "1.0"),
            (Dialect::DingTalk, "#tag", "#tag"),
            (Dialect::DingTalk, "### h", r"\### h"),
            (Dialect::WeCom, HOSTILE_REPO, r"a\_b\*c\[d\](e)\~f"),
            (
                Dialect::WeCom,
                "<font color=\"warning\">x</font>",
                "\\<font color=\"warning\">x\\</font>",
            ),
            (Dialect::Teams, HOSTILE_REPO, r"a\_b\*c\[d\](e)\~f"),
            (Dialect::Teams, HOSTILE_TAG, HOSTILE_TAG),
            (
                Dialect::Teams,
                "2023-04-03 06:04:53 UTC",
                "2023-04-03 06:04:53 UTC",
            ),
            (Dialect::Discord, HOSTILE_REPO, r"a\_b\*c\[d\](e)\~f"),
            (
                Dialect::Discord,
                "||spoiler|| <@123>",
                r"\|\|spoiler\|\| \<@123>",
            ),
            (Dialect::Discord, "-# small", "-# small"),
            (Dialect::Discord, "- item", r"\- item"),
            (
                Dialect::Feishu,
                HOSTILE_REPO,
                "a&#95;b&#42;c&#91;d&#93;(e)&#126;f",
            ),
            (Dialect::Feishu, HOSTILE_TAG, HOSTILE_TAG),
            (
                Dialect::Feishu,
                "<at id=all></at>",
                "&lt;at id=all&gt;&lt;/at&gt;",
            ),
            (Dialect::Json, "a\"b\\c\nd", r#""a\"b\\c\nd""#),
            (Dialect::Json, HOSTILE_REPO, "\"a_b*c[d](e)~f\""),
        ];
        for (dialect, input, want) in table {
            assert_eq!(dialect.escape(input), *want, "{dialect:?} {input:?}");
        }
    }

    #[test]
    fn telegram_escapes_every_special_character_and_nothing_else_outside_entities() {
        for c in (1u8..=126).map(char::from) {
            let escaped = telegram(&c.to_string());
            let special = c == '\\' || TELEGRAM_SPECIAL.contains(c);
            assert_eq!(escaped.len(), if special { 2 } else { 1 }, "{c:?}");
        }
        assert_eq!(telegram_link_url("https://x/(a)\\"), r"https://x/(a\)\\");
    }

    #[test]
    fn filter_names_are_distinct() {
        let mut names: Vec<&str> = Dialect::ALL.iter().map(|d| d.filter_name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Dialect::ALL.len());
    }
}
