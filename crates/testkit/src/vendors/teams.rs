//! A fake Teams Workflows webhook.
//!
//! As Workflows answers: any `POST` path; the body must be JSON with a non-empty `attachments`
//! array (else 400 with the flow's `foreach ... 'Null'` error: the default flow loops over
//! them), each an Adaptive Card (`contentType` `application/vnd.microsoft.card.adaptive`,
//! `content.type` `AdaptiveCard`, `content.version` at most 1.4 for Teams' renderer); a body
//! over 28 KB is `413`. Accepted: `202` with an empty body.
//! [`Script::RateLimited`] answers 429 with `Retry-After`.

use serde_json::{json, Value};

use super::{Answer, FakeVendor, Incoming, Rules, Script};

/// The largest body accepted, in bytes (Teams' message limit).
pub const MAX_BODY_BYTES: usize = 28 * 1024;

/// Starts a flow. Any path works: `fake.url("/workflows/abc/triggers/manual/paths/invoke")`.
pub async fn start() -> FakeVendor {
    FakeVendor::start(Teams).await
}

struct Teams;

fn bad(message: &str) -> Answer {
    Answer::json(
        400,
        json!({"error": {"code": "InvalidTemplate", "message": message}}),
        false,
    )
}

impl Rules for Teams {
    fn answer(&self, request: &Incoming<'_>) -> Answer {
        if request.method != axum::http::Method::POST {
            return Answer::empty(405, false);
        }
        if request.body.len() > MAX_BODY_BYTES {
            return Answer::json(413, json!({"error": {"code": "MessageSizeTooBig"}}), false);
        }
        let Ok(body) = serde_json::from_slice::<Value>(request.body) else {
            return bad("The request body is not valid JSON.");
        };
        let Some(attachments) = body["attachments"].as_array().filter(|a| !a.is_empty()) else {
            return bad("The execution of template action 'Send_each_adaptive_card' failed: the result of the evaluation of 'foreach' expression '@triggerOutputs()?['body']?['attachments']' is of type 'Null'. The result must be a valid array.");
        };
        for attachment in attachments {
            let version = attachment
                .pointer("/content/version")
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<f64>().ok());
            let ok = attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
                && attachment.pointer("/content/type") == Some(&json!("AdaptiveCard"))
                && version.is_some_and(|v| v <= 1.4);
            if !ok {
                return bad("An attachment is not an Adaptive Card of version 1.4 or lower.");
            }
        }
        Answer::empty(202, true)
    }

    fn scripted(&self, script: &Script) -> Answer {
        match script {
            Script::RateLimited { retry_after_secs } => {
                Answer::json(429, json!({"error": {"code": "TooManyRequests"}}), false)
                    .with_header("retry-after", &(retry_after_secs.ceil() as i64).to_string())
            }
            Script::ServerError => Answer::empty(502, false),
            Script::Raw {
                status,
                headers,
                body,
            } => Answer::raw(*status, headers, body),
        }
    }
}
