//! Hostile and broken input (issue 14): crafted model files, bad flags, odd names, closed pipes,
//! wrong URLs, through the CLI and the one-shot mode against the mock Girder. Every case must
//! exit with the expected status, name the offending thing, never panic or abort, and leave every
//! file (and every Girder model) exactly as it was: nothing lost, nothing left behind.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod absurd;
mod cli;
mod oneshot;

use cellpose_train_worker::pickle::Writer;
use serde_json::Value;

use super::helpers::bin;

/// A `torch.save` file with one float tensor `output.2.weight` of the given view over a storage
/// of `storage_numel` floats holding `data`; `deflate` compresses the records (torch never does).
pub(super) fn crafted_model(
    shape: &[i64],
    stride: &[i64],
    storage_numel: i64,
    data: &[u8],
    deflate: bool,
) -> Vec<u8> {
    let mut p = Writer::new();
    p.global("collections", "OrderedDict");
    let od = p.put();
    p.empty_tuple();
    p.reduce();
    p.put();
    p.mark();
    p.str("output.2.weight");
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.put();
    p.mark();
    p.mark();
    p.str("storage");
    p.global("torch", "FloatStorage");
    p.str("0");
    p.str("cpu");
    p.int(storage_numel);
    p.tuple();
    p.binpersid();
    p.int(0);
    p.int_tuple(shape);
    p.int_tuple(stride);
    p.bool(false);
    p.get(od);
    p.empty_tuple();
    p.reduce();
    p.tuple();
    p.reduce();
    p.setitems();
    let pkl = p.stop();
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in [
        ("archive/data.pkl", pkl.as_slice()),
        ("archive/byteorder", b"little".as_slice()),
        ("archive/data/0", data),
        ("archive/version", b"3\n".as_slice()),
    ] {
        zip.start_file(name, opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

/// Every file under `root` with its bytes: what "nothing lost, nothing left behind" compares.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.insert(path.clone(), b"<dir>".to_vec());
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// How a case must end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ends {
    /// Exit status (1: a clear error).
    Code(i32),
    /// Killed by SIGPIPE, as `cat`/`grep` are when the reader goes away.
    Sigpipe,
}

struct Case {
    name: String,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    ends: Ends,
    /// Each must appear in stderr + stdout.
    needles: Vec<String>,
    /// stdout is a pipe whose reader is already gone.
    closed_stdout: bool,
    /// One-shot compute: the last stdout line must be NimbusImage's `{"error": ...}`.
    error_line: bool,
}

fn case(name: &str, args: &[&dyn AsRefOs], ends: Ends, needles: &[&str]) -> Case {
    Case {
        name: name.into(),
        args: args.iter().map(|a| a.os()).collect(),
        env: Vec::new(),
        ends,
        needles: needles.iter().map(|s| s.to_string()).collect(),
        closed_stdout: false,
        error_line: false,
    }
}

/// `train` with every flag a working run needs on `data` from `base` into the model `keep`.
fn train_defaults(base: &Path, data: &Path) -> Vec<(&'static str, OsString)> {
    vec![
        ("--device", "cpu".into()),
        ("--n-epochs", "1".into()),
        ("--min-train-masks", "1".into()),
        ("--chan", "1".into()),
        ("--chan2", "2".into()),
        ("--bsize", "32".into()),
        ("--batch-size", "2".into()),
        ("--model-name", "keep".into()),
        ("--pretrained-model", base.as_os_str().to_owned()),
        ("--dir", data.as_os_str().to_owned()),
    ]
}

/// A `train` case: `defaults` with `over` replacing or adding flags (passed as `--flag=value`, so
/// that negative numbers stay values).
fn train_case(
    name: &str,
    defaults: &[(&str, OsString)],
    over: &[(&str, &dyn AsRefOs)],
    ends: Ends,
    needles: &[&str],
) -> Case {
    let mut flags = defaults.to_vec();
    for (flag, value) in over {
        match flags.iter_mut().find(|(f, _)| f == flag) {
            Some(slot) => slot.1 = value.os(),
            None => flags.push((*flag, value.os())),
        }
    }
    let args: Vec<OsString> = std::iter::once(OsString::from("train"))
        .chain(flags.iter().map(|(f, v)| {
            let mut a = OsString::from(f);
            a.push("=");
            a.push(v);
            a
        }))
        .collect();
    let refs: Vec<&dyn AsRefOs> = args.iter().map(|a| a as &dyn AsRefOs).collect();
    case(name, &refs, ends, needles)
}

/// `&str` and paths in one argument list.
trait AsRefOs {
    fn os(&self) -> OsString;
}
impl AsRefOs for &str {
    fn os(&self) -> OsString {
        OsString::from(self)
    }
}
impl AsRefOs for String {
    fn os(&self) -> OsString {
        OsString::from(self)
    }
}
impl AsRefOs for PathBuf {
    fn os(&self) -> OsString {
        self.clone().into_os_string()
    }
}
impl AsRefOs for OsString {
    fn os(&self) -> OsString {
        self.clone()
    }
}
impl AsRefOs for Box<dyn AsRefOs> {
    fn os(&self) -> OsString {
        (**self).os()
    }
}

fn run(c: &Case) -> Output {
    let mut cmd: Command = bin();
    cmd.args(&c.args).env("OMP_NUM_THREADS", "1").env("RUST_BACKTRACE", "0").stdin(Stdio::null());
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    if c.closed_stdout {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        cmd.stdout(writer).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        drop(cmd); // the parent's copy of the write end
        child.wait_with_output().unwrap()
    } else {
        cmd.output().unwrap()
    }
}

/// Runs every case; returns (tried, clear errors) after asserting each one.
fn check(cases: &[Case], roots: &[&Path]) -> (usize, usize) {
    let mut clear = 0;
    for c in cases {
        let before: Vec<_> = roots.iter().map(|r| snapshot(r)).collect();
        let out = run(c);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = format!("{stderr}\n{stdout}");
        let name = &c.name;
        for bad in ["panicked", "memory allocation of", "RUST_BACKTRACE", "Aborted", "core dumped"] {
            assert!(!text.contains(bad), "{name}: `{bad}` in the output:\n{text}");
        }
        match c.ends {
            Ends::Code(code) => {
                assert_eq!(out.status.signal(), None, "{name}: killed by a signal:\n{text}");
                assert_eq!(out.status.code(), Some(code), "{name}: exit status:\n{text}");
            }
            Ends::Sigpipe => {
                assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{name}: {:?}\n{text}", out.status);
                assert!(stderr.trim().is_empty() || !stderr.contains("error"), "{name}: not quiet:\n{text}");
            }
        }
        for n in &c.needles {
            assert!(text.contains(n.as_str()), "{name}: `{n}` missing from:\n{text}");
        }
        if c.error_line {
            let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{name}: last stdout line is not JSON ({e}):\n{stdout}"));
            assert_eq!(last["type"], "error", "{name}: {last}");
        }
        for (root, before) in roots.iter().zip(&before) {
            let after = snapshot(root);
            assert!(
                after == *before,
                "{name}: files changed: lost {:?}, new or changed {:?}",
                before.keys().filter(|k| after.get(*k) != before.get(*k)).collect::<Vec<_>>(),
                after.keys().filter(|k| after.get(*k) != before.get(*k)).collect::<Vec<_>>()
            );
        }
        if matches!(c.ends, Ends::Code(1)) {
            clear += 1;
        }
    }
    (cases.len(), clear)
}
