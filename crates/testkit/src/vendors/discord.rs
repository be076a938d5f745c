//! A fake Discord webhook.
//!
//! As Discord documents and answers:
//! - `POST /api/webhooks/<id>/<token>`: another id is 404 `10015 Unknown Webhook`, another
//!   token 401 `50027 Invalid Webhook Token`.
//! - A body with neither `content` nor `embeds` is 400 `50006 Cannot send an empty message`.
//! - Over a length limit (content 2000, 10 embeds, title 256, description 4096, 25 fields, field
//!   name 256, field value 1024, footer 2048, author name 256, 6000 across embeds) is 400
//!   `50035 Invalid Form Body` with `BASE_TYPE_MAX_LENGTH` errors.
//! - Accepted: 204 (200 with the message when `?wait=true`), with `X-RateLimit-*` headers.
//! - [`Script::RateLimited`] answers 429 with `{message, retry_after, global}` and `Retry-After`.

use serde_json::{json, Value};

use super::{Answer, FakeVendor, Incoming, Rules, Script};

/// Starts a webhook with `id` and `token`. A target's address is
/// `fake.url(&format!("/api/webhooks/{id}/{token}"))`.
pub async fn start(id: &str, token: &str) -> FakeVendor {
    FakeVendor::start(Discord {
        id: id.to_owned(),
        token: token.to_owned(),
    })
    .await
}

struct Discord {
    id: String,
    token: String,
}

fn error(status: u16, code: i64, message: &str) -> Answer {
    Answer::json(status, json!({"code": code, "message": message}), false)
}

/// The first length limit `body` breaks, as Discord's error path (`embeds.0.description`).
fn over_limit(body: &Value) -> Option<(String, usize)> {
    let len = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    if len(&body["content"]) > 2000 {
        return Some(("content".into(), 2000));
    }
    let embeds = body["embeds"].as_array().cloned().unwrap_or_default();
    if embeds.len() > 10 {
        return Some(("embeds".into(), 10));
    }
    let mut total = 0;
    for (i, embed) in embeds.iter().enumerate() {
        for (key, max) in [("title", 256), ("description", 4096)] {
            if len(&embed[key]) > max {
                return Some((format!("embeds.{i}.{key}"), max));
            }
            total += len(&embed[key]);
        }
        for (pointer, key, max) in [
            ("/footer/text", "footer.text", 2048),
            ("/author/name", "author.name", 256),
        ] {
            let n = embed.pointer(pointer).map_or(0, len);
            if n > max {
                return Some((format!("embeds.{i}.{key}"), max));
            }
            total += n;
        }
        let fields = embed["fields"].as_array().cloned().unwrap_or_default();
        if fields.len() > 25 {
            return Some((format!("embeds.{i}.fields"), 25));
        }
        for (j, field) in fields.iter().enumerate() {
            for (key, max) in [("name", 256), ("value", 1024)] {
                if len(&field[key]) > max {
                    return Some((format!("embeds.{i}.fields.{j}.{key}"), max));
                }
                total += len(&field[key]);
            }
        }
    }
    (total > 6000).then(|| ("embeds".into(), 6000))
}

impl Rules for Discord {
    fn answer(&self, request: &Incoming<'_>) -> Answer {
        let Some(rest) = request.path.strip_prefix("/api/webhooks/") else {
            return error(404, 0, "404: Not Found");
        };
        let (id, token) = rest.split_once('/').unwrap_or((rest, ""));
        if id != self.id {
            return error(404, 10015, "Unknown Webhook");
        }
        if token != self.token {
            return error(401, 50027, "Invalid Webhook Token");
        }
        let Ok(body) = serde_json::from_slice::<Value>(request.body) else {
            return error(400, 50109, "The request body contains invalid JSON.");
        };
        let has_content = body["content"].as_str().is_some_and(|c| !c.is_empty());
        let has_embeds = body["embeds"].as_array().is_some_and(|e| !e.is_empty());
        if !has_content && !has_embeds {
            return error(400, 50006, "Cannot send an empty message");
        }
        if let Some((path, max)) = over_limit(&body) {
            let mut errors = json!({});
            let mut slot = &mut errors;
            for part in path.split('.') {
                slot = &mut slot[part];
            }
            *slot = json!({"_errors": [{
                "code": "BASE_TYPE_MAX_LENGTH",
                "message": format!("Must be {max} or fewer in length."),
            }]});
            return Answer::json(
                400,
                json!({"code": 50035, "errors": errors, "message": "Invalid Form Body"}),
                false,
            );
        }
        let rate = |a: Answer| {
            a.with_header("x-ratelimit-limit", "5")
                .with_header("x-ratelimit-remaining", "4")
                .with_header("x-ratelimit-reset-after", "1")
        };
        if request.query.get("wait").map(String::as_str) == Some("true") {
            rate(Answer::json(
                200,
                json!({"id": "1", "content": body["content"]}),
                true,
            ))
        } else {
            rate(Answer::empty(204, true))
        }
    }

    fn scripted(&self, script: &Script) -> Answer {
        match script {
            Script::RateLimited { retry_after_secs } => Answer::json(
                429,
                json!({
                    "message": "You are being rate limited.",
                    "retry_after": retry_after_secs,
                    "global": false,
                }),
                false,
            )
            .with_header("retry-after", &(retry_after_secs.ceil() as i64).to_string())
            .with_header("x-ratelimit-remaining", "0")
            .with_header("x-ratelimit-reset-after", &retry_after_secs.to_string()),
            Script::ServerError => Answer::empty(502, false),
            Script::Raw {
                status,
                headers,
                body,
            } => Answer::raw(*status, headers, body),
        }
    }
}
