//! A fake WeCom (企业微信) group robot.
//!
//! As WeCom documents and answers (HTTP 200 with `{"errcode","errmsg"}`):
//! - `POST /cgi-bin/webhook/send?key=<key>`: another key is `93000 invalid webhook url`.
//! - Body `{"msgtype":"markdown","markdown":{"content"}}` (or `text`); an unknown type is
//!   `40008 invalid message type`; markdown content over 4096 bytes is `40058
//!   markdown.content exceed max length 4096`.
//! - [`Script::RateLimited`] answers `45009 api freq out of limit`.

use serde_json::{json, Value};

use super::{Answer, FakeVendor, Incoming, Rules, Script};

/// The longest markdown content accepted, in bytes.
pub const MAX_CONTENT_BYTES: usize = 4096;

/// Starts a robot with `key`. A target's address is
/// `fake.url(&format!("/cgi-bin/webhook/send?key={key}"))`.
pub async fn start(key: &str) -> FakeVendor {
    FakeVendor::start(WeCom {
        key: key.to_owned(),
    })
    .await
}

struct WeCom {
    key: String,
}

fn code(errcode: i64, errmsg: &str) -> Answer {
    Answer::json(
        200,
        json!({"errcode": errcode, "errmsg": errmsg}),
        errcode == 0,
    )
}

impl Rules for WeCom {
    fn answer(&self, request: &Incoming<'_>) -> Answer {
        if request.path != "/cgi-bin/webhook/send" {
            return Answer::empty(404, false);
        }
        if request.query.get("key") != Some(&self.key) {
            return code(93000, "invalid webhook url, hint: [1]");
        }
        let Ok(body) = serde_json::from_slice::<Value>(request.body) else {
            return code(40008, "invalid message type");
        };
        match body["msgtype"].as_str() {
            Some("markdown") => match body.pointer("/markdown/content").and_then(Value::as_str) {
                Some(content) if content.len() > MAX_CONTENT_BYTES => code(
                    40058,
                    "markdown.content exceed max length 4096. invalid Request Parameter",
                ),
                Some(content) if !content.is_empty() => code(0, "ok"),
                _ => code(44004, "empty content"),
            },
            Some("text") if body.pointer("/text/content").is_some() => code(0, "ok"),
            _ => code(40008, "invalid message type"),
        }
    }

    fn scripted(&self, script: &Script) -> Answer {
        match script {
            Script::RateLimited { .. } => code(45009, "api freq out of limit"),
            Script::ServerError => Answer::empty(502, false),
            Script::Raw {
                status,
                headers,
                body,
            } => Answer::raw(*status, headers, body),
        }
    }
}
