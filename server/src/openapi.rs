//! The OpenAPI 3 document, generated from one route table (the e2e tests check that every
//! route answers and that every answering route is in the table).

use serde_json::{json, Map, Value};
use tongban_features::domain::EventKind;

use crate::http::problem::ProblemCode;
use crate::push::{Outbound, Trigger};

/// (method, path, summary, key scope, query parameters, request body schema, response schema).
pub type RouteDoc = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    Option<&'static str>,
    &'static str,
);

pub const ROUTES: &[RouteDoc] = &[
    (
        "get",
        "/v1/users/{id}/recommendations",
        "Top-k suggestions with reasons and guidance",
        "portal",
        &["k", "locale", "exclude", "category", "mode"],
        None,
        "Recommendations",
    ),
    (
        "delete",
        "/v1/users/{id}",
        "Erase a subject's profile, preferences and inbox (right to erasure)",
        "ingest",
        &[],
        None,
        "Empty",
    ),
    (
        "get",
        "/v1/users/{id}/preferences",
        "A subject's push and personalisation preferences",
        "portal",
        &[],
        None,
        "Preferences",
    ),
    (
        "put",
        "/v1/users/{id}/preferences",
        "Set them: off switch, categories, quiet hours, time zone, personalisation, locale",
        "portal",
        &[],
        Some("Preferences"),
        "Preferences",
    ),
    (
        "get",
        "/v1/users/{id}/inbox",
        "The portal inbox of guidance pushes (delivered, not expired)",
        "portal",
        &[],
        None,
        "Inbox",
    ),
    ("post", "/v1/users/{id}/inbox/{msg}/read", "Mark a message read", "portal", &[], None, "Empty"),
    (
        "post",
        "/v1/sessions/recommendations",
        "Suggestions for an anonymous session from its recent services",
        "portal",
        &[],
        Some("Session"),
        "Recommendations",
    ),
    (
        "post",
        "/v1/events",
        "Ingest one event or a batch ({\"events\": [...]}), idempotent by event_id",
        "ingest",
        &[],
        Some("Events"),
        "Ingested",
    ),
    (
        "post",
        "/v1/feedback",
        "Feedback on a suggestion or push: clicked, dismissed, done_elsewhere, rated",
        "ingest",
        &[],
        Some("Feedback"),
        "Ingested",
    ),
    (
        "get",
        "/v1/services/popular",
        "Non-personalised list, optionally for a segment",
        "portal",
        &["k", "locale", "segment"],
        None,
        "Recommendations",
    ),
    ("get", "/v1/services/{id}", "Catalogue entry with guidance", "portal", &["locale"], None, "Service"),
    (
        "get",
        "/v1/services/{id}/related",
        "Services needed around this one",
        "portal",
        &["k", "locale"],
        None,
        "Related",
    ),
    ("get", "/healthz", "Liveness", "none", &[], None, "Text"),
    ("get", "/readyz", "Readiness: the store answers and a model is loaded", "none", &[], None, "Ready"),
    ("get", "/metrics", "Prometheus metrics", "none", &[], None, "Text"),
    ("get", "/openapi.json", "This document", "none", &[], None, "Object"),
    ("get", "/docs", "This document as a readable page", "none", &[], None, "Html"),
    ("get", "/ping", "A static answer (the baseline of load tests)", "none", &[], None, "Text"),
    ("get", "/admin/models", "Loaded models and their metadata", "operator", &[], None, "Object"),
    ("post", "/admin/models", "Load, validate and activate a model file", "operator", &[], Some("Activate"), "Object"),
    ("post", "/admin/models/rollback", "Re-activate the previous model", "operator", &[], None, "Object"),
    (
        "get",
        "/admin/pushes/{id}",
        "A push's audit record: trigger, model, reasons, policy decisions, attempts, status",
        "operator",
        &[],
        None,
        "PushRecord",
    ),
    ("get", "/admin/queue", "Push queue depth and the latest dead letters", "operator", &[], None, "Object"),
    (
        "post",
        "/admin/campaigns",
        "Push a service to the n subjects most likely to need it (scored, not broadcast); dry_run only counts",
        "operator",
        &[],
        Some("Campaign"),
        "CampaignReport",
    ),
];

fn schemas() -> Value {
    let s = |t: &str| json!({ "type": t });
    let event = json!({
        "type": "object", "required": ["event_id", "subject", "service", "kind"], "additionalProperties": false,
        "properties": {
            "event_id": s("string"), "subject": s("string"), "service": s("string"),
            "kind": { "type": "string", "enum": EventKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>() },
            "rating": { "type": "integer", "minimum": 1, "maximum": 5 },
            "at": { "type": "string", "format": "date-time" },
            "channel": { "type": "string", "enum": ["web", "app", "mini", "office", "push", "system"] }
        }
    });
    json!({
        "Event": event,
        "Events": { "oneOf": [ { "$ref": "#/components/schemas/Event" },
            { "type": "object", "required": ["events"], "properties": { "events": { "type": "array", "maxItems": 1000, "items": { "$ref": "#/components/schemas/Event" } } } } ] },
        "Feedback": { "type": "object", "required": ["event_id", "subject", "service", "action"], "properties": {
            "event_id": s("string"), "subject": s("string"), "service": s("string"),
            "action": { "type": "string", "enum": ["clicked", "dismissed", "done_elsewhere", "rated"] },
            "rating": { "type": "integer", "minimum": 1, "maximum": 5 }, "at": { "type": "string", "format": "date-time" } } },
        "Session": { "type": "object", "required": ["recent"], "properties": { "recent": { "type": "array", "items": s("string") },
            "k": s("integer"), "locale": s("string"), "exclude": s("string"), "category": s("string") } },
        "Preferences": { "type": "object", "additionalProperties": false, "properties": {
            "push": s("boolean"), "categories_off": { "type": "array", "items": s("string") },
            "quiet_hours": { "type": "array", "items": s("integer"), "minItems": 2, "maxItems": 2, "nullable": true },
            "utc_offset_minutes": s("integer"), "personalised": s("boolean"), "locale": s("string"),
            "channels": { "type": "array", "items": { "type": "string", "enum": Outbound::ALL.map(Outbound::as_str) } } } },
        "PushRecord": { "type": "object", "properties": {
            "id": s("string"), "trigger": { "type": "string", "enum": Trigger::ALL.map(Trigger::as_str) },
            "bundle": { "type": "string", "nullable": true }, "services": { "type": "array", "items": s("string") },
            "model": s("string"), "reasons": { "type": "array", "items": s("string") }, "decisions": { "type": "array", "items": s("string") },
            "critical": s("boolean"), "created_at": s("integer"), "deliver_at": s("integer"), "expires_at": s("integer"), "attempts": s("integer"),
            "status": { "type": "string", "enum": ["queued", "deferred", "delivered", "skipped", "retrying", "dead"] },
            "detail": { "type": "string", "nullable": true } } },
        "Campaign": { "type": "object", "required": ["id", "service", "n"], "additionalProperties": false, "properties": {
            "id": s("string"), "service": s("string"), "n": { "type": "integer", "minimum": 1 }, "dry_run": s("boolean"),
            "reason": s("string") } },
        "CampaignReport": { "type": "object", "properties": {
            "id": s("string"), "dry_run": s("boolean"), "subjects": s("integer"), "eligible": s("integer"), "selected": s("integer"),
            "score_min": { "type": "number", "nullable": true }, "score_max": { "type": "number", "nullable": true },
            "queued": s("integer"), "skipped": { "type": "object", "additionalProperties": s("integer") } } },
        "Inbox": { "type": "object", "properties": { "subject": s("string"), "unread": s("integer"),
            "messages": { "type": "array", "items": { "type": "object" } } } },
        "Activate": { "type": "object", "required": ["path"], "properties": { "path": s("string") } },
        "Material": { "type": "object", "properties": { "name": s("string"), "shared": s("boolean") } },
        "Service": { "type": "object", "properties": {
            "id": s("string"), "name": s("string"), "name_zh": s("string"), "name_en": s("string"), "department": s("string"),
            "online": s("boolean"), "granted_without_applying": s("boolean"), "time_limit_days": s("integer"),
            "materials": { "type": "array", "items": { "$ref": "#/components/schemas/Material" } },
            "nothing_to_bring": s("boolean"), "deadline": { "type": "string", "nullable": true }, "link": s("string"),
            "bundles": { "type": "array", "items": { "type": "object" } } } },
        "Suggestion": { "type": "object", "properties": { "service": { "$ref": "#/components/schemas/Service" }, "score": s("number"),
            "reasons": { "type": "array", "items": { "type": "string", "enum": ["FOLLOWS", "OFTEN_TOGETHER", "NEXT_IN_BUNDLE", "DEADLINE", "REPEAT", "POPULAR_IN_SEGMENT"] } },
            "reason_text": s("string") } },
        "Recommendations": { "type": "object", "properties": { "subject": { "type": "string", "nullable": true }, "model": s("string"),
            "locale": s("string"), "mode": s("string"), "fallback": { "type": "string", "nullable": true },
            "suggestions": { "type": "array", "items": { "$ref": "#/components/schemas/Suggestion" } } } },
        "Related": { "type": "object", "properties": { "service": s("string"), "related": { "type": "array", "items": { "type": "object" } } } },
        "Ingested": { "type": "object", "properties": { "accepted": s("integer"), "duplicates": s("integer"),
            "too_late": s("integer"), "pushed": s("integer") } },
        "Ready": { "type": "object", "properties": { "store": s("string"), "model": s("string") } },
        "Problem": { "type": "object", "required": ["type", "title", "status", "code", "detail"], "properties": {
            "type": s("string"), "title": s("string"), "status": s("integer"),
            "code": { "type": "string", "enum": ProblemCode::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>() },
            "detail": s("string") } },
        "Object": s("object"),
        "Text": s("string"),
        "Empty": s("object"),
    })
}

/// The whole document. `open`: no API keys are configured, so no route asks for one (the
/// document says what this server does, not what a keyed deployment would).
pub fn document(open: bool) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for &(method, path, summary, scope, query, body, resp) in ROUTES {
        let mut params: Vec<Value> = query
            .iter()
            .map(|q| json!({ "name": q, "in": "query", "required": false, "schema": { "type": if *q == "k" { "integer" } else { "string" } } }))
            .collect();
        for name in ["id", "msg"] {
            if path.contains(&format!("{{{name}}}")) {
                params.push(json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }));
            }
        }
        let ok = if resp == "Text" || resp == "Html" {
            let media = if resp == "Html" { "text/html" } else { "text/plain" };
            json!({ "description": "OK", "content": { media: { "schema": { "type": "string" } } } })
        } else if resp == "Empty" {
            json!({ "description": "Done" })
        } else {
            json!({ "description": "OK", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{resp}") } } } })
        };
        let status = if resp == "Empty" { "204" } else { "200" };
        let problem = json!({ "description": "Problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
        let mut op = json!({
            "summary": summary,
            "parameters": params,
            "responses": { status: ok, "default": problem },
        });
        if scope != "none" && !open {
            op["security"] = json!([{ "apiKey": [] }]);
            op["description"] = json!(format!("Needs an API key of scope `{scope}` (or operator)."));
        }
        if let Some(b) = body {
            op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{b}") } } } });
        }
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "tongban", "version": env!("CARGO_PKG_VERSION"),
            "description": "Recommendation and proactive guidance API of a one-stop government services portal." },
        "paths": paths,
        "components": { "schemas": schemas(),
            "securitySchemes": { "apiKey": { "type": "apiKey", "in": "header", "name": "x-api-key" } } },
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A self-contained page listing every route (the docs UI).
pub fn html() -> String {
    let mut rows = String::new();
    for &(method, path, summary, scope, query, body, resp) in ROUTES {
        let q = if query.is_empty() { String::new() } else { format!("?{}", query.join("&amp;")) };
        rows += &format!(
            "<tr><td><b>{}</b></td><td><code>{}{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            method.to_uppercase(),
            escape(path),
            q,
            escape(summary),
            scope,
            body.unwrap_or("-"),
            resp
        );
    }
    format!(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tongban API</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}}</style></head>\
         <body><h1>tongban API v1</h1><p>Send API keys in the <code>x-api-key</code> header. Errors are \
         <code>application/problem+json</code> with a stable <code>code</code>. Machine-readable: \
         <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.0.3).</p>\
         <table><tr><th>method</th><th>path</th><th>what</th><th>key scope</th><th>body</th><th>answer</th></tr>{rows}</table></body></html>"
    )
}
