//! The one template language of regrelay: custom webhook bodies (the `template` target type) and
//! custom chat messages (a chat target's `template`).
//!
//! Design constraints:
//! - Sandboxed: minijinja with no loader, so `include`, `import` and `extends` find nothing and
//!   no template can read a file; it has no network access and no function that reaches outside
//!   the variables it is given.
//! - Strict: an undefined variable is an error (a typo in a template must not send an empty
//!   message), so every documented variable is always defined, `none` when the event lacks it.
//! - Bounded: a source of at most [`MAX_SOURCE_BYTES`], an output of at most
//!   [`MAX_OUTPUT_BYTES`], and a fuel budget ([`FUEL`]) that bounds both the instructions a
//!   render runs (so its time) and the memory it allocates. A render that exceeds a bound fails
//!   with a [`RenderError`] and never stalls a delivery worker.
//! - No auto-escaping: a template chooses the escaping of each value with a dialect filter
//!   (`{{ repository.name | telegram }}`, `{{ operator | json }}`); see [`crate::escape`].
//!
//! [`compile`] answers the policy API ("a template that does not compile" is a `400`);
//! [`render`] the delivery ("a render error dead-letters the delivery as `unrenderable`").

use std::io;
use std::sync::Arc;

use minijinja::value::Value as TemplateValue;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use regrelay_events::RegistryEvent;
use serde_json::{json, Value};

use crate::escape::Dialect;
use crate::message::Message;

/// The longest template source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;

/// The longest output one render may produce, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;

/// The fuel of one render: roughly the instructions it may run (minijinja charges allocations
/// too, about 64 bytes per unit). A template over every resource and severity of a large event
/// uses a few thousand.
pub const FUEL: u64 = 200_000;

/// The name errors give the template ("... (in template:3)").
const NAME: &str = "template";

/// A compiled template, ready to render any number of times (cheap to clone, shareable).
#[derive(Clone)]
pub struct Template {
    /// An environment holding just this template, with the sandbox settings and the filters.
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").finish_non_exhaustive()
    }
}

/// A template that does not compile. The message says what and where, for the policy API's
/// `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template does not compile: {0}")]
pub struct TemplateError(String);

/// Why a render failed: the delivery is dead-lettered as `unrenderable` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template cannot be rendered: {message}")]
pub struct RenderError {
    pub kind: RenderErrorKind,
    /// What went wrong and where (minijinja's message and the line).
    pub message: String,
}

/// What kind of render failure it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderErrorKind {
    /// A variable or attribute the template uses is not defined.
    Undefined,
    /// The render ran out of fuel (too much work).
    OutOfFuel,
    /// The output would be over [`MAX_OUTPUT_BYTES`].
    OutputTooLarge,
    /// Anything else (a filter on the wrong type, a failing expression, ...).
    Other,
}

/// Who a delivery is for: the delivery's own facts, beside the event's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryContext {
    pub policy_id: i64,
    pub policy_name: String,
    /// The numeric project id when the policy belongs to a project (`None`: system-wide).
    pub project_id: Option<i64>,
    /// The delivery id (`webhook-id`), the same on every retry.
    pub delivery_id: String,
    /// The event id given at ingest.
    pub event_id: String,
    /// The target's type, as the policy names it (`telegram`, `template`, ...).
    pub target_type: String,
}

/// The variables a template sees (documented in docs/targets.md):
///
/// | variable | value |
/// |---|---|
/// | `type`, `event_type` | the event type, `PUSH_ARTIFACT` |
/// | `occur_at` | unix seconds |
/// | `time` | RFC 3339 UTC, `2023-04-03T06:04:53Z` |
/// | `operator` | who did it, `""` when unknown |
/// | `event_data` | the event's `event_data`, as received |
/// | `event` | the whole event, as received |
/// | `resources` | `event_data.resources`, `[]` when absent |
/// | `resource` | the first resource, `none` when there is none |
/// | `repository` | `event_data.repository`, `none` when absent |
/// | `project` | the project name; `project_id` its id (`none` for system-wide policies) |
/// | `policy` | `{id, name}`; also `policy_id`, `policy_name` |
/// | `delivery_id`, `event_id`, `target_type` | the delivery's ids and the target's type |
/// | `message` | the built-in message: `{emoji, title, headline, facts: [{label, value}], text}` |
#[derive(Debug, Clone, PartialEq)]
pub struct Variables {
    root: Value,
}

impl Variables {
    /// The variables for one delivery of `event`.
    pub fn new(event: &RegistryEvent, context: &DeliveryContext) -> Variables {
        let parsed: Value = serde_json::from_str(event.raw_json()).unwrap_or(Value::Null);
        let event_data = parsed.get("event_data").cloned().unwrap_or(Value::Null);
        let resources = event_data
            .get("resources")
            .filter(|r| r.is_array())
            .cloned()
            .unwrap_or_else(|| json!([]));
        let resource = resources.get(0).cloned().unwrap_or(Value::Null);
        let repository = event_data.get("repository").cloned().unwrap_or(Value::Null);
        let summary = Message::from_event(event).summary();
        let facts: Vec<Value> = summary
            .facts
            .iter()
            .map(|f| json!({"label": f.label, "value": f.value}))
            .collect();
        let text: Vec<String> = std::iter::once(summary.headline())
            .chain(
                summary
                    .facts
                    .iter()
                    .map(|f| format!("{}: {}", f.label, f.value)),
            )
            .collect();
        let time = chrono::DateTime::from_timestamp(event.occur_at(), 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let root = json!({
            "type": event.event_type().as_str(),
            "event_type": event.event_type().as_str(),
            "occur_at": event.occur_at(),
            "time": time,
            "operator": event.operator(),
            "event_data": event_data,
            "event": parsed,
            "resources": resources,
            "resource": resource,
            "repository": repository,
            "project": event.project(),
            "project_id": context.project_id,
            "policy": {"id": context.policy_id, "name": context.policy_name},
            "policy_id": context.policy_id,
            "policy_name": context.policy_name,
            "delivery_id": context.delivery_id,
            "event_id": context.event_id,
            "target_type": context.target_type,
            "message": {
                "emoji": summary.emoji,
                "title": summary.title,
                "headline": summary.headline(),
                "facts": facts,
                "text": text.join("\n"),
            },
        });
        Variables { root }
    }

    /// The variables as one JSON object (what a template's top level sees).
    pub fn as_json(&self) -> &Value {
        &self.root
    }
}

/// Compiles `source`: syntax errors (`include`, `import` and `extends` do not exist here), a
/// source over [`MAX_SOURCE_BYTES`], and an unknown filter, test or function are refused with a
/// message that says what and where. The last are found by rendering the sample event of every
/// type once, since minijinja looks filters up when they run; other errors of those renders
/// (an attribute only some event types have) are left to delivery time.
pub fn compile(source: &str) -> Result<Template, TemplateError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(TemplateError(format!(
            "the template is {} bytes long; at most {MAX_SOURCE_BYTES} are allowed",
            source.len()
        )));
    }
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // Deep nesting or recursive macros stop long before the stack would.
    env.set_recursion_limit(64);
    for dialect in Dialect::ALL {
        env.add_filter(dialect.filter_name(), move |value: TemplateValue| {
            escape_filter(dialect, value)
        });
    }
    env.add_template_owned(NAME, source.to_owned())
        .map_err(|e| TemplateError(describe(&e)))?;
    let template = Template { env: Arc::new(env) };
    let context = DeliveryContext {
        policy_id: 0,
        policy_name: "sample".into(),
        project_id: None,
        delivery_id: "sample".into(),
        event_id: "sample".into(),
        target_type: "sample".into(),
    };
    for event_type in regrelay_events::EventType::CURRENT {
        let Ok(event) = regrelay_events::samples::sample_event(event_type, "sample", 0) else {
            continue;
        };
        if let Err(Run::Engine(e, _)) = run(&template, &Variables::new(&event, &context)) {
            if matches!(
                e.kind(),
                ErrorKind::UnknownFilter
                    | ErrorKind::UnknownTest
                    | ErrorKind::UnknownFunction
                    | ErrorKind::UnknownMethod
            ) {
                return Err(TemplateError(describe(&e)));
            }
        }
    }
    Ok(template)
}

/// Renders `template` with `variables`.
pub fn render(template: &Template, variables: &Variables) -> Result<String, RenderError> {
    run(template, variables).map_err(|failure| match failure {
        Run::TooLarge => RenderError {
            kind: RenderErrorKind::OutputTooLarge,
            message: format!("the output is over {MAX_OUTPUT_BYTES} bytes"),
        },
        Run::NotUtf8 => RenderError {
            kind: RenderErrorKind::Other,
            message: "the output is not UTF-8".into(),
        },
        Run::Engine(e, at) => RenderError {
            kind: match e.kind() {
                ErrorKind::UndefinedError => RenderErrorKind::Undefined,
                ErrorKind::OutOfFuel => RenderErrorKind::OutOfFuel,
                _ => RenderErrorKind::Other,
            },
            message: match at {
                Some(at) => format!("{}: at `{at}`", describe(&e)),
                None => describe(&e),
            },
        },
    })
}

/// How a render failed, before it is told to the caller.
enum Run {
    /// The engine's error, and the text of the expression that failed.
    Engine(Error, Option<String>),
    TooLarge,
    NotUtf8,
}

fn run(template: &Template, variables: &Variables) -> Result<String, Run> {
    let compiled = template
        .env
        .get_template(NAME)
        .map_err(|e| Run::Engine(e, None))?;
    let mut out = Bounded {
        buf: Vec::new(),
        over: false,
    };
    let context = TemplateValue::from(minijinja::value::Serde(&variables.root));
    if let Err(e) = compiled.render_captured_to(context, &mut out) {
        return Err(if out.over {
            Run::TooLarge
        } else {
            let at = at(compiled.source(), &e_range(&e));
            Run::Engine(e, at)
        });
    }
    String::from_utf8(out.buf).map_err(|_| Run::NotUtf8)
}

/// A dialect filter: strings are escaped, numbers and booleans written then escaped, `json`
/// encodes any value as JSON.
fn escape_filter(dialect: Dialect, value: TemplateValue) -> Result<String, Error> {
    if value.is_undefined() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            format!(
                "`{}` filter applied to an undefined value",
                dialect.filter_name()
            ),
        ));
    }
    if dialect == Dialect::Json {
        return serde_json::to_string(&value).map_err(|e| {
            Error::new(
                ErrorKind::BadSerialization,
                format!("cannot encode as JSON: {e}"),
            )
        });
    }
    Ok(match value.as_str() {
        Some(text) => dialect.escape(text),
        None if value.is_none() => String::new(),
        None => dialect.escape(&value.to_string()),
    })
}

/// minijinja's message with the line, without the source dump of debug mode.
/// The byte range of the expression that failed, when minijinja knows it.
fn e_range(e: &Error) -> Option<std::ops::Range<usize>> {
    e.range()
}

/// The failing expression's text (the template is the policy author's, never a credential), at
/// most 80 characters, control characters replaced.
fn at(source: &str, range: &Option<std::ops::Range<usize>>) -> Option<String> {
    let text = source.get(range.clone()?)?;
    let mut out: String = text
        .chars()
        .take(80)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    (!out.trim().is_empty()).then_some(out)
}

fn describe(e: &Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// An output buffer that refuses to grow past [`MAX_OUTPUT_BYTES`].
struct Bounded {
    buf: Vec<u8>,
    /// Set when a write was refused for size, to tell that failure from the template's own.
    over: bool,
}

impl io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.over = true;
            return Err(io::Error::other("template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regrelay_events::samples::harbor_example;
    use regrelay_events::EventType;

    fn context() -> DeliveryContext {
        DeliveryContext {
            policy_id: 7,
            policy_name: "ci".into(),
            project_id: Some(3),
            delivery_id: "d-1".into(),
            event_id: "e-1".into(),
            target_type: "template".into(),
        }
    }

    fn vars(event_type: EventType) -> Variables {
        let event = RegistryEvent::from_json(harbor_example(event_type).unwrap()).unwrap();
        Variables::new(&event, &context())
    }

    fn render_str(source: &str, event_type: EventType) -> Result<String, RenderError> {
        render(&compile(source).unwrap(), &vars(event_type))
    }

    #[test]
    fn every_documented_variable_is_defined_for_every_event_type() {
        let source = "{{ type }}|{{ event_type }}|{{ occur_at }}|{{ time }}|{{ operator }}|\
            {{ event_data is mapping }}|{{ event.type }}|{{ resources | length }}|{{ resource is none }}|\
            {{ repository is none }}|{{ project }}|{{ project_id }}|{{ policy.id }}|{{ policy.name }}|\
            {{ policy_id }}|{{ policy_name }}|{{ delivery_id }}|{{ event_id }}|{{ target_type }}|\
            {{ message.headline }}|{{ message.facts | length > 0 }}|{{ message.text | length > 0 }}";
        // minijinja writes booleans as Python does.
        for t in EventType::CURRENT {
            let out = render_str(source, t).unwrap();
            assert!(out.starts_with(&format!("{t}|{t}|")), "{out}");
            assert!(out.contains("|ci|d-1|e-1|template|"), "{out}");
        }
        let push = render_str(source, EventType::PushArtifact).unwrap();
        assert_eq!(
            push,
            "PUSH_ARTIFACT|PUSH_ARTIFACT|1680501893|2023-04-03T06:04:53Z|harbor-jobservice|\
             True|PUSH_ARTIFACT|1|False|False|harbor|3|7|ci|7|ci|d-1|e-1|template|\
             📦 Artifact pushed|True|True"
        );
    }

    #[test]
    fn a_json_body_template() {
        let source = r#"{"text": {{ ("pushed " ~ repository.repo_full_name ~ ":" ~ resource.tag) | json }}, "by": {{ operator | json }}, "n": {{ resources | json }}}"#;
        let out = render_str(source, EventType::PushArtifact).unwrap();
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["by"], "harbor-jobservice");
        assert!(value["text"]
            .as_str()
            .unwrap()
            .starts_with("pushed harbor/alpine:sha256:"));
        assert_eq!(value["n"][0]["digest"].as_str().unwrap().len(), 71);
    }

    #[test]
    fn dialect_filters_escape() {
        let out = render_str(
            r#"{{ "a_b*c[d](e)~f" | telegram }} {{ "x`y" | telegram_code }} {{ "<b>" | slack }} {{ 1.5 | telegram }} {{ none | teams }}."#,
            EventType::PushArtifact,
        )
        .unwrap();
        assert_eq!(out, r"a\_b\*c\[d\]\(e\)\~f x\`y &lt;b&gt; 1\.5 .");
    }

    #[test]
    fn compile_errors_say_what_and_where() {
        let cases = [
            ("{{ repository.name ", "syntax error"),
            ("{% if x %}no end", "syntax error"),
            ("{{ operator | no_such_filter }}", "unknown filter"),
            (
                "{% if operator is no_such_test %}{% endif %}",
                "unknown test",
            ),
            ("{{ no_such_function() }}", "unknown function"),
            (
                r#"{% include "/etc/passwd" %}"#,
                "unknown statement include",
            ),
            (r#"{% extends "base.html" %}"#, "unknown statement extends"),
            (r#"{% import "macros" as m %}"#, "unknown statement import"),
        ];
        for (source, want) in cases {
            let err = compile(source).unwrap_err().to_string();
            assert!(err.starts_with("template does not compile: "), "{err}");
            assert!(err.contains(want), "{source}: {err}");
            assert!(err.contains("template:1"), "{source}: {err}");
        }
        let huge = "x".repeat(MAX_SOURCE_BYTES + 1);
        assert!(compile(&huge)
            .unwrap_err()
            .to_string()
            .contains("at most 65536"));
    }

    #[test]
    fn undefined_variables_are_errors() {
        for source in [
            "{{ no_such_variable }}",
            "{{ repository.no_such_field }}",
            "{% for x in nothing %}{% endfor %}",
            "{{ nothing | telegram }}",
            "{% if nothing %}x{% endif %}",
        ] {
            let err = render_str(source, EventType::PushArtifact).unwrap_err();
            assert_eq!(err.kind, RenderErrorKind::Undefined, "{source}: {err}");
            assert!(
                err.to_string().starts_with("template cannot be rendered: "),
                "{err}"
            );
        }
        // A missing optional value is `none`, not undefined: a template can test for it.
        let out = render_str(
            "{% if repository is none %}no repo{% endif %}",
            EventType::Replication,
        )
        .unwrap();
        assert_eq!(out, "no repo");
    }

    #[test]
    fn output_size_and_work_are_bounded() {
        let err = render_str(
            "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
            EventType::PushArtifact,
        )
        .unwrap_err();
        assert!(
            matches!(
                err.kind,
                RenderErrorKind::OutputTooLarge | RenderErrorKind::OutOfFuel
            ),
            "{err:?}"
        );
        let err = render_str(
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            EventType::PushArtifact,
        )
        .unwrap_err();
        assert_eq!(err.kind, RenderErrorKind::OutOfFuel, "{err:?}");
        let err = render_str("{{ 'x' * 300000 }}", EventType::PushArtifact).unwrap_err();
        assert_eq!(err.kind, RenderErrorKind::OutputTooLarge, "{err:?}");
    }
}
