//! `/upenn_annotation` (NimbusImage): create one or many (validated against the plugin's JSON
//! schema with fastjsonschema's messages), list with `shape`, `tags` (all must match), `limit`,
//! `offset`, `sort`, `sortdir`, `afterId` (then `offset` is ignored), count, get, update, delete.
//!
//! The list streams documents in stored key order with `_id` last and sends
//! `Girder-Total-Count` (matches before limit/offset); other answers have sorted keys.

use axum::body::Body;
use axum::extract::{Path, State as AxState};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::paging::Paging;
use crate::mock_girder::http::{json_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::ordered_json::Ordered;
use crate::mock_girder::server::Shared;
use crate::mock_girder::state::{check_id, is_object_id, AnnotationRec, Level, State, UserRec};

const REQUIRED: [&str; 6] = ["coordinates", "tags", "channel", "location", "shape", "datasetId"];
const SHAPES: [&str; 4] = ["point", "line", "polygon", "rectangle"];

fn is_int(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

/// The plugin's `AnnotationSchema` with fastjsonschema's wording, checked in schema order.
fn validate(doc: &Value) -> Result<(), String> {
    let Some(obj) = doc.as_object() else { return Err("data must be object".into()) };
    let mut missing: Vec<&str> = REQUIRED.iter().copied().filter(|k| !obj.contains_key(*k)).collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(format!("data must contain {} properties", py_list(&missing)));
    }
    if let Some(name) = obj.get("name") {
        if !name.is_string() {
            return Err("data.name must be string".into());
        }
    }
    let Some(coords) = obj.get("coordinates").and_then(Value::as_array) else {
        return Err("data.coordinates must be array".into());
    };
    if coords.is_empty() {
        return Err("data.coordinates must contain at least 1 items".into());
    }
    for (i, c) in coords.iter().enumerate() {
        let Some(c) = c.as_object() else { return Err(format!("data.coordinates[{i}] must be object")) };
        let mut missing: Vec<&str> = ["x", "y"].into_iter().filter(|k| !c.contains_key(*k)).collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(format!("data.coordinates[{i}] must contain {} properties", py_list(&missing)));
        }
        for k in ["x", "y", "z"] {
            if c.get(k).is_some_and(|v| !v.is_number()) {
                return Err(format!("data.coordinates[{i}].{k} must be number"));
            }
        }
    }
    let Some(tags) = obj.get("tags").and_then(Value::as_array) else {
        return Err("data.tags must be array".into());
    };
    if let Some(i) = tags.iter().position(|t| !t.is_string()) {
        return Err(format!("data.tags[{i}] must be string"));
    }
    if !obj.get("channel").is_some_and(is_int) {
        return Err("data.channel must be integer".into());
    }
    let Some(location) = obj.get("location").and_then(Value::as_object) else {
        return Err("data.location must be object".into());
    };
    for k in ["XY", "Z", "Time"] {
        if location.get(k).is_some_and(|v| !is_int(v)) {
            return Err(format!("data.location.{k} must be integer"));
        }
    }
    match obj.get("shape").and_then(Value::as_str) {
        None => return Err("data.shape must be string".into()),
        Some(s) if !SHAPES.contains(&s) => {
            return Err(format!("data.shape must be one of {}", py_list(&SHAPES)))
        }
        Some(_) => {}
    }
    if !obj.get("datasetId").and_then(Value::as_str).is_some_and(is_object_id) {
        return Err("data.datasetId must be objectId".into());
    }
    if obj.get("color").is_some_and(|c| !(c.is_string() || c.is_null())) {
        return Err("data.color must be string or null".into());
    }
    Ok(())
}

/// Python's `str(list_of_str)`: `['a', 'b']`.
fn py_list(items: &[&str]) -> String {
    format!("[{}]", items.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", "))
}

/// Checks write access to the dataset, the schema and that the dataset is a NimbusImage one.
fn check_new(st: &State, doc: &Value, user: &UserRec) -> Result<String, ApiError> {
    if let Some(id) = doc.get("datasetId").and_then(Value::as_str) {
        st.folder(id, Some(user), Level::Write)?;
    }
    validate(doc).map_err(ApiError::validation)?;
    let dataset_id = doc.get("datasetId").and_then(Value::as_str).unwrap_or_default().to_string();
    let is_dataset = st
        .folders
        .get(&dataset_id)
        .is_some_and(|f| f.meta.get("subtype").and_then(Value::as_str) == Some("contrastDataset"));
    if !is_dataset {
        return Err(ApiError::validation("Annotation dataset ID is invalid"));
    }
    Ok(dataset_id)
}

fn store(st: &mut State, doc: Ordered, dataset_id: String) -> Value {
    let id = st.new_id();
    let fields: Vec<(String, Ordered)> = match doc {
        Ordered::Object(m) => m.into_iter().filter(|(k, _)| k != "_id").collect(),
        _ => Vec::new(),
    };
    let rec = AnnotationRec { dataset_id, fields };
    let out = sorted_doc(&id, &rec);
    st.annotations.insert(id, rec);
    out
}

fn sorted_doc(id: &str, a: &AnnotationRec) -> Value {
    let mut m: Map<String, Value> = a.fields.iter().map(|(k, v)| (k.clone(), v.to_value())).collect();
    m.insert("_id".into(), Value::String(id.to_string()));
    Value::Object(m)
}

/// Stored key order, `_id` last, as the plugin's orjson stream writes it.
fn stored_order_json(id: &str, a: &AnnotationRec) -> String {
    let mut out = String::from("{");
    for (k, v) in &a.fields {
        out.push_str(&Value::String(k.clone()).to_string());
        out.push(':');
        v.write(&mut out);
        out.push(',');
    }
    out.push_str(&format!("\"_id\":\"{id}\"}}"));
    out
}

/// The body with its key order kept.
fn ordered_body(ctx: &Ctx) -> Result<Ordered, ApiError> {
    serde_json::from_slice(&ctx.body).map_err(|_| ApiError::rest("Invalid JSON passed in request body."))
}

pub(crate) async fn create(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let doc = ordered_body(&ctx)?;
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    let dataset_id = check_new(&st, &doc.to_value(), user)?;
    Ok(json_response(store(&mut st, doc, dataset_id)))
}

pub(crate) async fn create_many(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let Ordered::Array(docs) = ordered_body(&ctx)? else {
        return Err(ApiError::rest("Request body must be a JSON array."));
    };
    let mut st = app.state();
    let user = st.require_user(ctx.token())?;
    let ids = docs.iter().map(|d| check_new(&st, &d.to_value(), user)).collect::<Result<Vec<_>, _>>()?;
    let stored: Vec<Value> = docs.into_iter().zip(ids).map(|(d, id)| store(&mut st, d, id)).collect();
    Ok(json_response(Value::Array(stored)))
}

/// The dataset of a list/count request, checked for read access.
fn dataset<'a>(st: &'a State, ctx: &Ctx) -> Result<(&'a str, Option<Vec<String>>), ApiError> {
    let id = ctx.required("datasetId")?;
    let folder = st.folder(id, st.user(ctx.token()), Level::Read)?;
    let tags = match ctx.json_param("tags")? {
        None => None,
        Some(Value::Array(t)) => Some(t.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
        Some(_) => return Err(ApiError::rest("Parameter tags must be a JSON list.")),
    };
    Ok((&folder.id, tags))
}

fn matches(a: &AnnotationRec, dataset_id: &str, shape: Option<&str>, tags: &Option<Vec<String>>) -> bool {
    let field = |k: &str| a.fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.to_value());
    let has_tags = |wanted: &Vec<String>| {
        let have = field("tags");
        let have = have.as_ref().and_then(Value::as_array);
        wanted.iter().all(|w| have.is_some_and(|h| h.iter().any(|t| t.as_str() == Some(w))))
    };
    a.dataset_id == dataset_id
        && shape.is_none_or(|s| field("shape").as_ref().and_then(Value::as_str) == Some(s))
        && tags.as_ref().is_none_or(has_tags)
}

pub(crate) async fn list(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    let (dataset_id, tags) = dataset(&st, &ctx)?;
    let shape = ctx.param("shape");
    let after = ctx.param("afterId").filter(|a| !a.is_empty());
    if let Some(a) = after {
        check_id(a)?;
    }
    let mut paging = Paging::from(&ctx, "_id", false)?;
    if after.is_some() {
        paging.offset = 0; // the plugin ignores offset with a cursor
    }
    let selected: Vec<(&String, &AnnotationRec)> = st
        .annotations
        .iter()
        .filter(|(id, a)| {
            after.is_none_or(|after| id.as_str() > after) && matches(a, dataset_id, shape, &tags)
        })
        .collect();
    let total = selected.len();
    let mut docs: Vec<Value> = selected.iter().map(|(id, a)| sorted_doc(id, a)).collect();
    docs = paging.apply(docs);
    let body: Vec<String> = docs
        .iter()
        .filter_map(|d| d.get("_id").and_then(Value::as_str))
        .filter_map(|id| st.annotations.get(id).map(|a| stored_order_json(id, a)))
        .collect();
    let mut resp = Response::new(Body::from(format!("[{}]", body.join(","))));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("girder-total-count", HeaderValue::from(total));
    Ok(resp)
}

pub(crate) async fn count(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    let (dataset_id, tags) = dataset(&st, &ctx)?;
    let shape = ctx.param("shape").filter(|s| !s.is_empty());
    let n = st.annotations.values().filter(|a| matches(a, dataset_id, shape, &tags)).count();
    Ok(json_response(json!({"count": n})))
}

/// The annotation, if the caller has `level` on its dataset.
fn annotation<'a>(st: &'a State, id: &str, ctx: &Ctx, level: Level) -> Result<&'a AnnotationRec, ApiError> {
    check_id(id)?;
    let a = st
        .annotations
        .get(id)
        .ok_or_else(|| ApiError::rest(format!("Invalid upenn_annotation id ({id}).")))?;
    st.folder(&a.dataset_id, st.user(ctx.token()), level)?;
    Ok(a)
}

pub(crate) async fn get(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    Ok(json_response(sorted_doc(&id, annotation(&st, &id, &ctx, Level::Read)?)))
}

/// `PUT /upenn_annotation/{id}`: replaces the given fields, answers `null`.
pub(crate) async fn update(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let Ordered::Object(body) = ordered_body(&ctx)? else {
        return Err(ApiError::rest("Invalid JSON passed in request body."));
    };
    let mut st = app.state();
    st.require_user(ctx.token())?;
    annotation(&st, &id, &ctx, Level::Write)?;
    let allowed = ["name", "tags", "shape", "channel", "location", "coordinates", "color"];
    if let Some(a) = st.annotations.get_mut(&id) {
        for (k, v) in body.into_iter().filter(|(k, _)| allowed.contains(&k.as_str())) {
            match a.fields.iter_mut().find(|(f, _)| *f == k) {
                Some(slot) => slot.1 = v,
                None => a.fields.push((k, v)),
            }
        }
    }
    Ok(json_response(Value::Null))
}

pub(crate) async fn remove(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    st.require_user(ctx.token())?;
    annotation(&st, &id, &ctx, Level::Write)?;
    st.annotations.remove(&id);
    Ok(json_response(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({"tags": ["a"], "shape": "polygon", "channel": 0, "location": {"XY": 0, "Z": 0, "Time": 0},
               "datasetId": "6b03249f94fa99a6a51d070b", "coordinates": [{"x": 1, "y": 2}]})
    }

    #[test]
    fn missing_fields_are_listed_sorted_as_python_prints_them() {
        let mut doc = valid();
        doc.as_object_mut().unwrap().remove("channel");
        assert_eq!(validate(&doc).unwrap_err(), "data must contain ['channel'] properties");
        doc.as_object_mut().unwrap().remove("tags");
        assert_eq!(validate(&doc).unwrap_err(), "data must contain ['channel', 'tags'] properties");
    }

    #[test]
    fn types_and_enums_are_checked() {
        assert!(validate(&valid()).is_ok());
        let mut doc = valid();
        doc["channel"] = json!(1.5);
        assert_eq!(validate(&doc).unwrap_err(), "data.channel must be integer");
        let mut doc = valid();
        doc["shape"] = json!("circle");
        assert!(validate(&doc).unwrap_err().starts_with("data.shape must be one of ['point'"));
        let mut doc = valid();
        doc["coordinates"] = json!([]);
        assert_eq!(validate(&doc).unwrap_err(), "data.coordinates must contain at least 1 items");
    }
}
