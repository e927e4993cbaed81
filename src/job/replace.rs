//! The model replace protocol: storing a new model under a name in the user's models folder so
//! that the user never loses a complete model of that name, and saying exactly what Girder holds
//! when a step fails. The state machine and its rules are written down in [`super::upload`].

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;

use crate::girder::{GirderClient, GirderError, Item};

/// Marks the temporary items of uploads (`<name>.uploading-<job>-<nonce>`); never offered as
/// models.
pub(crate) const UPLOADING: &str = ".uploading-";

/// An empty leftover of another upload is removed only once it is this old: a younger one may be
/// a concurrent job's upload in progress (a 1.2 GB Cellpose-SAM file at the slowest rate the
/// client allows takes 20 minutes).
const STALE_AFTER: Duration = Duration::from_secs(6 * 3600);

const MODEL_MIME: &str = "application/octet-stream";

/// The step of the protocol that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Finding or reading `Private/<root>/models`.
    Folder,
    /// `POST /item` of the temporary item.
    Create,
    /// `POST /file` and `POST /file/chunk` into it.
    Upload,
    /// `DELETE /item/{id}` of the previous model.
    RemoveOld,
    /// `PUT /item/{id}?name=` of the temporary item to the model's name.
    Rename,
}

impl Step {
    fn doing(self) -> &'static str {
        match self {
            Step::Folder => "reading your models folder",
            Step::Create => "creating the new model's item",
            Step::Upload => "uploading the new model's file",
            Step::RemoveOld => "removing the previous model",
            Step::Rename => "renaming the new model",
        }
    }
}

/// What is stored under the model's own name after a failed replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtName {
    /// The replace failed before it changed anything, and the folder could not be read.
    Untouched,
    /// The previous model, as it was.
    Unchanged,
    /// A model this job did not see before it started (another job stored one meanwhile).
    Other,
    /// Nothing.
    Nothing,
}

/// What Girder holds for the model's name after a failed replace: what the folder showed when
/// it was read back after the failure (`checked`), else what the worker's own steps imply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// The model's name.
    pub name: String,
    pub at_name: AtName,
    /// The new model, complete, under this temporary name (it could not take the name).
    pub new_under: Option<String>,
    /// Complete models of earlier uploads left under temporary names (their rename failed); the
    /// protocol never deletes them.
    pub earlier: Vec<String>,
    pub checked: bool,
    /// There was a model of that name when the job started.
    pub had_old: bool,
}

impl Left {
    pub(crate) fn untouched(name: &str) -> Left {
        Left {
            name: name.into(),
            at_name: AtName::Untouched,
            new_under: None,
            earlier: Vec::new(),
            checked: false,
            had_old: false,
        }
    }

    /// The facts, as sentences for the error message.
    pub fn describe(&self) -> String {
        let name = &self.name;
        let mut out = String::new();
        if !self.checked && self.at_name != AtName::Untouched {
            out.push_str(
                "Girder could not be asked what it holds after the failure; as far as the worker knows: ",
            );
        }
        out.push_str(&match self.at_name {
            AtName::Untouched => "Nothing in Girder was changed.".to_string(),
            AtName::Unchanged => format!("Your model `{name}` in Girder is unchanged."),
            AtName::Other => format!("A model named `{name}` that another job stored is in Girder."),
            AtName::Nothing if self.had_old => {
                format!("No model named `{name}` is in Girder now (the previous one was removed).")
            }
            AtName::Nothing => format!("No model named `{name}` is in Girder now (there was none before)."),
        });
        match &self.new_under {
            Some(temp) => out.push_str(&format!(" The new model is stored in Girder as `{temp}`.")),
            None if self.at_name != AtName::Untouched => {
                out.push_str(" The new model was not stored in Girder.")
            }
            None => {}
        }
        for e in &self.earlier {
            out.push_str(&format!(" An earlier upload's model is stored as `{e}`."));
        }
        out
    }

    /// What the user can do, for the `info` field.
    pub fn advice(&self) -> String {
        let name = &self.name;
        let earlier = || {
            match self.earlier.as_slice() {
            [] => String::new(),
            [one] => format!(" The model stored as `{one}` is an earlier job's: rename it to `{name}` in Girder to use it."),
            many => format!(
                " The models stored as {} are earlier jobs': rename one to `{name}` in Girder to use it.",
                many.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ")
            ),
        }
        };
        match (&self.at_name, &self.new_under) {
            (AtName::Untouched, _) => "Nothing in Girder was changed; run the job again once Girder answers.".into(),
            (AtName::Unchanged, None) => format!("Your previous model `{name}` is unchanged; run the job again."),
            (AtName::Unchanged, Some(t)) => format!(
                "Your previous model `{name}` is unchanged and the new one is stored beside it as `{t}`: to use \
                 the new one, delete `{name}` and rename `{t}` to `{name}` in Girder, or run the job again."
            ),
            (AtName::Other, Some(t)) => format!(
                "Another job stored a model named `{name}`; this job's model is stored as `{t}`: rename it in \
                 Girder to use it."
            ),
            (AtName::Other, None) => format!("Another job stored a model named `{name}`; run this job again to replace it."),
            (AtName::Nothing, Some(t)) => format!(
                "Rename `{t}` to `{name}` in Girder to use the new model, or run the job again.{}",
                earlier()
            ),
            (AtName::Nothing, None) => format!("Run the job again.{}", earlier()),
        }
    }
}

/// A replace that failed: the step, Girder's answer, and what Girder holds now.
#[derive(Debug, thiserror::Error)]
#[error("{source} (while {}). {}", step.doing(), left.describe())]
pub struct UploadFailure {
    pub step: Step,
    #[source]
    pub source: GirderError,
    pub left: Left,
}

/// Stores `bytes` as model `name` in the folder `folder_id` (already found), following the
/// protocol of [`super::upload`]. `tag` (the job id) goes into the temporary item's name.
pub async fn replace(
    client: &GirderClient,
    folder_id: &str,
    name: &str,
    bytes: Bytes,
    tag: &str,
) -> Result<Item, UploadFailure> {
    let items = client.items().list(folder_id).await.map_err(|source| UploadFailure {
        step: Step::Folder,
        source,
        left: Left::untouched(name),
    })?;
    let nonce: u32 = rand::thread_rng().gen_range(0..1 << 24);
    let mut run = Run {
        client,
        folder_id,
        name,
        temp_name: format!("{name}{UPLOADING}{tag}-{nonce:06x}"),
        temp_id: None,
        size: bytes.len() as u64,
        stored: false,
        olds: items.iter().filter(|i| i.name == name).map(|i| i.id.clone()).collect(),
        removed: Vec::new(),
        earlier: earlier_models(&items, name, None),
    };
    for stale in stale_leftovers(&items, name, time::OffsetDateTime::now_utc()) {
        if let Err(e) = client.items().delete(&stale.id).await {
            tracing::warn!(item = %stale.name, error = %e, "could not remove an empty leftover of an earlier upload");
        }
    }
    run.go(bytes).await
}

/// One replace in progress: what it created and removed so far.
struct Run<'a> {
    client: &'a GirderClient,
    folder_id: &'a str,
    name: &'a str,
    temp_name: String,
    /// The temporary item, once created (the only item this run ever deletes besides `olds`).
    temp_id: Option<String>,
    size: u64,
    /// The new model is complete in the temporary item.
    stored: bool,
    /// Items named `name` when the run started: the previous model (normally one).
    olds: Vec<String>,
    /// Those of `olds` deleted so far.
    removed: Vec<String>,
    /// Complete earlier uploads under temporary names, when the run started.
    earlier: Vec<String>,
}

impl Run<'_> {
    async fn go(&mut self, bytes: Bytes) -> Result<Item, UploadFailure> {
        let items = self.client.items();
        // Created: the temporary item
        match items.create(self.folder_id, &self.temp_name, None).await {
            Ok(item) => self.temp_id = Some(item.id),
            Err(e) => {
                let seen = self.observe().await;
                // the answer was lost but the item exists: carry on with it
                match seen.as_deref().and_then(|s| s.iter().find(|i| i.name == self.temp_name)) {
                    Some(item) => self.temp_id = Some(item.id.clone()),
                    None => return Err(self.fail(Step::Create, e, seen).await),
                }
            }
        }
        let temp_id = self.temp_id.clone().unwrap_or_default();
        // Stored: the whole file in it
        let upload = self.client.files().upload_to_item(&temp_id, self.name, bytes, MODEL_MIME).await;
        match upload {
            Ok(file) if file.size == self.size => self.stored = true,
            other => {
                let e = match other {
                    Ok(file) => GirderError::Invalid(format!(
                        "the server stored {} bytes of the {}-byte model",
                        file.size, self.size
                    )),
                    Err(e) => e,
                };
                let seen = self.observe().await;
                // the last chunk landed and only its answer was lost: the item holds the model
                // (a short file leaves the item short, so it never counts as complete)
                if seen.as_deref().is_some_and(|s| self.temp_complete(s).is_some()) {
                    self.stored = true;
                } else {
                    return Err(self.fail(Step::Upload, e, seen).await);
                }
            }
        }
        // OldRemoved: every item of the name (the folder must end with exactly one)
        for old in self.olds.clone() {
            if let Err(e) = items.delete(&old).await {
                let seen = self.observe().await;
                let gone = seen.as_deref().is_some_and(|s| !s.iter().any(|i| i.id == old));
                if !gone {
                    return Err(self.fail(Step::RemoveOld, e, seen).await);
                }
            }
            self.removed.push(old);
        }
        // Done: the new model takes the name
        match items.rename(&temp_id, self.name).await {
            Ok(item) => Ok(item),
            Err(e) => {
                let seen = self.observe().await;
                match seen.as_deref().and_then(|s| s.iter().find(|i| i.id == temp_id && i.name == self.name))
                {
                    Some(item) => Ok(item.clone()),
                    None => Err(self.fail(Step::Rename, e, seen).await),
                }
            }
        }
    }

    /// The folder as it is now; `None` when Girder cannot be asked.
    async fn observe(&self) -> Option<Vec<Item>> {
        match self.client.items().list(self.folder_id).await {
            Ok(items) => Some(items),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the models folder back after a failed upload step");
                None
            }
        }
    }

    /// The temporary item when `items` shows it holding the whole model.
    fn temp_complete<'i>(&self, items: &'i [Item]) -> Option<&'i Item> {
        let id = self.temp_id.as_deref()?;
        items.iter().find(|i| i.id == id && i.size == self.size)
    }

    /// Rolls back what may be rolled back, then says what is left. Before the previous model is
    /// touched the temporary item goes when it is incomplete, or when the folder shows the
    /// previous model still standing (the folder ends as it began); once a previous model has
    /// been removed the new one is never deleted.
    async fn fail(&mut self, step: Step, source: GirderError, seen: Option<Vec<Item>>) -> UploadFailure {
        let temp = seen
            .as_deref()
            .and_then(|s| self.temp_id.as_deref().and_then(|id| s.iter().find(|i| i.id == id)));
        let old_stands = seen.as_deref().is_some_and(|s| s.iter().any(|i| self.olds.contains(&i.id)));
        let complete = seen.as_deref().and_then(|s| self.temp_complete(s)).is_some();
        let remove_temp = self.removed.is_empty()
            && match (&seen, temp) {
                (Some(_), Some(_)) => !complete || old_stands,
                (Some(_), None) => false, // nothing to remove
                (None, _) => self.temp_id.is_some() && !self.stored,
            };
        let mut temp_gone = seen.is_some() && temp.is_none();
        if remove_temp {
            if let Some(id) = self.temp_id.clone() {
                match self.client.items().delete(&id).await {
                    Ok(()) => temp_gone = true,
                    Err(e) => {
                        tracing::warn!(item = %self.temp_name, error = %e, "could not remove the new model's temporary item")
                    }
                }
            }
        }
        let left = match seen {
            Some(items) => {
                let at = items.iter().find(|i| i.name == self.name);
                Left {
                    name: self.name.to_string(),
                    at_name: match at {
                        Some(i) if self.olds.contains(&i.id) => AtName::Unchanged,
                        Some(_) => AtName::Other,
                        None => AtName::Nothing,
                    },
                    new_under: if temp_gone {
                        None
                    } else {
                        self.temp_complete(&items).map(|i| i.name.clone())
                    },
                    earlier: earlier_models(&items, self.name, self.temp_id.as_deref()),
                    checked: true,
                    had_old: !self.olds.is_empty(),
                }
            }
            None => Left {
                name: self.name.to_string(),
                at_name: if self.removed.len() < self.olds.len() {
                    AtName::Unchanged
                } else {
                    AtName::Nothing
                },
                new_under: (self.stored && !temp_gone).then(|| self.temp_name.clone()),
                earlier: self.earlier.clone(),
                checked: false,
                had_old: !self.olds.is_empty(),
            },
        };
        UploadFailure { step, source, left }
    }
}

/// Names of complete models under temporary names of `name` other than `ours`: earlier uploads
/// whose rename failed. Never deleted by this protocol.
fn earlier_models(items: &[Item], name: &str, ours: Option<&str>) -> Vec<String> {
    let prefix = format!("{name}{UPLOADING}");
    let mut out: Vec<String> = items
        .iter()
        .filter(|i| i.name.starts_with(&prefix) && i.size > 0 && Some(i.id.as_str()) != ours)
        .map(|i| i.name.clone())
        .collect();
    out.sort();
    out
}

/// Temporary items of `name` that hold nothing (an upload that never finished) and are older
/// than [`STALE_AFTER`]: the only leftovers of other jobs the protocol removes.
fn stale_leftovers<'i>(items: &'i [Item], name: &str, now: time::OffsetDateTime) -> Vec<&'i Item> {
    let prefix = format!("{name}{UPLOADING}");
    let old_enough = |i: &Item| {
        i.created
            .as_deref()
            .and_then(|c| time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok())
            .is_some_and(|created| now - created > STALE_AFTER)
    };
    items.iter().filter(|i| i.name.starts_with(&prefix) && i.size == 0 && old_enough(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, name: &str, size: u64, created: &str) -> Item {
        serde_json::from_value(serde_json::json!({
            "_id": id, "name": name, "folderId": "f", "size": size, "created": created
        }))
        .unwrap()
    }

    #[test]
    fn only_old_empty_leftovers_of_the_name_are_stale_and_complete_ones_are_earlier_models() {
        let now = time::macros::datetime!(2026-01-02 12:00 UTC);
        let items = [
            item("1", "m", 10, "2026-01-01T00:00:00+00:00"),
            item("2", "m.uploading-a-000001", 0, "2026-01-01T00:00:00.123000+00:00"),
            item("3", "m.uploading-b-000002", 0, "2026-01-02T11:00:00+00:00"),
            item("4", "m.uploading-c-000003", 10, "2025-01-01T00:00:00+00:00"),
            item("5", "m2.uploading-d-000004", 0, "2025-01-01T00:00:00+00:00"),
            item("6", "m.uploading-e-000005", 0, "not a date"),
        ];
        let stale: Vec<&str> = stale_leftovers(&items, "m", now).iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            stale,
            ["2"],
            "empty, older than 6 h, of this name; a young or undated one may be in progress"
        );
        assert_eq!(earlier_models(&items, "m", None), ["m.uploading-c-000003"]);
        assert!(earlier_models(&items, "m", Some("4")).is_empty(), "our own is not an earlier one");
    }

    fn left(at_name: AtName, new_under: Option<&str>, earlier: &[&str], had_old: bool) -> Left {
        Left {
            name: "cells".into(),
            at_name,
            new_under: new_under.map(str::to_string),
            earlier: earlier.iter().map(|s| s.to_string()).collect(),
            checked: true,
            had_old,
        }
    }

    #[test]
    fn the_message_and_the_advice_say_what_is_stored_where() {
        let l = left(AtName::Unchanged, None, &[], true);
        assert_eq!(
            l.describe(),
            "Your model `cells` in Girder is unchanged. The new model was not stored in Girder."
        );
        assert!(l.advice().starts_with("Your previous model `cells` is unchanged"));

        let l = left(AtName::Nothing, Some("cells.uploading-j-1"), &[], true);
        assert_eq!(
            l.describe(),
            "No model named `cells` is in Girder now (the previous one was removed). The new model is stored in Girder as `cells.uploading-j-1`."
        );
        assert!(l.advice().contains("Rename `cells.uploading-j-1` to `cells`"), "{}", l.advice());

        // issue 26: the second job fails after the first left its model under a temporary name
        let l = left(AtName::Nothing, None, &["cells.uploading-b-2"], true);
        let (text, advice) = (l.describe(), l.advice());
        assert!(text.contains("No model named `cells` is in Girder now"), "{text}");
        assert!(text.contains("An earlier upload's model is stored as `cells.uploading-b-2`."), "{text}");
        assert!(advice.contains("rename it to `cells`") && !advice.contains("unchanged"), "{advice}");

        let mut l = left(AtName::Unchanged, Some("cells.uploading-j-1"), &[], true);
        l.checked = false;
        assert!(l.describe().starts_with("Girder could not be asked"), "{}", l.describe());
        assert_eq!(Left::untouched("cells").describe(), "Nothing in Girder was changed.");
    }
}
