//! NimbusImage worker interfaces: `POST /worker_interface?image=` stores the parameter
//! interface a worker image offers; `GET` reads it back (`null` for an unknown image).

use serde_json::Value;

use super::client::{Call, GirderClient};
use super::error::GirderError;

/// `client.worker_interfaces()`.
pub struct WorkerInterfaces<'a> {
    client: &'a GirderClient,
}

impl GirderClient {
    pub fn worker_interfaces(&self) -> WorkerInterfaces<'_> {
        WorkerInterfaces { client: self }
    }
}

impl WorkerInterfaces<'_> {
    /// Stores `interface` for the docker image `image`; returns `{_id, image, interface, access}`.
    pub async fn post(&self, image: &str, interface: &Value) -> Result<Value, GirderError> {
        // Replacing an image's interface is safe to repeat.
        let call = Call::post("worker_interface").query("image", image).json(interface.clone()).idempotent();
        self.client.json(call).await
    }

    /// The stored interface of `image`, or `None` when Girder has none.
    pub async fn get(&self, image: &str) -> Result<Option<Value>, GirderError> {
        let v: Value = self.client.json(Call::get("worker_interface").query("image", image)).await?;
        Ok(if v.is_null() { None } else { Some(v) })
    }
}
