//! Items: list in a folder, get, create, rename, delete, list their files, download.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::client::{Call, GirderClient};
use super::error::GirderError;
use super::files::FileDoc;
use super::path::ApiPath;

/// A Girder item document.
#[derive(Debug, Clone, Deserialize)]
pub struct Item {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(rename = "folderId")]
    pub folder_id: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// Set by large_image when the item is a readable image: `{fileId, sourceName}`.
    #[serde(rename = "largeImage", default)]
    pub large_image: Option<LargeImageInfo>,
    #[serde(default)]
    pub created: Option<String>,
}

/// `item.largeImage`.
#[derive(Debug, Clone, Deserialize)]
pub struct LargeImageInfo {
    #[serde(rename = "fileId", default)]
    pub file_id: Option<String>,
    #[serde(rename = "sourceName", default)]
    pub source_name: Option<String>,
}

/// Girder's page size when none is given; a shorter page is the last one.
pub(crate) const PAGE: usize = 50;

/// `client.items()`.
pub struct Items<'a> {
    client: &'a GirderClient,
}

impl GirderClient {
    pub fn items(&self) -> Items<'_> {
        Items { client: self }
    }
}

impl Items<'_> {
    /// Every item in the folder, in Girder's order (by name), paging until a short page.
    pub async fn list(&self, folder_id: &str) -> Result<Vec<Item>, GirderError> {
        let mut all = Vec::new();
        loop {
            let call = Call::get("item")
                .query("folderId", folder_id)
                .query("limit", PAGE)
                .query("offset", all.len());
            let page: Vec<Item> = self.client.json(call).await?;
            let done = page.len() < PAGE;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// The item called `name` in the folder, if any.
    pub async fn find(&self, folder_id: &str, name: &str) -> Result<Option<Item>, GirderError> {
        let call = Call::get("item").query("folderId", folder_id).query("name", name).query("limit", 1);
        let found: Vec<Item> = self.client.json(call).await?;
        Ok(found.into_iter().next())
    }

    /// `GET /item/{id}`.
    pub async fn get(&self, id: &str) -> Result<Item, GirderError> {
        self.client.json(Call::get(ApiPath::id("item", id)?)).await
    }

    /// `POST /item`. Girder renames on a clash (`name (1)`), so the returned name may differ.
    pub async fn create(
        &self,
        folder_id: &str,
        name: &str,
        metadata: Option<&Value>,
    ) -> Result<Item, GirderError> {
        let mut call = Call::post("item").query("folderId", folder_id).query("name", name);
        if let Some(meta) = metadata {
            call = call.query("metadata", meta);
        }
        self.client.json(call).await
    }

    /// `PUT /item/{id}?name=`.
    pub async fn rename(&self, id: &str, name: &str) -> Result<Item, GirderError> {
        self.client.json(Call::put(ApiPath::id("item", id)?).query("name", name)).await
    }

    /// `DELETE /item/{id}` with its files.
    pub async fn delete(&self, id: &str) -> Result<(), GirderError> {
        let _: Value = self.client.json(Call::delete(ApiPath::id("item", id)?)).await?;
        Ok(())
    }

    /// The files of an item (`GET /item/{id}/files`).
    pub async fn files(&self, id: &str) -> Result<Vec<FileDoc>, GirderError> {
        self.client.json(Call::get(ApiPath::id("item", id)?.then("files")).query("limit", 0)).await
    }

    /// `GET /item/{id}/download`: the file's bytes when the item has one file, a zip of
    /// `<item>/<file>` entries when it has several.
    pub async fn download(&self, id: &str) -> Result<Bytes, GirderError> {
        Ok(self.client.fetch(&Call::get(ApiPath::id("item", id)?.then("download"))).await?.body)
    }
}
