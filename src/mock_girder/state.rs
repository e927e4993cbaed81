//! The mock's in-memory database and the access rules that guard it.
//!
//! Access is a simplification of Girder's ACLs that gives the same answers for the cases the
//! record shows: a site admin may do anything; a user owns everything under their own user
//! folders (ADMIN); a `public` folder is readable by anyone; nobody else gets in. A refusal is
//! 401 for an anonymous request and 403 for a logged-in one, with Girder's message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::http::ApiError;
use super::large_image::LargeImage;
use super::ordered_json::Ordered;

/// Girder's `AccessType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Read = 0,
    Write = 1,
    Admin = 2,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Read => "Read",
            Level::Write => "Write",
            Level::Admin => "Admin",
        }
    }
}

pub(crate) struct UserRec {
    pub id: String,
    pub login: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub password: String,
    pub admin: bool,
    pub created: String,
}

pub(crate) struct TokenRec {
    /// `None` for a job token, which only carries a `jobs.job_<id>` scope.
    pub user_id: Option<String>,
    pub scopes: Vec<String>,
    pub expires: OffsetDateTime,
}

pub(crate) struct ApiKeyRec {
    pub id: String,
    pub key: String,
    pub name: String,
    pub user_id: String,
    pub active: bool,
    pub token_duration: Option<f64>,
    pub created: String,
    pub last_use: Option<String>,
}

pub(crate) struct FolderRec {
    pub id: String,
    pub name: String,
    pub description: String,
    pub parent_id: String,
    /// `user` or `folder`.
    pub parent_collection: String,
    /// The user whose tree this is.
    pub base_parent_id: String,
    pub creator_id: String,
    pub meta: Map<String, Value>,
    pub public: bool,
    pub created: String,
    pub updated: String,
    pub size: u64,
}

pub(crate) struct ItemRec {
    pub id: String,
    pub name: String,
    pub description: String,
    pub folder_id: String,
    pub base_parent_id: String,
    pub creator_id: String,
    pub meta: Map<String, Value>,
    pub large_image: Option<Value>,
    pub created: String,
    pub updated: String,
    pub size: u64,
}

pub(crate) struct FileRec {
    pub id: String,
    pub name: String,
    pub item_id: String,
    pub mime_type: String,
    pub creator_id: String,
    pub created: String,
    pub data: Bytes,
}

pub(crate) struct UploadRec {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub mime_type: String,
    pub parent_type: String,
    pub parent_id: String,
    pub user_id: String,
    pub data: Vec<u8>,
    pub created: String,
    pub updated: String,
}

pub(crate) struct JobRec {
    pub id: String,
    pub title: String,
    pub job_type: String,
    pub handler: Option<String>,
    pub status: i64,
    pub user_id: Option<String>,
    pub args: Value,
    pub kwargs: Value,
    pub public: bool,
    pub progress: Option<Map<String, Value>>,
    pub log: Vec<String>,
    pub meta: Map<String, Value>,
    pub timestamps: Vec<Value>,
    pub created: String,
    pub updated: String,
    pub parent_id: Option<String>,
    pub job_token: String,
}

pub(crate) struct AnnotationRec {
    pub dataset_id: String,
    /// Fields in the order the client sent them, without `_id`: the list endpoint streams
    /// documents in stored key order with `_id` last.
    pub fields: Vec<(String, Ordered)>,
}

pub(crate) struct WorkerInterfaceRec {
    pub id: String,
    pub interface: Value,
}

/// Settings a test can change; `PUT /system/setting` changes the minimum chunk size too.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// `core.upload_minimum_chunk_size`: non-final chunks below this are refused (5 MiB).
    pub upload_minimum_chunk_size: u64,
    /// Address to listen on; port 0 picks a free one.
    pub addr: std::net::SocketAddr,
    /// Whether a Celery worker serves Girder's `local` queue. Girder 5 deletes folders in a
    /// `local` task: without one (the default, as on a plain Girder) `DELETE /folder/{id}`
    /// answers 503 and deletes nothing; items still delete synchronously.
    pub local_worker: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            upload_minimum_chunk_size: 5 * 1024 * 1024,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            local_worker: false,
        }
    }
}

pub(crate) struct State {
    pub min_chunk: u64,
    /// [`MockConfig::local_worker`].
    pub local_worker: bool,
    id_prefix: String,
    next_id: u32,
    pub users: BTreeMap<String, UserRec>,
    pub tokens: HashMap<String, TokenRec>,
    pub api_keys: BTreeMap<String, ApiKeyRec>,
    pub folders: BTreeMap<String, FolderRec>,
    pub items: BTreeMap<String, ItemRec>,
    pub files: BTreeMap<String, FileRec>,
    pub uploads: BTreeMap<String, UploadRec>,
    pub jobs: BTreeMap<String, JobRec>,
    /// By id: ids grow monotonically, so map order is `_id` order.
    pub annotations: BTreeMap<String, AnnotationRec>,
    /// By docker image name.
    pub worker_interfaces: BTreeMap<String, WorkerInterfaceRec>,
    /// Decoded images by item id (what large_image would open from the file).
    pub large_images: HashMap<String, Arc<LargeImage>>,
}

/// Girder's timestamp format: ISO-8601 with microseconds and `+00:00`.
pub(crate) fn iso(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
    );
    t.format(&f).unwrap_or_default()
}

pub(crate) fn now() -> String {
    iso(OffsetDateTime::now_utc())
}

pub(crate) fn random_token(len: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// Mongo ObjectId syntax: 24 hex digits.
pub(crate) fn is_object_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl State {
    pub fn new(config: &MockConfig) -> State {
        // ObjectId-like ids: 4 bytes of start time, 5 random bytes, a 3-byte counter, so they sort
        // in creation order like Mongo's (afterId paging relies on it).
        let secs = OffsetDateTime::now_utc().unix_timestamp() as u32;
        let salt: u64 = rand::thread_rng().gen::<u64>() & 0xff_ffff_ffff;
        State {
            min_chunk: config.upload_minimum_chunk_size,
            local_worker: config.local_worker,
            id_prefix: format!("{secs:08x}{salt:010x}"),
            next_id: 1,
            users: BTreeMap::new(),
            tokens: HashMap::new(),
            api_keys: BTreeMap::new(),
            folders: BTreeMap::new(),
            items: BTreeMap::new(),
            files: BTreeMap::new(),
            uploads: BTreeMap::new(),
            jobs: BTreeMap::new(),
            annotations: BTreeMap::new(),
            worker_interfaces: BTreeMap::new(),
            large_images: HashMap::new(),
        }
    }

    pub fn new_id(&mut self) -> String {
        let id = format!("{}{:06x}", self.id_prefix, self.next_id & 0xff_ffff);
        self.next_id += 1;
        id
    }

    /// Issues a token for a user (or a job-scoped one) valid for `days`.
    pub fn issue_token(
        &mut self,
        user_id: Option<String>,
        scopes: Vec<String>,
        days: f64,
    ) -> (String, String) {
        let token = random_token(64);
        let seconds = (days * 86400.0).clamp(0.0, 1e10);
        let expires = OffsetDateTime::now_utc() + time::Duration::seconds_f64(seconds);
        self.tokens.insert(token.clone(), TokenRec { user_id, scopes, expires });
        (token, iso(expires))
    }

    /// The token record of a request, if the token exists and has not expired.
    pub fn token(&self, token: Option<&str>) -> Option<&TokenRec> {
        let rec = self.tokens.get(token?)?;
        (rec.expires > OffsetDateTime::now_utc()).then_some(rec)
    }

    /// The user a request acts as; an unknown or expired token is anonymous, as in Girder.
    pub fn user(&self, token: Option<&str>) -> Option<&UserRec> {
        let rec = self.token(token)?;
        self.users.get(rec.user_id.as_deref()?)
    }

    /// For endpoints that need a logged-in user (`@access.user`).
    pub fn require_user(&self, token: Option<&str>) -> Result<&UserRec, ApiError> {
        self.user(token).ok_or_else(ApiError::login_required)
    }

    pub fn folder_level(&self, folder: &FolderRec, user: Option<&UserRec>) -> Option<Level> {
        match user {
            Some(u) if u.admin || u.id == folder.base_parent_id => Some(Level::Admin),
            _ if folder.public => Some(Level::Read),
            _ => None,
        }
    }

    /// The folder, if `user` has `level` on it; Girder's 400/401/403 otherwise.
    pub fn folder(&self, id: &str, user: Option<&UserRec>, level: Level) -> Result<&FolderRec, ApiError> {
        check_id(id)?;
        let folder =
            self.folders.get(id).ok_or_else(|| ApiError::rest(format!("Invalid folder id ({id}).")))?;
        if self.folder_level(folder, user).is_some_and(|l| l >= level) {
            return Ok(folder);
        }
        Err(denied(level, "folder", id, user))
    }

    /// The item, if `user` has `level` on its folder.
    pub fn item(&self, id: &str, user: Option<&UserRec>, level: Level) -> Result<&ItemRec, ApiError> {
        check_id(id)?;
        let item = self.items.get(id).ok_or_else(|| ApiError::rest(format!("Invalid item id ({id}).")))?;
        self.folder(&item.folder_id, user, level)?;
        Ok(item)
    }

    /// The file, if `user` has `level` on its item's folder.
    pub fn file(&self, id: &str, user: Option<&UserRec>, level: Level) -> Result<&FileRec, ApiError> {
        check_id(id)?;
        let file = self.files.get(id).ok_or_else(|| ApiError::rest(format!("Invalid file id ({id}).")))?;
        self.item(&file.item_id, user, level)?;
        Ok(file)
    }

    /// Adds `delta` bytes to an item, its folder and the owning user, as Girder's
    /// `propagateSizeChange` does.
    pub fn propagate_size(&mut self, item_id: &str, delta: i64) {
        let add = |size: &mut u64| *size = size.saturating_add_signed(delta);
        if let Some(item) = self.items.get_mut(item_id) {
            add(&mut item.size);
            let folder_id = item.folder_id.clone();
            if let Some(folder) = self.folders.get_mut(&folder_id) {
                add(&mut folder.size);
            }
        }
    }

    /// A unique item name in the folder: Girder appends ` (1)`, ` (2)`, ... on a clash.
    pub fn unique_item_name(&self, folder_id: &str, name: &str) -> String {
        let taken = |n: &str| {
            self.items.values().any(|i| i.folder_id == folder_id && i.name == n)
                || self.folders.values().any(|f| f.parent_id == folder_id && f.name == n)
        };
        let mut candidate = name.to_string();
        let mut n = 0;
        while taken(&candidate) {
            n += 1;
            candidate = format!("{name} ({n})");
        }
        candidate
    }

    /// Removes an item with its files and cached image, adjusting sizes.
    pub fn remove_item(&mut self, item_id: &str) -> Option<ItemRec> {
        let size = self.items.get(item_id)?.size;
        self.propagate_size(item_id, -(size as i64));
        self.files.retain(|_, f| f.item_id != item_id);
        self.large_images.remove(item_id);
        self.items.remove(item_id)
    }

    /// Removes a folder, everything below it and the annotations of datasets in it.
    pub fn remove_folder(&mut self, folder_id: &str) {
        let children: Vec<String> =
            self.folders.values().filter(|f| f.parent_id == folder_id).map(|f| f.id.clone()).collect();
        for child in children {
            self.remove_folder(&child);
        }
        let items: Vec<String> =
            self.items.values().filter(|i| i.folder_id == folder_id).map(|i| i.id.clone()).collect();
        for item in items {
            self.remove_item(&item);
        }
        // upenncontrast_annotation cleans orphaned annotations when their dataset folder goes
        self.annotations.retain(|_, a| a.dataset_id != folder_id);
        self.folders.remove(folder_id);
    }
}

/// Girder's answer to a malformed id.
pub(crate) fn check_id(id: &str) -> Result<(), ApiError> {
    if is_object_id(id) {
        Ok(())
    } else {
        Err(ApiError::validation(format!("Invalid ObjectId: {id}")).field("id"))
    }
}

/// `"Read access denied for folder <id> (user <uid>)."`, 401 when anonymous, 403 otherwise.
pub(crate) fn denied(level: Level, model: &str, id: &str, user: Option<&UserRec>) -> ApiError {
    let who = user.map(|u| u.id.as_str()).unwrap_or("None");
    ApiError::access(user.is_some(), format!("{} access denied for {model} {id} (user {who}).", level.word()))
}
