//! Folders: get, find by parent and name, create (optionally reusing an existing one), make a
//! path of nested folders, delete.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::client::{Call, GirderClient};
use super::error::GirderError;
use super::path::ApiPath;

/// What a folder hangs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentType {
    Folder,
    User,
    Collection,
}

impl ParentType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParentType::Folder => "folder",
            ParentType::User => "user",
            ParentType::Collection => "collection",
        }
    }
}

/// A Girder folder document.
#[derive(Debug, Clone, Deserialize)]
pub struct Folder {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(rename = "parentId")]
    pub parent_id: String,
    /// `folder`, `user` or `collection`.
    #[serde(rename = "parentCollection")]
    pub parent_collection: String,
    #[serde(rename = "baseParentId", default)]
    pub base_parent_id: Option<String>,
    #[serde(default)]
    pub description: String,
    /// User metadata; a NimbusImage dataset has `subtype: contrastDataset`.
    #[serde(default)]
    pub meta: Map<String, Value>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub size: u64,
}

/// `client.folders()`.
pub struct Folders<'a> {
    client: &'a GirderClient,
}

impl GirderClient {
    pub fn folders(&self) -> Folders<'_> {
        Folders { client: self }
    }
}

impl Folders<'_> {
    /// `GET /folder/{id}`.
    pub async fn get(&self, id: &str) -> Result<Folder, GirderError> {
        self.client.json(Call::get(ApiPath::id("folder", id)?)).await
    }

    /// The folder called `name` directly under the parent, if any (`GET /folder?parentType&parentId&name`).
    pub async fn find(
        &self,
        parent: ParentType,
        parent_id: &str,
        name: &str,
    ) -> Result<Option<Folder>, GirderError> {
        let call = Call::get("folder")
            .query("parentType", parent.as_str())
            .query("parentId", parent_id)
            .query("name", name)
            .query("limit", 1);
        let found: Vec<Folder> = self.client.json(call).await?;
        Ok(found.into_iter().next())
    }

    /// All folders directly under the parent.
    pub async fn list(&self, parent: ParentType, parent_id: &str) -> Result<Vec<Folder>, GirderError> {
        let call = Call::get("folder")
            .query("parentType", parent.as_str())
            .query("parentId", parent_id)
            .query("limit", 0);
        self.client.json(call).await
    }

    /// `POST /folder`. With `reuse_existing` Girder returns the folder of that name if there is
    /// one (so the call is safe to retry); without, a duplicate name is a 400. Metadata keys whose
    /// value is `null` are dropped by Girder.
    pub async fn create(
        &self,
        parent: ParentType,
        parent_id: &str,
        name: &str,
        metadata: Option<&Value>,
        reuse_existing: bool,
    ) -> Result<Folder, GirderError> {
        let mut call = Call::post("folder")
            .form("parentType", parent.as_str())
            .form("parentId", parent_id)
            .form("name", name)
            .form("reuseExisting", reuse_existing);
        if let Some(meta) = metadata {
            call = call.form("metadata", meta);
        }
        if reuse_existing {
            call = call.idempotent();
        }
        self.client.json(call).await
    }

    /// Finds or creates each folder of `names` in turn below `parent_id` (a folder) and returns
    /// the last, e.g. `[".cellpose", "models"]` under the user's `Private` folder.
    pub async fn ensure_path(&self, parent_id: &str, names: &[&str]) -> Result<Folder, GirderError> {
        let mut parent = self.get(parent_id).await?;
        for name in names {
            parent = self.create(ParentType::Folder, &parent.id, name, None, true).await?;
        }
        Ok(parent)
    }

    /// A user's `Private` (or `Public`) folder.
    pub async fn user_folder(&self, user_id: &str, name: &str) -> Result<Folder, GirderError> {
        self.find(ParentType::User, user_id, name).await?.ok_or_else(|| {
            GirderError::Invalid(format!(
                "user {user_id} has no `{name}` folder; Girder creates it with the user"
            ))
        })
    }

    /// `PUT /folder/{id}/metadata`: merges `metadata` (an object) into the folder's; a `null`
    /// value deletes its key.
    pub async fn set_metadata(&self, id: &str, metadata: &Value) -> Result<Folder, GirderError> {
        self.client.json(Call::put(ApiPath::id("folder", id)?.then("metadata")).json(metadata.clone())).await
    }

    /// `DELETE /folder/{id}` (and everything in it).
    pub async fn delete(&self, id: &str) -> Result<(), GirderError> {
        let _: Value = self.client.json(Call::delete(ApiPath::id("folder", id)?)).await?;
        Ok(())
    }
}
