//! A fake Telegram Bot API (`sendMessage` only), and a strict MarkdownV2 parser.
//!
//! As the Bot API documents and answers:
//! - `POST /bot<token>/sendMessage`: a token other than the fake's is `401 Unauthorized`; any
//!   other path `404 Not Found` (Telegram's `{"ok":false,"error_code":N,"description"}` bodies).
//! - The body is JSON with `chat_id` (else 400 "Bad Request: chat_id is empty") and `text`
//!   (else 400 "Bad Request: message text is empty"). With `parse_mode: "MarkdownV2"` the text
//!   is parsed by [`parse_markdown_v2`] (else 400 "Bad Request: can't parse entities: ..."),
//!   and the text after entity parsing is at most 4096 UTF-16 code units (else 400
//!   "Bad Request: message is too long").
//! - A chat registered with [`Config::migrated`] answers 400 with
//!   `parameters.migrate_to_chat_id`, as a group upgraded to a supergroup does.
//! - [`Script::RateLimited`] answers 429 with `parameters.retry_after` and `Retry-After`.
//! - Success: `{"ok":true,"result":{message_id, chat, date, text}}` with the parsed text.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::{json, Value};

use super::{unix_now, Answer, FakeVendor, Incoming, Rules, Script};

/// The most UTF-16 code units of text after entity parsing.
pub const MAX_TEXT_UTF16: usize = 4096;

/// What the fake knows.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The bot token it accepts.
    pub token: String,
    /// Chats that became supergroups: old id → new id.
    pub migrated: HashMap<String, i64>,
}

/// Starts a fake Bot API that accepts `token`. Its `base_url()` is a target's `address`.
pub async fn start(token: &str) -> FakeVendor {
    start_with(Config {
        token: token.to_owned(),
        ..Config::default()
    })
    .await
}

pub async fn start_with(config: Config) -> FakeVendor {
    FakeVendor::start(Telegram {
        config,
        next_id: AtomicI64::new(1),
    })
    .await
}

struct Telegram {
    config: Config,
    next_id: AtomicI64,
}

fn error(status: u16, description: &str) -> Answer {
    Answer::json(
        status,
        json!({"ok": false, "error_code": status, "description": description}),
        false,
    )
}

impl Rules for Telegram {
    fn answer(&self, request: &Incoming<'_>) -> Answer {
        let Some(rest) = request.path.strip_prefix("/bot") else {
            return error(404, "Not Found");
        };
        let Some(token) = rest.strip_suffix("/sendMessage") else {
            return error(404, "Not Found");
        };
        if token != self.config.token {
            return error(401, "Unauthorized");
        }
        let Ok(body) = serde_json::from_slice::<Value>(request.body) else {
            return error(400, "Bad Request: invalid JSON in the request body");
        };
        let chat_id = match &body["chat_id"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) if !s.is_empty() => s.clone(),
            _ => return error(400, "Bad Request: chat_id is empty"),
        };
        if let Some(new_id) = self.config.migrated.get(&chat_id) {
            return Answer::json(
                400,
                json!({
                    "ok": false,
                    "error_code": 400,
                    "description": "Bad Request: group chat was upgraded to a supergroup chat",
                    "parameters": {"migrate_to_chat_id": new_id},
                }),
                false,
            );
        }
        let text = body["text"].as_str().unwrap_or("");
        if text.trim().is_empty() {
            return error(400, "Bad Request: message text is empty");
        }
        let plain = match body["parse_mode"].as_str() {
            Some("MarkdownV2") => match parse_markdown_v2(text) {
                Ok(plain) => plain,
                Err(why) => {
                    return error(400, &format!("Bad Request: can't parse entities: {why}"))
                }
            },
            None => text.to_owned(),
            Some(other) => {
                return error(400, &format!("Bad Request: unsupported parse_mode {other}"))
            }
        };
        if plain.encode_utf16().count() > MAX_TEXT_UTF16 {
            return error(400, "Bad Request: message is too long");
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Answer::json(
            200,
            json!({
                "ok": true,
                "result": {
                    "message_id": id,
                    "chat": {"id": body["chat_id"]},
                    "date": unix_now(),
                    "text": plain,
                },
            }),
            true,
        )
    }

    fn scripted(&self, script: &Script) -> Answer {
        match script {
            Script::RateLimited { retry_after_secs } => {
                let secs = retry_after_secs.ceil() as i64;
                Answer::json(
                    429,
                    json!({
                        "ok": false,
                        "error_code": 429,
                        "description": format!("Too Many Requests: retry after {secs}"),
                        "parameters": {"retry_after": secs},
                    }),
                    false,
                )
                .with_header("retry-after", &secs.to_string())
            }
            Script::ServerError => error(502, "Bad Gateway"),
            Script::Raw {
                status,
                headers,
                body,
            } => Answer::raw(*status, headers, body),
        }
    }
}

/// The characters MarkdownV2 reserves outside entities.
const RESERVED: &str = "_*[]()~`>#+-=|{}.!";

/// Parses Telegram MarkdownV2 strictly, as Telegram does, and returns the plain text.
///
/// Errors (Telegram's wording where it has one): a reserved character outside an entity not
/// escaped with `\` (a `>` starting a line is a quote and allowed); inside `code`/`pre` a `` ` ``
/// or `\` not escaped; inside a link's URL a `)` or `\` not escaped; an entity not closed, or
/// closed out of order; a `[...]` not followed by `(url)`; a `\` ending the text.
pub fn parse_markdown_v2(text: &str) -> Result<String, String> {
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Open {
        Bold,
        Italic,
        Underline,
        Strike,
        Spoiler,
        LinkText,
    }
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|(_, c)| *c);
    let mut stack: Vec<(Open, usize)> = Vec::new();
    let mut plain = String::new();
    let mut i = 0;
    let mut line_start = true;
    let toggle = |stack: &mut Vec<(Open, usize)>, e: Open, offset: usize| match stack
        .iter()
        .rposition(|(o, _)| *o == e)
    {
        Some(pos) if pos + 1 == stack.len() => {
            stack.pop();
            Ok(())
        }
        Some(_) => Err(format!(
            "entities are not properly nested at byte offset {offset}"
        )),
        None => {
            stack.push((e, offset));
            Ok(())
        }
    };
    while i < chars.len() {
        let (offset, c) = chars[i];
        let was_line_start = line_start;
        line_start = c == '\n';
        match c {
            '\\' => match at(i + 1) {
                Some(next) if (1..=126).contains(&(next as u32)) => {
                    plain.push(next);
                    i += 2;
                    continue;
                }
                Some(next) => {
                    // Escaping a character above 126 is not defined: Telegram keeps both.
                    plain.push('\\');
                    plain.push(next);
                    i += 2;
                    continue;
                }
                None => return Err(format!("text ends with an unescaped '\\' at byte offset {offset}")),
            },
            '`' => {
                let pre = at(i + 1) == Some('`') && at(i + 2) == Some('`');
                let mut j = if pre { i + 3 } else { i + 1 };
                if pre {
                    // An optional language name up to the first line break.
                    while let Some(c) = at(j) {
                        j += 1;
                        if c == '\n' {
                            break;
                        }
                    }
                }
                loop {
                    match at(j) {
                        None => {
                            return Err(format!(
                                "Can't find end of {} entity at byte offset {offset}",
                                if pre { "Pre" } else { "Code" }
                            ))
                        }
                        Some('\\') => match at(j + 1) {
                            Some(e @ ('`' | '\\')) => {
                                plain.push(e);
                                j += 2;
                            }
                            _ => {
                                return Err(format!(
                                    "Character '\\' inside a code entity must be escaped at byte offset {}",
                                    chars[j].0
                                ))
                            }
                        },
                        Some('`') if !pre => {
                            j += 1;
                            break;
                        }
                        Some('`') if at(j + 1) == Some('`') && at(j + 2) == Some('`') => {
                            j += 3;
                            break;
                        }
                        Some('`') => {
                            return Err(format!(
                                "Character '`' inside a pre entity must be escaped at byte offset {}",
                                chars[j].0
                            ))
                        }
                        Some(c) => {
                            plain.push(c);
                            j += 1;
                        }
                    }
                }
                i = j;
                continue;
            }
            '*' => toggle(&mut stack, Open::Bold, offset)?,
            '_' if at(i + 1) == Some('_') => {
                toggle(&mut stack, Open::Underline, offset)?;
                i += 2;
                continue;
            }
            '_' => toggle(&mut stack, Open::Italic, offset)?,
            '~' => toggle(&mut stack, Open::Strike, offset)?,
            '|' if at(i + 1) == Some('|') => {
                toggle(&mut stack, Open::Spoiler, offset)?;
                i += 2;
                continue;
            }
            '[' => stack.push((Open::LinkText, offset)),
            ']' if stack.last().map(|(o, _)| *o) == Some(Open::LinkText) => {
                stack.pop();
                if at(i + 1) != Some('(') {
                    return Err(format!(
                        "Character ']' is reserved and must be escaped with the preceding '\\' (a link needs (url)) at byte offset {offset}"
                    ));
                }
                let mut j = i + 2;
                loop {
                    match at(j) {
                        None => {
                            return Err(format!(
                                "Can't find end of a URL at byte offset {offset}"
                            ))
                        }
                        Some('\\') => match at(j + 1) {
                            Some(')' | '\\') => j += 2,
                            _ => {
                                return Err(format!(
                                    "Character '\\' inside a URL must be escaped at byte offset {}",
                                    chars[j].0
                                ))
                            }
                        },
                        Some(')') => {
                            j += 1;
                            break;
                        }
                        Some(_) => j += 1,
                    }
                }
                i = j;
                continue;
            }
            '>' if was_line_start => {}
            c if RESERVED.contains(c) => {
                return Err(format!(
                    "Character '{c}' is reserved and must be escaped with the preceding '\\' at byte offset {offset}"
                ))
            }
            c => plain.push(c),
        }
        i += 1;
    }
    if let Some((open, offset)) = stack.first() {
        return Err(format!(
            "Can't find end of {open:?} entity at byte offset {offset}"
        ));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_texts_and_their_plain_text() {
        let table = [
            ("plain", "plain"),
            (r"a\_b\*c\[d\]\(e\)\~f", "a_b*c[d](e)~f"),
            (r"1\.0\-rc\.1\+build\!", "1.0-rc.1+build!"),
            ("*bold* _it_ __u__ ~s~ ||sp||", "bold it u s sp"),
            ("*bold _both_*", "bold both"),
            (r"`a_b*c \` \\`", r"a_b*c ` \"),
            ("```rust\nlet x = 1;\n```", "let x = 1;\n"),
            (r"[link](https://x/\)y)", "link"),
            ("> quote\n> more", " quote\n more"),
            ("📦 *Artifact pushed*", "📦 Artifact pushed"),
        ];
        for (text, plain) in table {
            assert_eq!(parse_markdown_v2(text).as_deref(), Ok(plain), "{text}");
        }
    }

    #[test]
    fn invalid_texts() {
        let table = [
            ("1.0", "Character '.' is reserved"),
            ("a_b", "Can't find end of Italic"),
            ("a-b", "Character '-' is reserved"),
            ("x > y", "Character '>' is reserved"),
            ("*bold _it* x_", "not properly nested"),
            ("`code", "Can't find end of Code"),
            (r"`a\b`", "inside a code entity"),
            ("[text]", "a link needs (url)"),
            ("[text](url", "Can't find end of a URL"),
            ("end\\", "unescaped '\\'"),
            ("a|b", "Character '|' is reserved"),
            ("(x)", "Character '(' is reserved"),
        ];
        for (text, why) in table {
            let err = parse_markdown_v2(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
