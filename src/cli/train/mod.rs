//! `train`: fine-tune or train from scratch on a folder of images and masks, with cellpose's and
//! Omnipose's flag names ([`flags`]). The base model's family picks the run: [`cpnet`] (cellpose
//! 3.1.1.2 `train_seg`) or [`cpsam`] (cellpose 4.2.1.1); [`console`] is what both show.

use std::process::ExitCode;

mod console;
mod cpnet;
mod cpsam;
mod flags;

pub use flags::TrainArgs;

/// The family of the base model, when it can be told without loading it (`None`: from
/// scratch, or a spec that does not resolve, which the CPnet path then reports).
fn base_family(args: &TrainArgs) -> Option<crate::model::ModelFamily> {
    let spec = args.pretrained_model.as_str();
    if ["none", "false", "0", "scratch"].contains(&spec.to_ascii_lowercase().as_str()) {
        return None;
    }
    if let Some(f) = crate::model::registry::builtin_family(spec) {
        return Some(f);
    }
    let source = crate::model::registry::resolve(spec, &args.models_dir.resolve()).ok()?;
    crate::model::ModelFamily::detect(&source.path).ok()
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    if base_family(&args) == Some(crate::model::ModelFamily::Cpsam) {
        return cpsam::run(args);
    }
    cpnet::run(args)
}
