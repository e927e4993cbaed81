//! TensorBoard event files (scalars only), written without TensorFlow.
//!
//! Why hand-written: no maintained Rust crate writes TensorBoard events without pulling in an old
//! protobuf stack, and scalars need five protobuf fields. The file is a TFRecord stream: each record
//! is `u64 length`, `u32 masked_crc32c(length)`, the bytes, `u32 masked_crc32c(bytes)`; each record
//! holds an `Event { wall_time=1 (double), step=2 (int64), file_version=3 | summary=5 }` where
//! `Summary { value=1: Value { tag=1 (string), simple_value=2 (float) } }`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Appends scalar summaries to one `events.out.tfevents.*` file.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn field_bytes(field: u32, data: &[u8], buf: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, buf);
    varint(data.len() as u64, buf);
    buf.extend_from_slice(data);
}

fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(0x09); // field 1, fixed64
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10); // field 2, varint
    varint(step as u64, &mut e);
    body(&mut e);
    e
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<secs>.<host>` and writes the version record.
    pub fn create(dir: &Path) -> std::io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!("events.out.tfevents.{}.{host}.{}", now.as_secs(), std::process::id()));
        let mut w = EventWriter { out: BufWriter::new(File::create(&path)?), path };
        let rec = event(now.as_secs_f64(), 0, |e| field_bytes(3, b"brain.Event:2", e));
        w.record(&rec)?;
        w.out.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())
    }

    /// Writes scalars `(tag, value)` at `step`, flushed so TensorBoard sees them live.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            field_bytes(1, tag.as_bytes(), &mut value);
            value.push(0x15); // field 2, fixed32
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            field_bytes(1, &value, &mut summary);
        }
        let rec = event(wall, step, |e| field_bytes(5, &summary, e));
        self.record(&rec)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow_reference() {
        // TensorFlow's masked crc32c of b"" is 0xa282ead8 + rotr15(0) = 0xa282ead8
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        // crc32c("123456789") = 0xe3069283 (the standard check value)
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn varint_encodes_like_protobuf() {
        let mut b = Vec::new();
        varint(300, &mut b);
        assert_eq!(b, vec![0xac, 0x02]);
    }
}
