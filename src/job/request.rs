//! What the platform asks the worker to do, typed once at the edge: NimbusImage's one-shot
//! container command line (`--request --datasetId --token --parameters`) and a queued Girder
//! job's kwargs carry the same four things, and both become one [`JobRequest`] here, with the
//! [`Tool`] it is for decided here too (a queued job by its type; `interface` by the setting or
//! the image's name; `compute` by the fields sent). Past this point no stage reads raw JSON
//! except the interface values, which the intake validates field by field (so a user sees
//! every bad field at once).

use serde_json::Value;

use crate::config::{QueueSettings, ToolSetting};
use crate::girder::{Job, ObjectId, Secret};
use crate::tool::Tool;

/// `interface` posts the tool's fields; `compute` runs the training job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Interface,
    #[default]
    Compute,
}

/// A request to the worker.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub request: Request,
    /// Required for `compute`; checked when the request is read (it goes into request paths).
    pub dataset_id: Option<ObjectId>,
    /// The submitting user's token: the job acts as them.
    pub token: Secret,
    /// The worker image's name (`parameters.image`): where `interface` posts the fields.
    pub image: Option<String>,
    /// `parameters.workerInterface`: the tool's field values (validated by the intake).
    pub values: Value,
    /// The tool the request is for.
    pub tool: Tool,
}

/// Why a request cannot be read; the message says what the platform (or the user) sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

#[derive(serde::Deserialize)]
struct Kwargs {
    #[serde(default)]
    request: Request,
    #[serde(rename = "datasetId")]
    dataset_id: String,
    token: Secret,
    #[serde(default)]
    parameters: Value,
}

impl JobRequest {
    /// From the one-shot command line: `parameters` is the `--parameters` JSON text; `tool` is
    /// the image's `[oneshot] tool` setting (an `interface` request carries nothing else that
    /// says its tool; a `compute` request is told by its fields).
    pub(crate) fn from_command_line(
        request: Request,
        token: Secret,
        dataset_id: Option<String>,
        parameters: Option<&str>,
        tool: ToolSetting,
    ) -> Result<JobRequest, RequestError> {
        let params: Value = serde_json::from_str(parameters.unwrap_or("{}"))
            .map_err(|e| RequestError(format!("--parameters is not valid JSON: {e}")))?;
        if !params.is_object() {
            return Err(RequestError(format!(
                "--parameters must be a JSON object such as '{{\"workerInterface\": {{...}}}}', not {}",
                super::validate::json_type(&params)
            )));
        }
        // (a datasetId of the wrong type is named below, with what the id is)
        if let Some(v) = params.get("image").filter(|v| !v.is_string() && !v.is_null()) {
            return Err(RequestError(format!(
                "--parameters: `image` must be a string, not {}",
                super::json_type(v)
            )));
        }
        // NimbusImage passes the dataset as a flag; older launchers put it in the parameters
        let dataset_id = match dataset_id {
            Some(id) => Some(dataset_object_id(&id, "--datasetId")?),
            None => match params.get("datasetId") {
                None | Some(Value::Null) => None,
                Some(Value::String(id)) => Some(dataset_object_id(id, "--parameters' datasetId")?),
                Some(other) => {
                    return Err(RequestError(format!(
                        "--parameters' datasetId must be a string (the dataset folder's id), not {}",
                        super::json_type(other)
                    )))
                }
            },
        };
        let mut r = Self::with_parameters(request, token, dataset_id, &params, Tool::Cellpose);
        r.tool = match request {
            Request::Interface => tool.for_image(r.image.as_deref().unwrap_or_default()),
            Request::Compute => super::family::tool_of_values(&r.values),
        };
        Ok(r)
    }

    /// From a queued job's kwargs (`{request, datasetId, token, parameters}`); its type says the
    /// tool (`queue` names the types).
    pub(crate) fn from_job(job: &Job, queue: &QueueSettings) -> Result<JobRequest, RequestError> {
        let kwargs = job.kwargs.clone().ok_or_else(|| {
            RequestError("the job has no kwargs (is the worker's API key an admin's?)".into())
        })?;
        let named = wrong_kwarg(&kwargs);
        let k: Kwargs = serde_json::from_value(kwargs).map_err(|e| {
            let why = named.unwrap_or_else(|| e.to_string());
            RequestError(format!("the job's kwargs are not {{request, datasetId, token, parameters}}: {why}"))
        })?;
        if !(k.parameters.is_object() || k.parameters.is_null()) {
            return Err(RequestError(format!(
                "the job's kwargs.parameters must be an object {{\"workerInterface\": {{...}}}}, not {}",
                super::validate::json_type(&k.parameters)
            )));
        }
        if k.request != Request::Compute {
            return Err(RequestError(
                "the job asks for request `interface`; this worker runs `compute`".into(),
            ));
        }
        let dataset_id = dataset_object_id(&k.dataset_id, "the job's kwargs.datasetId")?;
        let tool = queue.tool_for(&job.job_type);
        Ok(Self::with_parameters(k.request, k.token, Some(dataset_id), &k.parameters, tool))
    }

    fn with_parameters(
        request: Request,
        token: Secret,
        dataset_id: Option<ObjectId>,
        params: &Value,
        tool: Tool,
    ) -> JobRequest {
        JobRequest {
            request,
            dataset_id,
            token,
            image: params.get("image").and_then(Value::as_str).map(str::to_string),
            values: params.get("workerInterface").cloned().unwrap_or(Value::Null),
            tool,
        }
    }

    /// The dataset of a `compute` request.
    pub fn dataset(&self) -> Result<&ObjectId, RequestError> {
        self.dataset_id.as_ref().ok_or_else(|| RequestError("--datasetId is required for compute".into()))
    }
}

/// The dataset folder's id from `source` (the flag or field that carried it, named in the error).
fn dataset_object_id(id: &str, source: &str) -> Result<ObjectId, RequestError> {
    ObjectId::parse("dataset", id).map_err(|e| {
        RequestError(format!(
            "{source}: {e}; pass the id of the dataset folder as NimbusImage shows it (Girder refers to it by that id, never by a path)"
        ))
    })
}

/// The kwargs field that does not have the shape [`Kwargs`] needs, named (serde's own message,
/// "invalid type: map, expected a string", says neither which field nor where).
fn wrong_kwarg(kwargs: &Value) -> Option<String> {
    let Some(map) = kwargs.as_object() else {
        return Some(format!("kwargs is {}, not an object", super::json_type(kwargs)));
    };
    for (key, required) in [("request", false), ("datasetId", true), ("token", true)] {
        match map.get(key) {
            None if required => return Some(format!("kwargs.{key} is missing")),
            None | Some(Value::String(_)) => {}
            Some(Value::Null) if !required => {}
            Some(v) => return Some(format!("kwargs.{key} must be a string, not {}", super::json_type(v))),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto() -> ToolSetting {
        ToolSetting::default()
    }

    const D1: &str = "5f3c9a1b2d4e6f7a8b9c0d1e";

    fn job(kwargs: Value) -> Job {
        job_of_type("cellpose_train", kwargs)
    }

    fn job_of_type(job_type: &str, kwargs: Value) -> Job {
        serde_json::from_value(
            serde_json::json!({"_id": "j1", "title": "t", "type": job_type, "status": 1, "kwargs": kwargs}),
        )
        .unwrap()
    }

    #[test]
    fn the_tool_is_decided_where_the_request_comes_in() {
        let line = |request, params: &str, setting| {
            JobRequest::from_command_line(request, Secret::new("t"), Some(D1.into()), Some(params), setting)
                .unwrap()
                .tool
        };
        let sam = ToolSetting(Some(Tool::CellposeSam));
        // compute: by the fields sent, whatever the image's setting
        let slots = r#"{"workerInterface": {"Channel for Slot 1": {"0": true}}}"#;
        let primary = r#"{"workerInterface": {"Primary Channel": 0}}"#;
        assert_eq!(line(Request::Compute, slots, auto()), Tool::CellposeSam);
        assert_eq!(line(Request::Compute, primary, sam), Tool::Cellpose);
        // interface: by the setting, else by the image's name
        let named = r#"{"image": "nimbusimage/cellposesam_train:latest"}"#;
        let plain = r#"{"image": "lab/retrain:2"}"#;
        assert_eq!(line(Request::Interface, named, auto()), Tool::CellposeSam);
        assert_eq!(line(Request::Interface, plain, sam), Tool::CellposeSam);
        assert_eq!(line(Request::Interface, plain, auto()), Tool::Cellpose);
        // a queued job: by its type
        let kwargs = serde_json::json!({"request": "compute", "datasetId": D1, "token": "t"});
        let queued =
            |t: &str| JobRequest::from_job(&job_of_type(t, kwargs.clone()), &QueueSettings::default());
        assert_eq!(queued("cellposesam_train").unwrap().tool, Tool::CellposeSam);
        assert_eq!(queued("cellpose_train").unwrap().tool, Tool::Cellpose);
    }

    #[test]
    fn the_command_line_and_the_job_kwargs_give_the_same_request() {
        let params = r#"{"image": "img:1", "workerInterface": {"Epochs": 3}}"#;
        let a = JobRequest::from_command_line(
            Request::Compute,
            Secret::new("t"),
            Some(D1.into()),
            Some(params),
            ToolSetting::default(),
        )
        .unwrap();
        let b = JobRequest::from_job(
            &job(serde_json::json!({
                "request": "compute", "datasetId": D1, "token": "t",
                "parameters": serde_json::from_str::<Value>(params).unwrap(),
            })),
            &QueueSettings::default(),
        )
        .unwrap();
        for r in [&a, &b] {
            assert_eq!(r.dataset().unwrap(), D1);
            assert_eq!(r.image.as_deref(), Some("img:1"));
            assert_eq!(r.values, serde_json::json!({"Epochs": 3}));
            assert_eq!(r.token.expose(), "t");
            assert_eq!(r.tool, Tool::Cellpose);
        }
    }

    #[test]
    fn bad_requests_say_what_was_sent() {
        let e = JobRequest::from_command_line(Request::Compute, Secret::new("t"), None, Some("[1]"), auto())
            .unwrap_err();
        assert!(e.0.contains("not an array"), "{e}");
        let e = JobRequest::from_command_line(Request::Compute, Secret::new("t"), None, Some("{"), auto())
            .unwrap_err();
        assert!(e.0.contains("not valid JSON"), "{e}");
        let r =
            JobRequest::from_command_line(Request::Compute, Secret::new("t"), None, None, auto()).unwrap();
        assert!(r.dataset().unwrap_err().0.contains("--datasetId"));
        let e = JobRequest::from_job(
            &job(serde_json::json!({"request": "interface", "datasetId": D1, "token": "t"})),
            &QueueSettings::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("runs `compute`"), "{e}");
        let e = JobRequest::from_job(
            &job(serde_json::json!({"datasetId": D1, "token": "t", "parameters": 3})),
            &QueueSettings::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("not a number"), "{e}");
        // a wrong JSON shape names the field, not just serde's "invalid type: map"
        let from = |kwargs: Value| JobRequest::from_job(&job(kwargs), &QueueSettings::default()).unwrap_err();
        let e = from(serde_json::json!({"datasetId": {"$oid": "d"}, "token": "t"}));
        assert!(e.0.contains("kwargs.datasetId must be a string, not an object"), "{e}");
        let e = from(serde_json::json!({"datasetId": "d", "token": ["t"]}));
        assert!(e.0.contains("kwargs.token must be a string, not an array"), "{e}");
        let e = from(serde_json::json!({"token": "t"}));
        assert!(e.0.contains("kwargs.datasetId is missing"), "{e}");
        let e = JobRequest::from_command_line(
            Request::Interface,
            Secret::new("t"),
            None,
            Some(r#"{"image": {}}"#),
            auto(),
        )
        .unwrap_err();
        assert!(e.0.contains("`image` must be a string, not an object"), "{e}");
    }

    /// Issue 26: a dataset id goes into request paths (`folder/{id}`); `../user/me` would send
    /// the user's token to `GET user/me`, `ID?x=1` would add a query. Refused at the edge, naming
    /// where it came from.
    #[test]
    fn a_dataset_id_that_is_not_an_object_id_is_refused_naming_the_flag_or_field() {
        for bad in ["../user/me", &format!("{D1}?x=1"), "d1", ""] {
            let e = JobRequest::from_command_line(
                Request::Compute,
                Secret::new("t"),
                Some(bad.into()),
                None,
                auto(),
            )
            .unwrap_err();
            assert!(e.0.starts_with("--datasetId: dataset id `"), "{e}");
            assert!(e.0.contains(bad) && e.0.contains("24 hexadecimal digits"), "{e}");
            let params = serde_json::json!({"datasetId": bad}).to_string();
            let e = JobRequest::from_command_line(
                Request::Compute,
                Secret::new("t"),
                None,
                Some(&params),
                auto(),
            )
            .unwrap_err();
            assert!(e.0.starts_with("--parameters' datasetId: dataset id `"), "{e}");
            let e = JobRequest::from_job(
                &job(serde_json::json!({"datasetId": bad, "token": "t"})),
                &QueueSettings::default(),
            )
            .unwrap_err();
            assert!(e.0.starts_with("the job's kwargs.datasetId: dataset id `"), "{e}");
        }
        let e = JobRequest::from_command_line(
            Request::Compute,
            Secret::new("t"),
            None,
            Some(r#"{"datasetId": {"$ne": 1}}"#),
            auto(),
        )
        .unwrap_err();
        assert!(e.0.contains("datasetId must be a string") && e.0.contains("not an object"), "{e}");
    }
}
