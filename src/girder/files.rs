//! Files: chunked, resumable upload and streaming download.
//!
//! Upload follows Girder's protocol: `POST /file` makes an upload, `POST /file/chunk?offset=`
//! sends bytes, the chunk that completes it returns the file document. Every chunk except the
//! last must be at least `core.upload_minimum_chunk_size` (5 MiB by default). A chunk POST is
//! never resent blindly: after a timeout, a dropped connection or a 5xx the client asks
//! `GET /file/offset` how much the server really has and continues from there. If the upload is
//! gone because the final chunk did land, the file is found in its item.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::client::{decode_json, Call, GirderClient};
use super::error::GirderError;
use super::items::Item;
use super::path::ApiPath;

/// A Girder file document.
#[derive(Debug, Clone, Deserialize)]
pub struct FileDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    pub size: u64,
    #[serde(rename = "itemId", default)]
    pub item_id: Option<String>,
    #[serde(rename = "mimeType", default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
}

/// Slowest transfer rate a chunk upload is given time for, on top of the request timeout.
const MIN_UPLOAD_RATE: f64 = 1024.0 * 1024.0;

/// `client.files()`.
pub struct Files<'a> {
    client: &'a GirderClient,
}

impl GirderClient {
    pub fn files(&self) -> Files<'_> {
        Files { client: self }
    }
}

impl Files<'_> {
    /// `GET /file/{id}`.
    pub async fn get(&self, id: &str) -> Result<FileDoc, GirderError> {
        self.client.json(Call::get(ApiPath::id("file", id)?)).await
    }

    /// Creates item `name` in the folder and uploads `data` as its one file. Girder may rename
    /// the item on a name clash (`name (1)`). If the upload fails the new item is deleted again.
    pub async fn upload_item(
        &self,
        folder_id: &str,
        name: &str,
        data: Bytes,
        mime_type: &str,
    ) -> Result<(Item, FileDoc), GirderError> {
        let item = self.client.items().create(folder_id, name, None).await?;
        match self.upload_to_item(&item.id, name, data, mime_type).await {
            Ok(file) => Ok((item, file)),
            Err(err) => {
                if let Err(cleanup) = self.client.items().delete(&item.id).await {
                    tracing::warn!(item_id = %item.id, error.message = %cleanup, "could not delete the item of a failed upload");
                }
                Err(err)
            }
        }
    }

    /// Uploads `data` as a new file of an existing item, in chunks of `upload_chunk_size`.
    #[tracing::instrument(skip_all, fields(item_id = %item_id, name = %name, size = data.len()))]
    pub async fn upload_to_item(
        &self,
        item_id: &str,
        name: &str,
        data: Bytes,
        mime_type: &str,
    ) -> Result<FileDoc, GirderError> {
        let call = Call::post("file")
            .query("parentType", "item")
            .query("parentId", item_id)
            .query("name", name)
            .query("size", data.len())
            .query("mimeType", mime_type);
        let init: Value = self.client.json(call).await?;
        if is_file(&init) {
            // a zero-byte file comes back complete at once
            return serde_json::from_value(init)
                .map_err(|e| GirderError::decode("POST", "file", e.to_string()));
        }
        let upload_id = init
            .get("_id")
            .and_then(Value::as_str)
            .ok_or_else(|| GirderError::decode("POST", "file", "upload document without _id"))?
            .to_string();
        self.send_chunks(&upload_id, item_id, name, data).await
    }

    async fn send_chunks(
        &self,
        upload_id: &str,
        item_id: &str,
        name: &str,
        data: Bytes,
    ) -> Result<FileDoc, GirderError> {
        let config = self.client.config();
        let chunk = config.upload_chunk_size.max(1);
        let size = data.len();
        let mut offset = 0usize;
        let mut failures = 0u32;
        let started = Instant::now();
        loop {
            let end = offset.saturating_add(chunk).min(size);
            let part = data.slice(offset..end);
            let timeout = config.timeout.max(Duration::from_secs_f64(part.len() as f64 / MIN_UPLOAD_RATE));
            let call = Call::post("file/chunk")
                .query("uploadId", upload_id)
                .query("offset", offset)
                .bytes(part)
                .timeout(timeout);
            let err = match self.client.fetch(&call).await {
                Ok(fetched) => {
                    let doc: Value = decode_json(&call, &fetched.body)?;
                    if is_file(&doc) {
                        return serde_json::from_value(doc)
                            .map_err(|e| GirderError::decode("POST", "file/chunk", e.to_string()));
                    }
                    offset = received(&doc).ok_or_else(|| {
                        GirderError::decode("POST", "file/chunk", "upload without `received`")
                    })?;
                    failures = 0;
                    continue;
                }
                Err(err) => err,
            };
            if let Some(message) = err.girder_message().filter(|m| m.contains("smaller than the minimum")) {
                return Err(GirderError::Invalid(format!(
                    "Girder refused a {}-byte upload chunk ({message}); set upload_chunk_size to at least the server's core.upload_minimum_chunk_size (5 MiB by default)",
                    end - offset
                )));
            }
            let wrong_offset = err.girder_message().is_some_and(|m| m.starts_with("Server has received"));
            if !(err.is_transient() || wrong_offset) {
                return Err(err);
            }
            let Some(wait) = config.retry.backoff(failures, started.elapsed(), None, &mut rand::thread_rng())
            else {
                return Err(err);
            };
            failures += 1;
            tracing::warn!(upload_id, offset, error.message = %err, "upload chunk failed; asking Girder for the offset to resume from");
            tokio::time::sleep(wait).await;
            match self.offset(upload_id).await {
                Ok(o) if o <= size => offset = o,
                Ok(o) => {
                    return Err(GirderError::decode(
                        "GET",
                        "file/offset",
                        format!("offset {o} beyond the {size} bytes sent"),
                    ))
                }
                // The upload no longer exists: the final chunk landed and only its answer was lost.
                Err(GirderError::Http { status: 400, .. }) => {
                    let files = self.client.items().files(item_id).await?;
                    return files.into_iter().find(|f| f.name == name && f.size == size as u64).ok_or(err);
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// `GET /file/offset?uploadId=`: bytes the server holds for an unfinished upload.
    pub async fn offset(&self, upload_id: &str) -> Result<usize, GirderError> {
        #[derive(Deserialize)]
        struct Offset {
            offset: usize,
        }
        let o: Offset = self.client.json(Call::get("file/offset").query("uploadId", upload_id)).await?;
        Ok(o.offset)
    }

    /// `GET /file/{id}/download` into memory.
    pub async fn download(&self, id: &str) -> Result<Bytes, GirderError> {
        Ok(self.client.fetch(&Call::get(ApiPath::id("file", id)?.then("download"))).await?.body)
    }

    /// Streams a file to `dest` (through `dest.part`, renamed when complete and of the size
    /// Girder reports). A connection lost mid-way resumes with `offset=` from the bytes written.
    #[tracing::instrument(skip_all, fields(file_id = %id))]
    pub async fn download_to_path(&self, id: &str, dest: &Path) -> Result<u64, GirderError> {
        let doc = self.get(id).await?;
        let mut part = dest.as_os_str().to_owned();
        part.push(".part");
        let part = std::path::PathBuf::from(part);
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| GirderError::Io { action, path, source }
        };
        let mut out = tokio::fs::File::create(&part).await.map_err(io("cannot create", &part))?;
        let mut written = 0u64;
        let mut failures = 0u32;
        let started = Instant::now();
        let download = ApiPath::id("file", id)?.then("download");
        let path = download.to_string();
        loop {
            let call = Call::get(download.clone()).query("offset", written);
            let resp = self.client.open_stream(&call).await?;
            let url = resp.url().clone();
            let mut stream = resp.bytes_stream();
            let mut failed = None;
            while let Some(piece) = stream.next().await {
                match piece {
                    Ok(bytes) => {
                        out.write_all(&bytes).await.map_err(io("cannot write", &part))?;
                        written += bytes.len() as u64;
                    }
                    Err(e) => {
                        let e = e.with_url(url.clone());
                        failed = Some(GirderError::transport("GET", &path, e, self.client.timeout(&call)));
                        break;
                    }
                }
            }
            let Some(err) = failed else { break };
            let Some(wait) = self.client.config().retry.backoff(
                failures,
                started.elapsed(),
                None,
                &mut rand::thread_rng(),
            ) else {
                return Err(err);
            };
            failures += 1;
            tracing::warn!(written, error.message = %err, "download interrupted; resuming");
            tokio::time::sleep(wait).await;
        }
        out.flush().await.map_err(io("cannot write", &part))?;
        drop(out);
        if written != doc.size {
            return Err(GirderError::decode(
                "GET",
                &path,
                format!("received {written} bytes, Girder says the file has {}", doc.size),
            ));
        }
        tokio::fs::rename(&part, dest).await.map_err(io("cannot rename into place", dest))?;
        Ok(written)
    }
}

fn is_file(doc: &Value) -> bool {
    doc.get("_modelType").and_then(Value::as_str) == Some("file")
}

fn received(doc: &Value) -> Option<usize> {
    doc.get("received").and_then(Value::as_u64).and_then(|r| usize::try_from(r).ok())
}
