//! NimbusImage annotations (`upenncontrast_annotation` plugin): all annotations of a dataset,
//! read with `sort=_id&afterId=` cursor paging until a short page; bulk create for seeding.
//!
//! Documents are returned as raw JSON: validating each one is `crate::annotations`' job, so its
//! errors can name the annotation id.

use serde::Deserialize;
use serde_json::Value;

use super::client::{Call, GirderClient};
use super::error::GirderError;

/// Which annotations of a dataset to read.
#[derive(Debug, Clone)]
pub struct AnnotationQuery {
    /// `point`, `line`, `polygon` or `rectangle`; `None` for all.
    pub shape: Option<String>,
    /// Only annotations carrying all of these tags.
    pub tags: Vec<String>,
    /// Documents per request.
    pub page_size: u32,
}

impl Default for AnnotationQuery {
    fn default() -> Self {
        AnnotationQuery { shape: None, tags: Vec::new(), page_size: 1000 }
    }
}

/// `client.annotations()`.
pub struct Annotations<'a> {
    client: &'a GirderClient,
}

impl GirderClient {
    pub fn annotations(&self) -> Annotations<'_> {
        Annotations { client: self }
    }
}

impl Annotations<'_> {
    /// Every annotation of the dataset folder matching `query`, in `_id` order.
    #[tracing::instrument(skip_all, fields(dataset_id = %dataset_id))]
    pub async fn list(&self, dataset_id: &str, query: &AnnotationQuery) -> Result<Vec<Value>, GirderError> {
        let limit = query.page_size.max(1);
        let mut all: Vec<Value> = Vec::new();
        loop {
            let mut call = Call::get("upenn_annotation")
                .query("datasetId", dataset_id)
                .query_opt("shape", query.shape.as_ref())
                .query("limit", limit)
                .query("sort", "_id")
                .query("sortdir", 1);
            if !query.tags.is_empty() {
                call = call.query("tags", Value::from(query.tags.clone()));
            }
            if let Some(last) = all.last() {
                let last_id = last.get("_id").and_then(Value::as_str).ok_or_else(|| {
                    GirderError::decode("GET", "upenn_annotation", "annotation without a string _id")
                })?;
                call = call.query("afterId", last_id);
            }
            let page: Vec<Value> = self.client.json(call).await?;
            let done = page.len() < limit as usize;
            all.extend(page);
            if done {
                tracing::debug!(count = all.len(), "annotations read");
                return Ok(all);
            }
        }
    }

    /// `GET /upenn_annotation/count`.
    pub async fn count(&self, dataset_id: &str, shape: Option<&str>) -> Result<u64, GirderError> {
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        let call =
            Call::get("upenn_annotation/count").query("datasetId", dataset_id).query_opt("shape", shape);
        Ok(self.client.json::<Count>(call).await?.count)
    }

    /// `POST /upenn_annotation/multiple`: stores the documents, returns them with their `_id`.
    pub async fn create_many(&self, annotations: &[Value]) -> Result<Vec<Value>, GirderError> {
        self.client
            .json(Call::post("upenn_annotation/multiple").json(Value::from(annotations.to_vec())))
            .await
    }
}
