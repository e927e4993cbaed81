//! Issue 26, the input side: absurd numbers refused by name before anything is allocated (they
//! aborted with `memory allocation of N bytes failed` or panicked in tch), nonsense that was
//! stored in a model (`--diameter 1e30`), images `train` refuses that `predict`/`segment`/`eval`
//! took without a word (NaN, ±Inf, hyperstacks), integer weights cast silently, and a failed run
//! that left its metrics history behind. Every case must exit with a clear error, name the
//! option or the file, and leave every file as it was.

use std::path::{Path, PathBuf};

use cellpose_train_worker::imageio;
use cellpose_train_worker::model::torch_file::{self, DType, RawTensor};
use cellpose_train_worker::synthetic::{synth_image, SynthSpec};
use ndarray::Array3;

use super::cli::{model_init, pair, workspace, PRECIOUS};
use super::{case, check, train_case, train_defaults, AsRefOs, Ends};
use crate::helpers::{bin, fixture, tempdir};

/// `model` with tensor `name` replaced by `f(tensor)`.
fn edited_model(model: &Path, out: &Path, name: &str, f: impl Fn(&RawTensor) -> RawTensor) -> PathBuf {
    let mut sd = torch_file::read_state_dict(model).unwrap();
    let slot = sd.entries.iter_mut().find(|(n, _)| n == name).unwrap();
    slot.1 = f(&slot.1);
    torch_file::write_state_dict(out, &sd).unwrap();
    out.to_path_buf()
}

#[test]
fn absurd_numbers_and_refused_images_fail_clearly_and_lose_nothing() {
    let w = tempdir();
    let w = w.path();
    let (data, base) = workspace(w);
    // diam_labels 1e-4, as `train --diameter 0.0001` used to save it
    let tiny_diam = edited_model(&base, &w.join("tiny_diam.pt"), "diam_labels", |t| RawTensor {
        data: 1e-4f32.to_le_bytes().to_vec(),
        ..t.clone()
    });
    // one weight stored as int64
    let int_weights = edited_model(&base, &w.join("int64.pt"), "output.2.weight", |t| RawTensor {
        dtype: DType::I64,
        data: vec![0u8; t.data.len() * 2],
        ..t.clone()
    });
    let (img, labels) = synth_image(&SynthSpec { height: 48, width: 48, n_cells: 6, ..Default::default() });
    let image = w.join("img.tif");
    imageio::write_tiff_f32(&image, &img).unwrap();
    let nan = w.join("nan.tif");
    imageio::write_tiff_f32(&nan, &Array3::from_elem((2, 48, 48), f32::NAN)).unwrap();
    let inf = w.join("inf.tif");
    let mut inf_img = img.clone();
    inf_img[[1, 10, 10]] = f32::INFINITY;
    inf_img[[0, 20, 20]] = f32::NEG_INFINITY;
    imageio::write_tiff_f32(&inf, &inf_img).unwrap();
    let nan_dir = w.join("nan_eval");
    let mut nan_img = img.clone();
    nan_img.fill(f32::NAN);
    pair(&nan_dir, &nan_img, &labels);
    let hyperstack = fixture("tiff_layouts/imagej_hyperstack_tzcyx.tif");

    let defaults = train_defaults(&base, &data);
    let t = |name: &str, over: &[(&str, &dyn AsRefOs)], needles: &[&str]| {
        train_case(name, &defaults, over, Ends::Code(1), needles)
    };
    // training from scratch with one more flag
    let scratch = |name: &str, flag: &str, value: &str, needles: &[&str]| {
        let value = value.to_string();
        train_case(
            name,
            &defaults,
            &[("--pretrained-model", &"None"), (flag, &value)],
            Ends::Code(1),
            needles,
        )
    };
    let image_case =
        |name: &str, cmd: &str, model: &dyn AsRefOs, img: &dyn AsRefOs, extra: &[&str], needles: &[&str]| {
            let out = w.join("never_written");
            let mut args: Vec<&dyn AsRefOs> =
                vec![&cmd, &"--device", &"cpu", &"--model", model, &"--image", img, &"--out"];
            args.push(&out);
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            let extra_refs: Vec<&dyn AsRefOs> = extra.iter().map(|s| s as &dyn AsRefOs).collect();
            args.extend(extra_refs);
            case(name, &args, Ends::Code(1), needles)
        };
    let mut cases = vec![
        t(
            "train --n-epochs 10000000000",
            &[("--n-epochs", &"10000000000")],
            &["--n-epochs", "10000000000", "100000 epochs"],
        ),
        t(
            "train --nimg-per-epoch 1000000000000",
            &[("--nimg-per-epoch", &"1000000000000")],
            &["--nimg-per-epoch", "1000000 images per epoch"],
        ),
        t("train --nimg-per-epoch 0", &[("--nimg-per-epoch", &"0")], &["--nimg-per-epoch", "at least 1"]),
        t(
            "train --batch-size 100000000",
            &[("--batch-size", &"100000000")],
            &["--batch-size", "67108864 pixels"],
        ),
        t("train --diameter 1e30", &[("--diameter", &"1e30")], &["--diameter", "5..20000 pixels"]),
        t("train --diameter 0.0001", &[("--diameter", &"0.0001")], &["--diameter 0.0001", "5..20000 pixels"]),
        scratch(
            "train from scratch --nbase 100000,200000",
            "--nbase",
            "100000,200000",
            &["--nbase 100000,200000", "250000000 weights"],
        ),
        scratch("train from scratch --diam-mean 0", "--diam-mean", "0", &["--diam-mean 0", "5..20000"]),
        // a run that fails after it started: no history may stay behind, the earlier one is kept
        t(
            "train diverging (--learning-rate 1e30)",
            &[("--learning-rate", &"1e30"), ("--n-epochs", &"4")],
            &["loss became"],
        ),
        train_case(
            "train --n-epochs -1",
            &defaults,
            &[("--n-epochs", &"-1")],
            Ends::Code(2),
            &["--n-epochs", "-1"],
        ),
        case(
            "model init --nbase 100000,200000",
            &[&"model", &"init", &"--out", &w.join("never.pt"), &"--nbase", &"100000,200000"],
            Ends::Code(1),
            &["--nbase 100000,200000", "250000000 weights"],
        ),
        case(
            "model init --nchan 100000",
            &[&"model", &"init", &"--out", &w.join("never.pt"), &"--nchan", &"100000"],
            Ends::Code(1),
            &["--nchan", "1..64"],
        ),
        case(
            "model init --nchan -3",
            &[&"model", &"init", &"--out", &w.join("never.pt"), &"--nchan", &"-3"],
            Ends::Code(1),
            &["--nchan", "-3"],
        ),
        image_case("predict an all-NaN image", "predict", &base, &nan, &[], &["nan.tif", "NaN or infinite"]),
        image_case(
            "predict an image with ±Inf",
            "predict",
            &base,
            &inf,
            &[],
            &["inf.tif", "2 pixel values are NaN or infinite"],
        ),
        image_case("segment an all-NaN image", "segment", &base, &nan, &[], &["nan.tif", "NaN or infinite"]),
        case(
            "eval a folder with an all-NaN image",
            &[&"eval", &"--device", &"cpu", &"--model", &base, &"--dir", &nan_dir],
            Ends::Code(1),
            &["img.tif", "NaN or infinite"],
        ),
        image_case(
            "predict a TZCYX hyperstack",
            "predict",
            &base,
            &hyperstack,
            &[],
            &["imagej_hyperstack_tzcyx.tif", "TZCYX", "z-slice"],
        ),
        image_case(
            "predict with a model of diam_labels 1e-4",
            "predict",
            &tiny_diam,
            &image,
            &[],
            &["diam_labels 0.0001", "the limit is 268435456 samples", "--diameter"],
        ),
        image_case(
            "predict --diameter 0.0001",
            "predict",
            &base,
            &image,
            &["--diameter", "0.0001"],
            &["--diameter 0.0001", "limit"],
        ),
        image_case(
            "predict with int64 weights",
            "predict",
            &int_weights,
            &image,
            &[],
            &["int64.pt", "output.2.weight", "I64", "floating-point"],
        ),
    ];
    cases.push(case(
        "predict --batch-size -2",
        &[
            &"predict",
            &"--model",
            &base,
            &"--image",
            &image,
            &"--out",
            &w.join("x.tif"),
            &"--batch-size",
            &"-2",
        ],
        Ends::Code(1),
        &["--batch-size"],
    ));
    let (tried, clear) = check(&cases, &[w]);
    assert_eq!(std::fs::read(data.join("models/keep.metrics.jsonl")).unwrap(), PRECIOUS);
    eprintln!("absurd inputs: {tried} tried, {clear} clear errors, 0 crashes");
}

#[test]
fn predict_reads_tifffiles_default_three_channel_layout() {
    // the crash of issue 26: one page, PlanarConfiguration=2, float32
    let w = tempdir();
    let model = w.path().join("three.pt");
    model_init(&model, "3");
    let out = w.path().join("flows.tif");
    let img = fixture("tiff_layouts/planar_3_float32.tif");
    let run = bin()
        .args(["predict", "--device", "cpu", "--all-channels", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(&img)
        .arg("--out")
        .arg(&out)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let flows = imageio::read_image(&out).unwrap();
    assert_eq!(flows.dim(), (3, 13, 20), "dY, dX, cellprob at the image's size");
    assert!(flows.iter().all(|v| v.is_finite()));
}
