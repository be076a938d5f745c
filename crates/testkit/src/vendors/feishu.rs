//! A fake Feishu/Lark custom bot.
//!
//! As Feishu documents and answers (HTTP 200 with `{"code","msg","data"}`):
//! - `POST /open-apis/bot/v2/hook/<id>`: another id is `19001 param invalid: incoming webhook
//!   access token invalid`.
//! - With a secret: `timestamp` (seconds, string or number) and `sign` in the body, `sign` =
//!   `base64(HMAC-SHA256(key = timestamp + "\n" + secret, msg = ""))`; missing, wrong or more
//!   than an hour off is `19021 sign match fail or timestamp is not within one hour from current
//!   time`.
//! - `msg_type` `interactive` needs a `card`, `text` a `content.text`; else `9499 Bad Request`.
//!   A body over 20 KB is `9499` too.
//! - [`Script::RateLimited`] answers `11232 frequency limited`.

use serde_json::{json, Value};

use super::{hmac_base64, unix_now, Answer, FakeVendor, Incoming, Rules, Script};

/// The largest body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 20 * 1024;

/// Starts a bot with hook `id`, checking signatures with `secret` when given. A target's
/// address is `fake.url(&format!("/open-apis/bot/v2/hook/{id}"))`.
pub async fn start(id: &str, secret: Option<&str>) -> FakeVendor {
    FakeVendor::start(Feishu {
        id: id.to_owned(),
        secret: secret.map(str::to_owned),
    })
    .await
}

struct Feishu {
    id: String,
    secret: Option<String>,
}

fn code(code: i64, msg: &str) -> Answer {
    Answer::json(
        200,
        json!({"code": code, "msg": msg, "data": {}}),
        code == 0,
    )
}

const SIGN_FAIL: &str = "sign match fail or timestamp is not within one hour from current time";

impl Rules for Feishu {
    fn answer(&self, request: &Incoming<'_>) -> Answer {
        let Some(id) = request.path.strip_prefix("/open-apis/bot/v2/hook/") else {
            return Answer::empty(404, false);
        };
        if id != self.id {
            return code(
                19001,
                "param invalid: incoming webhook access token invalid",
            );
        }
        if request.body.len() > MAX_BODY_BYTES {
            return Answer::json(
                400,
                json!({"code": 9499, "msg": "request body too large"}),
                false,
            );
        }
        let Ok(body) = serde_json::from_slice::<Value>(request.body) else {
            return Answer::json(400, json!({"code": 9499, "msg": "Bad Request"}), false);
        };
        if let Some(secret) = &self.secret {
            let timestamp = match &body["timestamp"] {
                Value::String(s) => s.parse::<i64>().ok(),
                Value::Number(n) => n.as_i64(),
                _ => None,
            };
            let Some(timestamp) = timestamp else {
                return code(19021, SIGN_FAIL);
            };
            if (unix_now() - timestamp).abs() > 3600 {
                return code(19021, SIGN_FAIL);
            }
            let want = hmac_base64(format!("{timestamp}\n{secret}").as_bytes(), b"");
            if body["sign"].as_str() != Some(want.as_str()) {
                return code(19021, SIGN_FAIL);
            }
        }
        let ok = match body["msg_type"].as_str() {
            Some("interactive") => body["card"].is_object(),
            Some("text") => body.pointer("/content/text").is_some_and(Value::is_string),
            _ => false,
        };
        if ok {
            code(0, "success")
        } else {
            Answer::json(400, json!({"code": 9499, "msg": "Bad Request"}), false)
        }
    }

    fn scripted(&self, script: &Script) -> Answer {
        match script {
            Script::RateLimited { .. } => code(
                11232,
                "frequency limited psm[lark.oapi.app_platform_runtime]appID[1]",
            ),
            Script::ServerError => Answer::empty(502, false),
            Script::Raw {
                status,
                headers,
                body,
            } => Answer::raw(*status, headers, body),
        }
    }
}
