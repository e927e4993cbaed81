//! The one table of the job's progress steps: where each step starts (as a fraction of the job)
//! and the title NimbusImage shows. Every stage reports through [`Step::report`], so no fraction
//! is written anywhere else and the steps cannot go out of order.

use super::events::Events;

/// A reported step of the job, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// intake: parameters, user, dataset, base model (reports nothing: a refused job shows
    /// only its error, as the reference worker's).
    Intake,
    /// fetch: the tagged annotations.
    LoadAnnotations,
    /// fetch: grouping by location, planning the crops.
    GroupAnnotations,
    /// fetch: image regions, rasterized labels.
    LoadImages,
    /// evaluate: the base model on the validation regions.
    ScoreBase,
    /// train: the epochs fill the range up to [`Step::Saving`].
    Training,
    /// upload: the model, then the report.
    Saving,
    Done,
}

impl Step {
    /// (fraction where the step starts, its title).
    const fn entry(self) -> (f64, &'static str) {
        match self {
            Step::Intake => (0.0, "Checking parameters"),
            Step::LoadAnnotations => (0.1, "Loading annotations"),
            Step::GroupAnnotations => (0.2, "Processing annotations"),
            Step::LoadImages => (0.3, "Loading training data"),
            Step::ScoreBase => (0.35, "Scoring base model"),
            Step::Training => (0.4, "Training model"),
            Step::Saving => (0.95, "Saving model"),
            Step::Done => (1.0, "Done"),
        }
    }

    pub const fn fraction(self) -> f64 {
        self.entry().0
    }

    pub const fn title(self) -> &'static str {
        self.entry().1
    }

    /// Reports the start of this step with a detail line.
    pub fn report(self, events: &Events, info: impl Into<String>) {
        events.progress(self.fraction(), self.title(), info);
    }
}

/// Progress after `done` of `n` epochs: from [`Step::Training`] up to, never past,
/// [`Step::Saving`] (0.4 + 0.55 * n / n is 0.9500000000000001 in floating point).
pub(crate) fn training_fraction(done: usize, n: usize) -> f64 {
    let (start, end) = (Step::Training.fraction(), Step::Saving.fraction());
    (start + (end - start) * done as f64 / n.max(1) as f64).min(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_start_in_order_within_zero_to_one() {
        let steps = [
            Step::Intake,
            Step::LoadAnnotations,
            Step::GroupAnnotations,
            Step::LoadImages,
            Step::ScoreBase,
            Step::Training,
            Step::Saving,
            Step::Done,
        ];
        assert!(steps.windows(2).all(|w| w[0] < w[1] && w[0].fraction() < w[1].fraction()));
        assert_eq!((steps[0].fraction(), steps[7].fraction()), (0.0, 1.0));
    }

    #[test]
    fn training_progress_rises_to_the_saving_step_and_never_past_it() {
        for n in [1, 3, 7, 10, 60, 100, 2000] {
            let f: Vec<f64> = (0..=n).map(|done| training_fraction(done, n)).collect();
            assert!(f.windows(2).all(|w| w[0] <= w[1]), "n={n}");
            assert_eq!((f[0], f[n]), (Step::Training.fraction(), Step::Saving.fraction()), "n={n}");
        }
    }
}
