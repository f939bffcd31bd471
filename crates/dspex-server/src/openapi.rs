//! `GET /openapi.json`: OpenAPI 3.1, generated from the handlers' types
//! (utoipa), plus, for each program, its own `execute` path whose request
//! and response carry the program's input and output JSON Schemas.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::api;
use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "DSPex",
        description = "DSPy programs served by a supervised pool of Python workers",
    ),
    paths(api::execute, api::stream, api::batch, api::list, api::describe, api::create),
    components(schemas(
        api::ExecuteBody,
        api::BatchBody,
        api::CallOptions,
        api::PredictionBody,
        api::BatchItem,
        api::BatchResults,
        api::ProgramSummary,
        api::ProgramDetail,
        api::CreateBody,
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
    )),
    tags((name = "programs", description = "Run and describe programs")),
)]
struct Generated;

/// The document for the programs known now.
pub(crate) fn build(state: &AppState) -> Value {
    let mut doc = serde_json::to_value(Generated::openapi()).unwrap_or_else(|_| json!({}));
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let operational = [
        ("/healthz", "The process answers", "text/plain"),
        (
            "/readyz",
            "At least one worker is ready and the pool has not failed",
            "text/plain",
        ),
        (
            "/v1/status",
            "The supervision tree, queue, breaker and programs",
            "application/json",
        ),
        ("/metrics", "Prometheus metrics (text format)", "text/plain"),
        (
            "/v1/live",
            "The live view: server-sent `snapshot` and `event`",
            "text/event-stream",
        ),
    ];
    for (path, summary, content) in operational {
        doc["paths"][path] = json!({"get": {
            "tags": ["operations"],
            "summary": summary,
            "responses": {
                "200": {"description": summary, "content": {content: {"schema": {"type": "string"}}}},
                "503": {"description": "Not ready", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
            },
        }});
    }
    for info in state.dspex().list_programs() {
        let id = &info.program_id;
        let inputs = strip_dialect(info.signature.input_schema());
        let outputs = strip_dialect(info.signature.output_schema());
        let (input_name, output_name) = (format!("{id}.inputs"), format!("{id}.outputs"));
        doc["components"]["schemas"][&input_name] = inputs;
        doc["components"]["schemas"][&output_name] = outputs;
        let request = json!({
            "type": "object",
            "required": ["inputs"],
            "properties": {"inputs": {"$ref": format!("#/components/schemas/{input_name}")}},
            "allOf": [{"$ref": "#/components/schemas/CallOptions"}],
        });
        let response = json!({
            "allOf": [
                {"$ref": "#/components/schemas/PredictionBody"},
                {"type": "object", "properties": {
                    "outputs": {"$ref": format!("#/components/schemas/{output_name}")}}},
            ],
        });
        let error = json!({"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
        let error_with = |description: &str| {
            let mut e = error.clone();
            e["description"] = json!(description);
            e
        };
        doc["paths"][format!("/v1/programs/{id}/execute")] = json!({"post": {
            "tags": ["program: ".to_owned() + id],
            "operationId": format!("execute_{}", operation_id(id)),
            "summary": format!("Run {id}: {}", info.signature),
            "description": info.signature.instructions(),
            "requestBody": {"required": true, "content": {"application/json": {"schema": request}}},
            "responses": {
                "200": {"description": "The prediction", "content": {"application/json": {"schema": response}}},
                "422": error_with("Inputs that do not fit the signature"),
                "429": error_with("Overloaded (see Retry-After)"),
                "503": error_with("Unavailable or circuit open (see Retry-After)"),
                "504": error_with("The call's deadline passed"),
            },
        }});
    }
    doc
}

/// A JSON Schema embedded in OpenAPI 3.1 takes the document's dialect.
fn strip_dialect(mut schema: Value) -> Value {
    if let Some(map) = schema.as_object_mut() {
        map.remove("$schema");
    }
    schema
}

fn operation_id(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `GET /openapi.json`.
pub(crate) async fn document(State(state): State<AppState>) -> Json<Value> {
    Json(build(&state))
}
