//! A fake DingTalk custom robot.
//!
//! As DingTalk documents and answers (HTTP 200 with `{"errcode","errmsg"}` for everything):
//! - `POST /robot/send?access_token=<token>`: another token is `300001 token is not exist`.
//! - With a secret: `timestamp` (ms) and `sign` in the query, `sign` =
//!   `base64(HMAC-SHA256(key = secret, msg = timestamp + "\n" + secret))`; a missing or wrong
//!   `sign` is `310000 sign not match`, a timestamp more than an hour off `310000`.
//! - Body `{"msgtype":"markdown","markdown":{"title","text"}}` (or `text`); anything else
//!   `40035`; a markdown text over 20000 bytes `460101 message too long`.
//! - [`Script::RateLimited`] answers `130101 send too fast, exceed 20 times per minute`.

use serde_json::{json, Value};

use super::{hmac_base64, unix_now, Answer, FakeVendor, Incoming, Rules, Script};

/// The longest markdown text accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 20_000;

/// Starts a robot with `access_token`, signing with `secret` when given. A target's address is
/// `fake.url(&format!("/robot/send?access_token={access_token}"))`.
pub async fn start(access_token: &str, secret: Option<&str>) -> FakeVendor {
    FakeVendor::start(DingTalk {
        token: access_token.to_owned(),
        secret: secret.map(str::to_owned),
    })
    .await
}

struct DingTalk {
    token: String,
    secret: Option<String>,
}

fn code(errcode: i64, errmsg: &str) -> Answer {
    Answer::json(
        200,
        json!({"errcode": errcode, "errmsg": errmsg}),
        errcode == 0,
    )
}

impl Rules for DingTalk {
    fn answer(&self, request: &Incoming<'_>) -> Answer {
        if request.path != "/robot/send" {
            return Answer::empty(404, false);
        }
        if request.query.get("access_token") != Some(&self.token) {
            return code(300001, "token is not exist");
        }
        if let Some(secret) = &self.secret {
            let (Some(timestamp), Some(sign)) =
                (request.query.get("timestamp"), request.query.get("sign"))
            else {
                return code(310000, "sign not match, more: [missing timestamp or sign]");
            };
            let Ok(ms) = timestamp.parse::<i64>() else {
                return code(310000, "invalid timestamp");
            };
            if (unix_now() * 1000 - ms).abs() > 3_600_000 {
                return code(310000, "invalid timestamp: more than an hour from now");
            }
            let want = hmac_base64(secret.as_bytes(), format!("{ms}\n{secret}").as_bytes());
            if *sign != want {
                return code(
                    310000,
                    "sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]",
                );
            }
        }
        let Ok(body) = serde_json::from_slice::<Value>(request.body) else {
            return code(40035, "缺少参数 json");
        };
        match body["msgtype"].as_str() {
            Some("markdown") => {
                let (Some(_title), Some(text)) = (
                    body.pointer("/markdown/title").and_then(Value::as_str),
                    body.pointer("/markdown/text").and_then(Value::as_str),
                ) else {
                    return code(40035, "缺少参数 markdown.title or markdown.text");
                };
                if text.len() > MAX_TEXT_BYTES {
                    return code(460101, "message too long");
                }
                code(0, "ok")
            }
            Some("text") if body.pointer("/text/content").is_some() => code(0, "ok"),
            _ => code(40035, "缺少参数 msgtype"),
        }
    }

    fn scripted(&self, script: &Script) -> Answer {
        match script {
            Script::RateLimited { .. } => code(130101, "send too fast, exceed 20 times per minute"),
            Script::ServerError => Answer::empty(502, false),
            Script::Raw {
                status,
                headers,
                body,
            } => Answer::raw(*status, headers, body),
        }
    }
}
