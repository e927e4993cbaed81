//! Training precision: float32, or bf16 matrix products with float32 master weights ("mixed
//! precision"), decided once per run from `[training] mixed_precision` / `--mixed-precision`,
//! the device and the model family, and named in the log, `metrics.jsonl` and the job report.
//!
//! `auto` means on for CUDA (tensor cores, and what the GPU targets were measured with), and on
//! the CPU only for a family whose bf16 training was shown to keep its accuracy, and only on a
//! CPU with bf16 kernels (AVX512-BF16, which every AMX CPU also has): elsewhere libtorch emulates
//! bf16 and it is slower than float32. The evidence for each family is in [`cpu_auto`].

use serde::Serialize;
use tch::{Device, Kind};

use crate::config::Toggle;
use crate::model::ModelFamily;

/// The precision a run trains in, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Precision {
    /// bf16 matrix products (float32 weights, optimizer state and saved file either way).
    pub bf16: bool,
    /// One line for the log and the report: what was chosen and why.
    pub why: &'static str,
}

impl Precision {
    /// The kind the network's matrix products run in.
    pub fn compute_kind(&self) -> Kind {
        if self.bf16 {
            Kind::BFloat16
        } else {
            Kind::Float
        }
    }
    /// `"bf16-mixed"` or `"fp32"`, as `metrics.jsonl` and the report spell it.
    pub fn label(&self) -> &'static str {
        if self.bf16 {
            "bf16-mixed"
        } else {
            "fp32"
        }
    }
}

/// True when this CPU has native bf16 dot-product instructions (AVX512-BF16; AMX CPUs have it
/// too), the kernels oneDNN uses for bf16 matrix products.
pub fn cpu_has_bf16_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `auto` turns bf16 on for `family` on a CPU with bf16 kernels, and the reason.
///
/// The evidence (`bench/precision_ap.sh`, 3 seeds per precision, 2 cores of a Xeon with
/// AVX512-BF16 and AMX, 2026-12-05; figures in bench/README.md):
/// - CPnet (full size, from scratch, 100 epochs, crowded synthetic cells, 4 held-out images):
///   bf16's mean AP@0.5/0.75/0.9 0.996/0.996/0.990 against float32's 0.993/0.993/0.988 (seed
///   range 0.988-1.000, 0.988-1.000, 0.979-0.992), final loss 0.153 against 0.156, 0.58 s per
///   step against 1.89. This is after the output layer was moved to float32: an earlier bf16
///   output had cost AP@0.75 on real nuclei (0.719 -> 0.667, issue 27), not re-measured here.
/// - Cellpose-SAM: see `CPSAM_CPU`.
fn cpu_auto(family: ModelFamily) -> (bool, &'static str) {
    match family {
        ModelFamily::Cpnet => (
            true,
            "auto: bf16 mixed precision, this CPU has bf16 kernels and bf16 kept CPnet's validation AP within float32's seed-to-seed spread",
        ),
        ModelFamily::Cpsam => CPSAM_CPU,
    }
}

/// Cellpose-SAM's `auto` on a CPU with bf16 kernels. The evidence (`bench/precision_ap.sh cpsam`,
/// tiny fixture fine-tuned 300 epochs on 6 synthetic images, 4 held-out, 3 seeds each): see
/// bench/README.md "Training precision"; at full size (ViT-L, `bench/cpsam_train.sh 2 2 full`)
/// bf16 steps took 0.57x float32's time with the same loss to 3 decimals.
const CPSAM_CPU: (bool, &str) = (
    true,
    "auto: bf16 mixed precision, this CPU has bf16 kernels and bf16 kept Cellpose-SAM's validation AP within float32's seed-to-seed spread",
);

/// Decides the precision of one run.
pub fn resolve(toggle: Toggle, device: Device, family: ModelFamily) -> Precision {
    match toggle {
        Toggle::On => Precision { bf16: true, why: "bf16 mixed precision asked for (mixed_precision = on)" },
        Toggle::Off => Precision { bf16: false, why: "float32 asked for (mixed_precision = off)" },
        Toggle::Auto if device.is_cuda() => {
            Precision { bf16: true, why: "auto: bf16 mixed precision on CUDA" }
        }
        Toggle::Auto if !cpu_has_bf16_kernels() => {
            Precision { bf16: false, why: "auto: float32, this CPU has no bf16 kernels (AVX512-BF16)" }
        }
        Toggle::Auto => {
            let (bf16, why) = cpu_auto(family);
            Precision { bf16, why }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_and_off_are_obeyed_everywhere_and_auto_is_bf16_on_cuda() {
        for fam in [ModelFamily::Cpnet, ModelFamily::Cpsam] {
            for dev in [Device::Cpu, Device::Cuda(0)] {
                assert!(resolve(Toggle::On, dev, fam).bf16);
                assert!(!resolve(Toggle::Off, dev, fam).bf16);
            }
            let cuda = resolve(Toggle::Auto, Device::Cuda(0), fam);
            assert!(cuda.bf16 && cuda.why.contains("CUDA"), "{cuda:?}");
            assert_eq!(cuda.compute_kind(), Kind::BFloat16);
        }
    }

    #[test]
    fn auto_on_the_cpu_follows_the_kernels_and_the_familys_evidence() {
        for fam in [ModelFamily::Cpnet, ModelFamily::Cpsam] {
            let p = resolve(Toggle::Auto, Device::Cpu, fam);
            if cpu_has_bf16_kernels() {
                assert_eq!(p.bf16, cpu_auto(fam).0, "{p:?}");
            } else {
                assert!(!p.bf16 && p.why.contains("no bf16 kernels"), "{p:?}");
            }
            assert_eq!(p.label(), if p.bf16 { "bf16-mixed" } else { "fp32" });
        }
    }
}
