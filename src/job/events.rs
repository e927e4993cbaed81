//! What a running job tells the outside world, and the JSON lines NimbusImage's worker client
//! prints (`annotation_client.utils.sendProgress/sendWarning/sendError`), byte for byte: Python's
//! `json.dumps` layout (`", "` and `": "` separators, non-ASCII escaped). Every string in a line
//! is redacted ([`crate::redact`]): these lines go to stdout and into the Girder job log.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::train::EpochInfo;

/// An event from a job. Training runs on its own thread; events reach the async side (stdout in
/// one-shot mode, the Girder job in `serve`) through a channel.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// Fraction done (0..=1), a short title and a detail line.
    Progress { fraction: f64, title: String, info: String },
    /// Something the user should know that does not stop the job.
    Warning { message: String, info: String },
    /// An epoch finished (metrics history, heartbeats).
    Epoch(EpochInfo),
}

/// A resumable checkpoint (see [`crate::train::checkpoint`]) after `epoch` epochs and `step`
/// steps of the next one, on its own bounded channel ([`Events::with_checkpoints`]).
///
/// Epochs are counted as *epochs completed* everywhere a worker names one (this value,
/// checkpoint item names, "Checkpoint saved after epoch N", the release line's
/// `checkpoint_epoch=N`, "Resuming ... after epoch N"): the number the user saw last in "Epoch
/// N/M" and metrics.jsonl's `epoch`. It is the trainer's `TrainState::epoch` (the 0-based index
/// of the next epoch) as is, so no `+ 1` appears anywhere and no two texts can disagree.
#[derive(Clone)]
pub struct Checkpoint {
    pub epoch: usize,
    pub step: usize,
    /// Shared, never copied on the way to Girder: a Cellpose-SAM checkpoint is 3.65 GB.
    pub bytes: Bytes,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checkpoint {{ epoch: {}, step: {}, {} bytes }}", self.epoch, self.step, self.bytes.len())
    }
}

/// Checkpoints that may wait on their channel while another is being stored: with one, a job
/// holds at most two in memory, and training waits for room before it encodes a third.
pub(crate) const CHECKPOINTS_WAITING: usize = 1;

pub type EventSender = tokio::sync::mpsc::UnboundedSender<JobEvent>;
pub type CheckpointSender = tokio::sync::mpsc::Sender<Checkpoint>;

/// Sends events; a closed receiver is ignored (the job must not fail because nobody listens).
#[derive(Clone)]
pub struct Events {
    tx: Option<EventSender>,
    /// Where checkpoints go (`None`: nobody keeps them, so none is encoded).
    checkpoints: Option<CheckpointSender>,
    /// The highest fraction sent so far, as `f64` bits (for values in 0..=1 the bit patterns
    /// order like the numbers). Shared by every clone (the training thread's hooks and the
    /// async stages), so progress never goes down whichever side reports.
    max_fraction: Arc<AtomicU64>,
}

impl Events {
    /// Events to `tx`; no checkpoints (a one-shot container has nowhere to keep them).
    pub fn new(tx: EventSender) -> Self {
        Events { tx: Some(tx), checkpoints: None, max_fraction: Arc::default() }
    }
    /// Events that go nowhere (tests, library use without a listener).
    pub fn none() -> Self {
        Events { tx: None, checkpoints: None, max_fraction: Arc::default() }
    }
    /// These events, with checkpoints sent to `tx`, a bounded channel (see
    /// [`CHECKPOINTS_WAITING`]) whose receiver stores them.
    pub fn with_checkpoints(mut self, tx: CheckpointSender) -> Self {
        self.checkpoints = Some(tx);
        self
    }
    /// Sends the checkpoint after `epoch` epochs and `step` steps, encoded by `encode` only
    /// once there is room on the channel (blocking: call it from the training thread). Nothing
    /// is encoded when nobody keeps checkpoints or the receiver is gone; a failed encoding is
    /// logged, not fatal: the job goes on without it.
    pub fn checkpoint(&self, epoch: usize, step: usize, encode: impl FnOnce() -> std::io::Result<Vec<u8>>) {
        let Some(tx) = &self.checkpoints else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(epoch, step, "no async runtime to store a checkpoint; none written");
            return;
        };
        // waits while the previous checkpoint is still queued behind the one being stored
        let Ok(room) = runtime.block_on(tx.reserve()) else { return };
        match encode() {
            Ok(bytes) => room.send(Checkpoint { epoch, step, bytes: Bytes::from(bytes) }),
            Err(err) => tracing::warn!(error = %err, epoch, step, "could not encode a checkpoint"),
        }
    }
    pub fn send(&self, e: JobEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e);
        }
    }
    /// The one place progress is emitted: `fraction` is clamped to 0..=1 and to the highest
    /// fraction already reported, so the sequence a user sees never goes down.
    pub fn progress(&self, fraction: f64, title: &str, info: impl Into<String>) {
        let wanted = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
        let before = f64::from_bits(self.max_fraction.fetch_max(wanted.to_bits(), Ordering::SeqCst));
        let fraction = wanted.max(before);
        self.send(JobEvent::Progress { fraction, title: title.into(), info: info.into() });
    }
    pub fn warning(&self, message: impl Into<String>, info: impl Into<String>) {
        let (message, info) = (message.into(), info.into());
        tracing::warn!("{message} {info}");
        self.send(JobEvent::Warning { message, info });
    }
}

/// Python `json.dumps` of a string (ensure_ascii=True).
fn py_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python `repr` of a float as `json.dumps` writes it (serde's shortest round-trip form matches).
fn py_float(v: f64, out: &mut String) {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        let _ = write!(out, "{v:.1}");
    } else {
        let _ = write!(
            out,
            "{}",
            serde_json::Number::from_f64(v).map(|n| n.to_string()).unwrap_or_else(|| "NaN".into())
        );
    }
}

fn object(fields: &[(&str, Option<&str>, Option<f64>)]) -> String {
    let mut out = String::from("{");
    for (i, (k, s, f)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        py_str(k, &mut out);
        out.push_str(": ");
        match (s, f) {
            (Some(s), _) => py_str(&crate::redact::text(s), &mut out),
            (None, Some(f)) => py_float(*f, &mut out),
            (None, None) => out.push_str("null"),
        }
    }
    out.push('}');
    out
}

/// `{"progress": p, "title": t, "info": i}`
pub fn progress_line(fraction: f64, title: &str, info: &str) -> String {
    object(&[("progress", None, Some(fraction)), ("title", Some(title), None), ("info", Some(info), None)])
}

/// `{"warning": m, "title": "Warning", "info": i, "type": "warning"}`
pub fn warning_line(message: &str, info: &str) -> String {
    object(&[
        ("warning", Some(message), None),
        ("title", Some("Warning"), None),
        ("info", Some(info), None),
        ("type", Some("warning"), None),
    ])
}

/// `{"error": m, "title": "Error", "info": i, "type": "error"}`
pub fn error_line(message: &str, info: &str) -> String {
    object(&[
        ("error", Some(message), None),
        ("title", Some("Error"), None),
        ("info", Some(info), None),
        ("type", Some("error"), None),
    ])
}

/// The NimbusImage line for an event, if it has one.
pub fn line_for(e: &JobEvent) -> Option<String> {
    match e {
        JobEvent::Progress { fraction, title, info } => Some(progress_line(*fraction, title, info)),
        JobEvent::Warning { message, info } => Some(warning_line(message, info)),
        JobEvent::Epoch(_) => None,
    }
}

/// "epoch 14", or "epoch 14 and 3 steps of epoch 15" for a checkpoint taken mid-epoch
/// (see [`Checkpoint`] for how epochs are counted).
pub fn checkpoint_label(epoch: usize, step: usize) -> String {
    match step {
        0 => format!("epoch {epoch}"),
        s => format!("epoch {epoch} and {s} steps of epoch {}", epoch + 1),
    }
}

/// Human-readable duration for progress messages ("1h 02m", "3m 20s", "12s").
pub fn fmt_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_python_json_dumps() {
        // json.dumps({"progress": 0.1, "title": "Loading annotations", "info": "Retrieving annotations from server"})
        assert_eq!(
            progress_line(0.1, "Loading annotations", "Retrieving annotations from server"),
            r#"{"progress": 0.1, "title": "Loading annotations", "info": "Retrieving annotations from server"}"#
        );
        assert_eq!(progress_line(1.0, "Done", ""), r#"{"progress": 1.0, "title": "Done", "info": ""}"#);
        // json.dumps({"error": "Bad \"x\"", ...}) with a non-ASCII character
        assert_eq!(
            error_line("Bad \"x\" µm", "i"),
            r#"{"error": "Bad \"x\" \u00b5m", "title": "Error", "info": "i", "type": "error"}"#
        );
        assert_eq!(
            warning_line("w", "i"),
            r#"{"warning": "w", "title": "Warning", "info": "i", "type": "warning"}"#
        );
    }

    #[test]
    fn progress_never_goes_down_and_stays_in_0_to_1() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = Events::new(tx);
        let other = events.clone(); // the training thread's copy
        for (e, f) in
            [(&events, 0.1), (&other, 0.9500000000000001), (&events, 0.95), (&other, 0.5), (&events, 1.5)]
        {
            e.progress(f, "t", "");
        }
        let mut seen = Vec::new();
        while let Ok(JobEvent::Progress { fraction, .. }) = rx.try_recv() {
            seen.push(fraction);
        }
        assert_eq!(seen, vec![0.1, 0.9500000000000001, 0.9500000000000001, 0.9500000000000001, 1.0]);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration(5.2), "5s");
        assert_eq!(fmt_duration(200.0), "3m 20s");
        assert_eq!(fmt_duration(3725.0), "1h 02m");
    }
}
