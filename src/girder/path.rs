//! What goes into a request path: Girder ObjectIds, checked before they reach a URL, and the
//! path itself as escaped segments.
//!
//! Every id this client puts into a request path (`item/{id}`, `folder/{id}`, `job/{id}`, ...)
//! is first parsed into an [`ObjectId`]: exactly 24 hexadecimal digits, what MongoDB and Girder
//! issue. A string like `../user/me` or `ID?x=1` would otherwise change which endpoint the
//! request reaches (`GET folder/../user/me` is `GET user/me`, with the user's token) or add a
//! query; it is refused with [`InvalidId`] before anything is sent. Ids read from user input (the
//! one-shot `--datasetId`, a job's `kwargs.datasetId`) are parsed at the edge, where the error can
//! name the flag or field.

use std::fmt;

/// A Girder document id: 24 hexadecimal digits (a MongoDB ObjectId), lower-cased as Girder
/// prints them. Safe to put into a URL path as is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(String);

/// A string that is not an [`ObjectId`]. `what` names the thing (`dataset`, `item`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} id `{}` is not a Girder id (24 hexadecimal digits, such as 5f3c9a1b2d4e6f7a8b9c0d1e)", shown(.id))]
pub struct InvalidId {
    pub what: &'static str,
    pub id: String,
}

/// At most 60 characters of the refused text, with control characters escaped: it is quoted in
/// error messages and log lines.
fn shown(id: &str) -> String {
    let mut out: String = id.chars().take(60).flat_map(char::escape_debug).collect();
    if id.chars().count() > 60 {
        out.push_str("...");
    }
    out
}

impl ObjectId {
    /// `text` as an ObjectId of a `what` (named in the error).
    pub fn parse(what: &'static str, text: &str) -> Result<ObjectId, InvalidId> {
        if text.len() == 24 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(ObjectId(text.to_ascii_lowercase()))
        } else {
            Err(InvalidId { what, id: text.to_string() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ObjectId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ObjectId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.0)
    }
}

impl PartialEq<str> for ObjectId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ObjectId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A request path below `api_url`, kept as segments: the URL is built by appending each one
/// escaped (a `/`, `?`, `%` or `..` in a segment stays inside that segment), and a segment that
/// holds an id is an [`ObjectId`] (see [`ApiPath::id`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiPath(pub(crate) Vec<String>);

impl ApiPath {
    /// `resource/{id}`, the id checked first: a string that is not 24 hex digits never becomes
    /// part of a request (`../user/me` would reach another endpoint with the caller's token).
    pub fn id(resource: &'static str, id: &str) -> Result<ApiPath, InvalidId> {
        let id = ObjectId::parse(resource, id)?;
        Ok(ApiPath(vec![resource.to_string(), id.to_string()]))
    }

    /// One more segment (a fixed name such as `files`, or a value, escaped when the URL is built).
    pub fn then(mut self, segment: impl Into<String>) -> ApiPath {
        self.0.push(segment.into());
        self
    }
}

impl From<&str> for ApiPath {
    /// A fixed path of the API such as `file/chunk` (no ids, nothing from input).
    fn from(path: &str) -> ApiPath {
        ApiPath(path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect())
    }
}

impl std::fmt::Display for ApiPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_24_hex_digits_are_ids() {
        let id = ObjectId::parse("item", "5F3C9A1B2D4E6F7A8B9C0D1E").unwrap();
        assert_eq!(id.as_str(), "5f3c9a1b2d4e6f7a8b9c0d1e", "lower-cased as Girder prints them");
        for bad in [
            "",
            "../user/me",
            "5f3c9a1b2d4e6f7a8b9c0d1e?x=1",
            "5f3c9a1b2d4e6f7a8b9c0d1",
            "5f3c9a1b2d4e6f7a8b9c0d1e0",
            "5f3c9a1b2d4e6f7a8b9c0d1g",
            "5f3c9a1b2d4e6f7a8b9c0d/e",
            "5f3c9a1b2d4e6f7a8b9c0%2e",
        ] {
            let err = ObjectId::parse("dataset", bad).unwrap_err();
            assert_eq!(err.id, bad);
            assert!(err.to_string().starts_with("dataset id `"), "{err}");
        }
    }

    #[test]
    fn a_refused_id_is_quoted_short_and_on_one_line() {
        let err = ObjectId::parse("folder", &format!("a\nb{}", "x".repeat(100))).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains('\n') && text.contains("a\\nb") && text.contains("..."), "{text}");
        assert!(text.len() < 200, "{text}");
    }
}
