//! `GET /resource/lookup?path=`: a folder or item by its path, e.g.
//! `/user/alice/Private/dataset1/image.ome.tif`.

use serde_json::Value;

use super::client::{Call, GirderClient};
use super::error::GirderError;
use super::folders::Folder;
use super::items::Item;

/// What a path names.
#[derive(Debug, Clone)]
pub enum Resource {
    Folder(Folder),
    Item(Item),
    /// A user, collection or anything else, as Girder sent it.
    Other(Value),
}

/// `client.resources()`.
pub struct Resources<'a> {
    client: &'a GirderClient,
}

impl GirderClient {
    pub fn resources(&self) -> Resources<'_> {
        Resources { client: self }
    }

    /// `GET /system/version`: the server's release; a cheap reachability check (health probes).
    pub async fn system_version(&self) -> Result<String, GirderError> {
        let v: Value = self.json(Call::get("system/version").anonymous()).await?;
        Ok(v.get("release").and_then(Value::as_str).unwrap_or("unknown").to_string())
    }
}

impl Resources<'_> {
    /// The resource at `path`. Girder 5 answers a missing path with 400 `Path not found: ...`.
    pub async fn lookup(&self, path: &str) -> Result<Resource, GirderError> {
        let v: Value = self.client.json(Call::get("resource/lookup").query("path", path)).await?;
        let decode = |e: serde_json::Error| GirderError::decode("GET", "resource/lookup", e.to_string());
        Ok(match v.get("_modelType").and_then(Value::as_str) {
            Some("folder") => Resource::Folder(serde_json::from_value(v).map_err(decode)?),
            Some("item") => Resource::Item(serde_json::from_value(v).map_err(decode)?),
            _ => Resource::Other(v),
        })
    }

    /// Like [`Self::lookup`], with a missing path as `None`.
    pub async fn find(&self, path: &str) -> Result<Option<Resource>, GirderError> {
        match self.lookup(path).await {
            Err(GirderError::Http { status: 400, message, .. }) if message.starts_with("Path not found") => {
                Ok(None)
            }
            other => other.map(Some),
        }
    }
}
