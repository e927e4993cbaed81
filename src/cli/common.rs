//! Flags shared by several subcommands (channels, device, models directory), with cellpose's names.

use std::path::PathBuf;

use clap::Args;

use crate::transforms::Channels;

/// cellpose-style channel flags: `--chan/--chan2`, or `--all-channels [--nchan N]`.
#[derive(Args, Debug, Clone)]
pub struct ChannelArgs {
    /// Channel to segment: 0 = grey (mean of channels), 1 = first/red, 2 = second/green, 3 = blue.
    #[arg(long, default_value_t = 0)]
    pub chan: usize,
    /// Nuclear channel: 0 = none, 1.. as --chan.
    #[arg(long, default_value_t = 0)]
    pub chan2: usize,
    /// Use all channels as they are (no chan/chan2 selection).
    #[arg(long)]
    pub all_channels: bool,
    /// With --all-channels: number of network input channels (default: the image's).
    #[arg(long)]
    pub nchan: Option<usize>,
}

impl ChannelArgs {
    pub fn to_channels(&self, image_channels: usize) -> anyhow::Result<Channels> {
        if self.all_channels {
            let nchan = self.nchan.unwrap_or(image_channels);
            anyhow::ensure!(nchan >= 1, "--nchan must be at least 1");
            Ok(Channels::All { nchan })
        } else {
            anyhow::ensure!(self.nchan.is_none(), "--nchan only applies with --all-channels");
            Ok(Channels::Pair { chan: self.chan, chan2: self.chan2 })
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct DeviceArg {
    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl DeviceArg {
    pub fn resolve(&self) -> anyhow::Result<tch::Device> {
        Ok(crate::device::parse_device(&self.device)?)
    }
}

#[derive(Args, Debug, Clone)]
pub struct ModelsDirArg {
    /// Folder of built-in and saved models (default: $CELLPOSE_LOCAL_MODELS_PATH or ~/.cellpose/models).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
}

impl ModelsDirArg {
    pub fn resolve(&self) -> PathBuf {
        crate::model::registry::models_dir(self.models_dir.as_deref())
    }
}
