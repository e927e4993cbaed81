//! Girder's paging parameters: `limit` (default 50, 0 = all), `offset`, `sort`, `sortdir`.

use std::cmp::Ordering;

use serde_json::Value;

use crate::mock_girder::http::{ApiError, Ctx};

pub(crate) struct Paging {
    pub limit: usize,
    pub offset: usize,
    pub sort: String,
    pub descending: bool,
}

impl Paging {
    pub fn from(ctx: &Ctx, default_sort: &str, default_descending: bool) -> Result<Paging, ApiError> {
        let limit = ctx.int("limit")?.unwrap_or(50);
        let offset = ctx.int("offset")?.unwrap_or(0);
        let sortdir = ctx.int("sortdir")?;
        Ok(Paging {
            limit: usize::try_from(limit).unwrap_or(50),
            offset: usize::try_from(offset).unwrap_or(0),
            sort: ctx.param("sort").unwrap_or(default_sort).to_string(),
            descending: sortdir.map(|d| d < 0).unwrap_or(default_descending),
        })
    }

    /// Sorts by the sort key of each document (a dotted path), then applies offset and limit.
    pub fn apply(&self, mut docs: Vec<Value>) -> Vec<Value> {
        docs.sort_by(|a, b| {
            // ties go by _id, i.e. creation order, as Mongo's natural order would
            let o = compare(lookup(a, &self.sort), lookup(b, &self.sort))
                .then_with(|| compare(lookup(a, "_id"), lookup(b, "_id")));
            if self.descending {
                o.reverse()
            } else {
                o
            }
        });
        self.window(docs)
    }

    /// Offset and limit only.
    pub fn window<T>(&self, docs: Vec<T>) -> Vec<T> {
        let it = docs.into_iter().skip(self.offset);
        if self.limit == 0 {
            it.collect()
        } else {
            it.take(self.limit).collect()
        }
    }
}

fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    // Girder's `lowerName` sort key is the lower-cased name; `name` stands in for it here
    let path = if path == "lowerName" { "name" } else { path };
    path.split('.').try_fold(doc, |v, k| v.get(k))
}

/// Mongo-like ordering of scalars: missing < numbers < strings < others.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Number(_)) => 1,
            Some(Value::String(_)) => 2,
            Some(_) => 3,
        }
    }
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => {
            x.to_lowercase().cmp(&y.to_lowercase()).then(x.cmp(y))
        }
        _ => rank(a).cmp(&rank(b)),
    }
}
