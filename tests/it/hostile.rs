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

use bytes::Bytes;
use cellpose_train_worker::demo::seed::interface_values;
use cellpose_train_worker::imageio;
use cellpose_train_worker::job::store;
use cellpose_train_worker::pickle::Writer;
use cellpose_train_worker::synthetic::{synth_image, write_folder, SynthSpec};
use ndarray::{Array2, Array3};
use serde_json::{json, Value};

use super::helpers::{bin, tempdir};
use super::job::{fixture, with, BASE, TINY};

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

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

fn model_init(path: &Path, nchan: &str) {
    let st = bin()
        .args(["model", "init", "--nchan", nchan, "--nbase", "8,16", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
}

/// One image + mask pair named `img` in `dir`.
fn pair(dir: &Path, image: &Array3<f32>, labels: &Array2<u32>) {
    std::fs::create_dir_all(dir).unwrap();
    imageio::write_tiff_f32(&dir.join("img.tif"), image).unwrap();
    imageio::write_labels_tiff(&dir.join("img_masks.tif"), labels.view()).unwrap();
}

#[test]
fn hostile_cli_inputs_fail_clearly_and_lose_nothing() {
    let w = tempdir();
    let w = w.path();
    let data = w.join("data");
    write_folder(&data, 2, &SynthSpec { height: 48, width: 48, n_cells: 6, ..Default::default() }).unwrap();
    // an earlier model of the name `keep` and its metrics: a bad flag must not truncate them
    std::fs::create_dir_all(data.join("models")).unwrap();
    model_init(&data.join("models/keep"), "2");
    write(&data.join("models/keep.metrics.jsonl"), b"{\"before\": \"precious\"}\n");
    let base = w.join("base.pt");
    model_init(&base, "2");
    let three = w.join("three.pt");
    model_init(&three, "3");
    let base_bytes = std::fs::read(&base).unwrap();
    // the crafted file of the issue: size 2^40, stride 0, one stored float (~1 KB)
    let crafted = write(&w.join("crafted.pt"), &crafted_model(&[1 << 40], &[0], 1, &[0; 4], false));
    assert!(std::fs::metadata(&crafted).unwrap().len() < 2048);
    let bomb = write(&w.join("bomb.pt"), &crafted_model(&[1], &[1], 1, &vec![0; 64 << 20], true));
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20, "a bomb inflates 64x");
    let claim = write(&w.join("claim.pt"), &crafted_model(&[1 << 31], &[1], 1 << 31, &[0; 4], false));
    let past = write(&w.join("past.pt"), &crafted_model(&[4], &[2], 4, &[0; 16], false));
    let empty = write(&w.join("empty.pt"), b"");
    let html = write(&w.join("html.pt"), b"<html><body>404 Not Found</body></html>");
    let trunc = write(&w.join("trunc.pt"), &base_bytes[..base_bytes.len() / 2]);
    let folder = w.join("a_folder");
    std::fs::create_dir_all(&folder).unwrap();
    let (img, labels) = synth_image(&SynthSpec { height: 48, width: 48, n_cells: 6, ..Default::default() });
    let image = w.join("img.tif");
    imageio::write_tiff_f32(&image, &img).unwrap();
    let tiny_dir = w.join("one_pixel");
    pair(&tiny_dir, &Array3::from_elem((2, 1, 1), 1.0), &Array2::from_elem((1, 1), 1));
    let nan_dir = w.join("nan");
    let mut nan_img = img.clone();
    nan_img[[0, 3, 4]] = f32::NAN;
    pair(&nan_dir, &nan_img, &labels);
    let a_file = write(&w.join("a_file.txt"), b"not a folder");

    // `train` with every flag a working run needs; a case overrides one (flags as --flag=value,
    // so that negative numbers stay values)
    let defaults: Vec<(&str, OsString)> = vec![
        ("--device", "cpu".into()),
        ("--n-epochs", "1".into()),
        ("--min-train-masks", "1".into()),
        ("--chan", "1".into()),
        ("--chan2", "2".into()),
        ("--bsize", "32".into()),
        ("--batch-size", "2".into()),
        ("--model-name", "keep".into()),
        ("--pretrained-model", base.clone().into()),
        ("--dir", data.clone().into()),
    ];
    let t = |name: &str, over: &[(&str, &dyn AsRefOs)], needles: &[&str]| {
        let mut flags = defaults.clone();
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
        case(name, &refs, Ends::Code(1), needles)
    };
    let long = "é".repeat(201);
    let mut cases = vec![
        // inspect tells the family from the names and shapes alone (no tensor data read), so this
        // one-tensor file is refused as no cellpose model before its view is even looked at;
        // `predict crafted` below reaches the storage bound check
        case(
            "inspect crafted 2^40 x stride 0",
            &[&"model", &"inspect", &crafted],
            Ends::Code(1),
            &["crafted.pt", "neither a cellpose 3 CPnet nor a cellpose 4 cpsam state_dict"],
        ),
        // a one-tensor file is no cellpose model: refused from its names before any data is read
        // (the storage bounds and the inflation cap are unit-tested in model::torch_file)
        case(
            "inspect deflate bomb",
            &[&"model", &"inspect", &bomb],
            Ends::Code(1),
            &["bomb.pt", "state_dict"],
        ),
        case(
            "predict with a deflate bomb",
            &[
                &"predict",
                &"--device",
                &"cpu",
                &"--model",
                &bomb,
                &"--image",
                &image,
                &"--out",
                &w.join("b.tif"),
            ],
            Ends::Code(1),
            &["bomb.pt", "neither a cellpose 3 CPnet nor a cellpose 4 cpsam"],
        ),
        case(
            "inspect 8 GB storage claim",
            &[&"model", &"inspect", &claim],
            Ends::Code(1),
            &["claim.pt", "state_dict"],
        ),
        case(
            "inspect view past its storage",
            &[&"model", &"inspect", &past],
            Ends::Code(1),
            &["past.pt", "state_dict"],
        ),
        case(
            "inspect empty file",
            &[&"model", &"inspect", &empty],
            Ends::Code(1),
            &["empty.pt", "empty file"],
        ),
        case("inspect HTML page", &[&"model", &"inspect", &html], Ends::Code(1), &["html.pt", "text"]),
        case("inspect truncated", &[&"model", &"inspect", &trunc], Ends::Code(1), &["trunc.pt", "truncated"]),
        case("inspect a folder", &[&"model", &"inspect", &folder], Ends::Code(1), &["a_folder"]),
        case(
            "predict crafted",
            &[
                &"predict",
                &"--device",
                &"cpu",
                &"--model",
                &crafted,
                &"--image",
                &image,
                &"--out",
                &w.join("p.tif"),
            ],
            Ends::Code(1),
            &["crafted.pt", "neither a cellpose 3 CPnet nor a cellpose 4 cpsam"],
        ),
        case(
            "segment crafted",
            &[
                &"segment",
                &"--device",
                &"cpu",
                &"--model",
                &crafted,
                &"--image",
                &image,
                &"--out",
                &w.join("seg"),
            ],
            Ends::Code(1),
            &["crafted.pt"],
        ),
        case(
            "segment --out an existing file",
            &[&"segment", &"--device", &"cpu", &"--model", &base, &"--image", &image, &"--out", &a_file],
            Ends::Code(1),
            &["a_file.txt", "is a file", "folder"],
        ),
        case(
            "predict unknown model",
            &[
                &"predict",
                &"--device",
                &"cpu",
                &"--model",
                &"no_such_model",
                &"--image",
                &image,
                &"--out",
                &w.join("p.tif"),
            ],
            Ends::Code(1),
            &["no_such_model"],
        ),
        t("train --pretrained-model crafted", &[("--pretrained-model", &crafted)], &["crafted.pt"]),
        t(
            "train --pretrained-model FOLDER",
            &[("--pretrained-model", &folder)],
            &["a_folder", "is a folder"],
        ),
        t(
            "train --pretrained-model 3-channel",
            &[("--pretrained-model", &three)],
            &["nchan differs", "--chan"],
        ),
        t("train --bsize 17", &[("--bsize", &"17")], &["bsize", "17", "multiple of 16"]),
        t("train --bsize 4096", &[("--bsize", &"4096")], &["bsize 4096", "1024"]),
        t("train --n-epochs 0", &[("--n-epochs", &"0")], &["n_epochs"]),
        t("train --batch-size 0", &[("--batch-size", &"0")], &["batch_size"]),
        t("train --learning-rate -1", &[("--learning-rate", &"-1")], &["learning_rate", "-1"]),
        t("train --weight-decay -1", &[("--weight-decay", &"-1")], &["weight_decay"]),
        t("train --save-every 0", &[("--save-every", &"0")], &["save_every"]),
        t("train --diameter -5", &[("--diameter", &"-5")], &["--diameter"]),
        t("train --eval-every 0", &[("--eval-every", &"0")], &["--eval-every"]),
        t("train --model-name ..", &[("--model-name", &"..")], &["--model-name", "`..`", "folder"]),
        t("train --model-name .", &[("--model-name", &".")], &["--model-name", "`.`", "folder"]),
        t("train --model-name a/b", &[("--model-name", &"a/b")], &["--model-name", "slash"]),
        t("train --model-name 201 x é", &[("--model-name", &long)], &["--model-name", "201 characters"]),
        t("train a 1x1 image", &[("--dir", &tiny_dir)], &["one_pixel", "1x1"]),
        t("train an image with NaN", &[("--dir", &nan_dir)], &["nan/img.tif", "NaN"]),
        t("train a missing folder", &[("--dir", &w.join("missing"))], &["missing"]),
    ];
    let mut piped =
        case("model inspect | head (closed pipe)", &[&"model", &"inspect", &base], Ends::Sigpipe, &[]);
    piped.closed_stdout = true;
    cases.push(piped);
    let (tried, clear) = check(&cases, &[w]);
    assert_eq!(
        std::fs::read(data.join("models/keep.metrics.jsonl")).unwrap(),
        b"{\"before\": \"precious\"}\n"
    );
    eprintln!("hostile CLI inputs: {tried} tried, {clear} clear errors, 0 crashes");
    assert!(tried >= 30);
}

/// The user's Girder models as "item id name" lines.
async fn model_items(f: &super::job::Fixture) -> Vec<String> {
    let items = store::list_user_models(&f.world.user, &f.world.user_id).await.unwrap();
    items.into_iter().map(|i| format!("{} {}", i.id, i.name)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_oneshot_inputs_fail_with_an_error_line_and_touch_no_model() {
    let f = fixture(64, 4, &TINY).await;
    let user = &f.world.user;
    let crafted = crafted_model(&[1 << 40], &[0], 1, &[0; 4], false);
    store::upload_model(user, &f.world.user_id, "crafted", Bytes::from(crafted), "test").await.unwrap();
    let before = model_items(&f).await;
    let ok = interface_values(BASE, "my-model", 1);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = f.models_dir.path().join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    let token = f.world.user_token.expose().to_string();
    let compute = |name: &str, api: &str, params: Value, needles: &[&str]| {
        let mut c = case(
            name,
            &[
                &"--apiUrl",
                &api.to_string(),
                &"--token",
                &token,
                &"--request",
                &"compute",
                &"--datasetId",
                &f.world.dataset_id,
                &"--parameters",
                &params.to_string(),
                &"--config",
                &cfg,
            ],
            Ends::Code(1),
            needles,
        );
        c.env = vec![
            ("CPW_TRAINING__DEVICE".into(), "cpu".into()),
            ("CPW_TRAINING__BSIZE".into(), "32".into()),
            ("CPW_TRAINING__MIN_EPOCHS".into(), "1".into()),
            ("CPW_GIRDER__MAX_RETRIES".into(), "0".into()),
        ];
        c.error_line = true;
        c
    };
    let wi = |v: Value| json!({ "workerInterface": v });
    let api = f.mock.api_url.clone();
    let root = api.trim_end_matches("/api/v1").to_string();
    let mut cases = vec![
        compute(
            "compute with the crafted base model",
            &api,
            wi(with(&ok, "Base Model", Some(json!("crafted")))),
            &["crafted", "4398046511104 bytes"],
        ),
        compute(
            "compute, parameters a string",
            &api,
            json!("{\"workerInterface\": {}}"),
            &["--parameters", "not a string"],
        ),
        compute(
            "compute, workerInterface a string",
            &api,
            json!({"workerInterface": "x"}),
            &["workerInterface", "a string"],
        ),
        compute(
            "compute, Output Model Name .",
            &api,
            wi(with(&ok, "Output Model Name", Some(json!(".")))),
            &["Output Model Name", "folder"],
        ),
        compute(
            "compute, Output Model Name 201 x é",
            &api,
            wi(with(&ok, "Output Model Name", Some(json!("é".repeat(201))))),
            &["Output Model Name", "201 characters"],
        ),
        compute(
            "compute, a tag nobody used",
            &api,
            wi(with(&ok, "Training Tag", Some(json!(["nobody"])))),
            &["nobody", "polygon and rectangle annotations; their tags: "],
        ),
        compute(
            "compute, Girder port closed",
            &format!("http://127.0.0.1:{closed_port}/api/v1"),
            wi(ok.clone()),
            &[&*format!("127.0.0.1:{closed_port}"), "check the host and port"],
        ),
        compute("compute, API URL without /api/v1", &format!("{root}/girder"), wi(ok.clone()), &["/api/v1"]),
    ];
    let mut piped = compute("compute | head -1 (closed pipe)", &api, wi(ok.clone()), &[]);
    piped.ends = Ends::Sigpipe;
    piped.closed_stdout = true;
    piped.error_line = false;
    cases.push(piped);
    let work = f.models_dir.path().to_path_buf();
    let (tried, clear) = tokio::task::spawn_blocking(move || check(&cases, &[&work])).await.unwrap();
    assert_eq!(model_items(&f).await, before, "the user's models changed");
    eprintln!("hostile one-shot inputs: {tried} tried, {clear} clear errors, 0 crashes");
}
