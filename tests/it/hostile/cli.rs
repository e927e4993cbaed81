//! Hostile input through the local CLI: crafted model files, bad flags and names, broken images.

use std::path::{Path, PathBuf};

use cellpose_train_worker::imageio;
use cellpose_train_worker::synthetic::{synth_image, write_folder, SynthSpec};
use ndarray::{Array2, Array3};

use super::{case, check, crafted_model, train_case, train_defaults, AsRefOs, Ends};
use crate::helpers::{bin, tempdir};

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

pub(super) fn model_init(path: &Path, nchan: &str) {
    let st = bin()
        .args(["model", "init", "--nchan", nchan, "--nbase", "8,16", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
}

/// One image + mask pair named `img` in `dir`.
pub(super) fn pair(dir: &Path, image: &Array3<f32>, labels: &Array2<u32>) {
    std::fs::create_dir_all(dir).unwrap();
    imageio::write_tiff_f32(&dir.join("img.tif"), image).unwrap();
    imageio::write_labels_tiff(&dir.join("img_masks.tif"), labels.view()).unwrap();
}

/// Under `w`: `data/` with two synthetic image/mask pairs and an earlier model `keep` with its
/// metrics (a bad flag must not truncate them; see [`PRECIOUS`]), and a 2-channel `base.pt`.
pub(super) fn workspace(w: &Path) -> (PathBuf, PathBuf) {
    let data = w.join("data");
    write_folder(&data, 2, &SynthSpec { height: 48, width: 48, n_cells: 6, ..Default::default() }).unwrap();
    std::fs::create_dir_all(data.join("models")).unwrap();
    model_init(&data.join("models/keep"), "2");
    write(&data.join("models/keep.metrics.jsonl"), PRECIOUS);
    let base = w.join("base.pt");
    model_init(&base, "2");
    (data, base)
}

/// The earlier model's metrics history in [`workspace`].
pub(super) const PRECIOUS: &[u8] = b"{\"before\": \"precious\"}\n";

#[test]
fn hostile_cli_inputs_fail_clearly_and_lose_nothing() {
    let w = tempdir();
    let w = w.path();
    let (data, base) = workspace(w);
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

    let defaults = train_defaults(&base, &data);
    let t = |name: &str, over: &[(&str, &dyn AsRefOs)], needles: &[&str]| {
        train_case(name, &defaults, over, Ends::Code(1), needles)
    };
    // `predict` / `segment` of the image with `model` into `out`: must fail, naming the needles
    let on_image = |name: &str, cmd: &str, model: &dyn AsRefOs, out: &dyn AsRefOs, needles: &[&str]| {
        case(
            name,
            &[&cmd, &"--device", &"cpu", &"--model", model, &"--image", &image, &"--out", out],
            Ends::Code(1),
            needles,
        )
    };
    let inspect = |name: &str, file: &dyn AsRefOs, needles: &[&str]| {
        case(name, &[&"model", &"inspect", file], Ends::Code(1), needles)
    };
    let long = "é".repeat(201);
    let mut cases = vec![
        // inspect tells the family from the names and shapes alone (no tensor data read), so this
        // one-tensor file is refused as no cellpose model before its view is even looked at;
        // `predict crafted` below reaches the storage bound check
        inspect(
            "inspect crafted 2^40 x stride 0",
            &crafted,
            &["crafted.pt", "neither a cellpose 3 CPnet nor a cellpose 4 cpsam state_dict"],
        ),
        // a one-tensor file is no cellpose model: refused from its names before any data is read
        // (the storage bounds and the inflation cap are unit-tested in model::torch_file)
        inspect("inspect deflate bomb", &bomb, &["bomb.pt", "state_dict"]),
        on_image(
            "predict with a deflate bomb",
            "predict",
            &bomb,
            &w.join("b.tif"),
            &["bomb.pt", "neither a cellpose 3 CPnet nor a cellpose 4 cpsam"],
        ),
        inspect("inspect 8 GB storage claim", &claim, &["claim.pt", "state_dict"]),
        inspect("inspect view past its storage", &past, &["past.pt", "state_dict"]),
        inspect("inspect empty file", &empty, &["empty.pt", "empty file"]),
        inspect("inspect HTML page", &html, &["html.pt", "text"]),
        inspect("inspect truncated", &trunc, &["trunc.pt", "truncated"]),
        inspect("inspect a folder", &folder, &["a_folder"]),
        on_image(
            "predict crafted",
            "predict",
            &crafted,
            &w.join("p.tif"),
            &["crafted.pt", "neither a cellpose 3 CPnet nor a cellpose 4 cpsam"],
        ),
        on_image("segment crafted", "segment", &crafted, &w.join("seg"), &["crafted.pt"]),
        on_image(
            "segment --out an existing file",
            "segment",
            &base,
            &a_file,
            &["a_file.txt", "is a file", "folder"],
        ),
        on_image("predict unknown model", "predict", &"no_such_model", &w.join("p.tif"), &["no_such_model"]),
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
    assert_eq!(std::fs::read(data.join("models/keep.metrics.jsonl")).unwrap(), PRECIOUS);
    eprintln!("hostile CLI inputs: {tried} tried, {clear} clear errors, 0 crashes");
    assert!(tried >= 30);
}
