//! Claiming a job when several workers poll one Girder.
//!
//! Girder has no compare-and-set on a job's status: two workers that both read QUEUED can both
//! move it to RUNNING and both believe they own it. What Girder does give is an ordered log:
//! `PUT /job/{id}?log=...` appends with MongoDB's `$push`, so every appended line has one place
//! in one sequence that every later reader sees in the same order. The protocol builds ownership
//! on that sequence:
//!
//! * A job is worked in *rounds*. A worker that finds a job takeable (QUEUED; or RUNNING whose
//!   lease it has seen expire; or RUNNING whose current round was released) reads the log, takes
//!   `round = highest round in the log + 1`, appends `claim round=<round> worker=<id>
//!   nonce=<n>`, reads the log again, and owns the job only if its line is the **first claim
//!   line of that round** and no claim line of a higher round exists.
//! * Safety (at most one owner per round): every claimant reads the log after its own append,
//!   so it sees every line appended before its own, in particular the round's first claim line.
//!   Only the author of that first line sees itself first; everyone else sees someone before
//!   them and backs off. Two workers that computed different rounds cannot both be current: the
//!   higher round is only computed by a worker that read the lower round's claim, which needs
//!   the lower round's lease to have expired (or been released).
//! * Takeover: the owner heartbeats (progress updates, which change the job's `updated`). A
//!   worker that sees `updated` unchanged for `lease_s` of its own monotonic clock (no clock
//!   skew involved) claims the next round. An old owner that comes back finds a higher round in
//!   the log at its next heartbeat and abandons the job without uploading.
//! * Hand-back (SIGTERM): the owner appends `release round=<round>`; the job stays RUNNING (a
//!   plain Girder job cannot go back to QUEUED) and is takeable at once.
//!
//! * Poison pills: right after winning a round, before loading anything, the owner appends
//!   `attempt round=<round> worker=<id>` in its own `PUT` (Girder stores one `PUT` as one log
//!   entry). A round that has an attempt but neither a release nor a saved checkpoint before the
//!   next attempt was a worker that died without a word. A job whose last [`MAX_CRASHED`]
//!   attempts all died that way is ended ERROR instead of being run again, so a job that crashes
//!   workers (a crafted file, a libtorch abort) cannot take down every worker on the queue.
//!
//! Log entries may hold several lines (`message\nrelease ...`): every line is read.
//!
//! [`tests`] below check the rule against every interleaving of a few workers' read/append
//! steps; `tests/it/worker_queue.rs` runs it with real processes against the mock Girder.

use std::fmt;

/// Prefix of every protocol line in a job log (other lines are the job's own messages).
pub(crate) const PREFIX: &str = "[cellpose-train-worker]";

/// How many attempts in a row may die without progress before the job ends ERROR.
pub(crate) const MAX_CRASHED: usize = 2;

/// Start of the log line the worker writes when a checkpoint is stored: the progress that makes a
/// died attempt not count as a crash loop (the next attempt resumes from it).
pub(crate) const CHECKPOINT_SAVED: &str = "Checkpoint saved after epoch";

/// The log line for a stored checkpoint, built on [`CHECKPOINT_SAVED`] so the text written and
/// the text looked for cannot drift apart.
pub(crate) fn checkpoint_saved_line(epoch: usize, step: usize) -> String {
    let label = crate::job::events::checkpoint_label(epoch, step);
    let rest = label.strip_prefix("epoch").unwrap_or(&label);
    format!("{CHECKPOINT_SAVED}{rest}.")
}

/// A protocol line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Claim { round: u64, worker: String, nonce: String },
    Release { round: u64, worker: String, epoch: Option<usize> },
    Attempt { round: u64, worker: String },
}

/// Every line of every log entry (one `PUT` is one entry and may hold several lines).
fn log_lines<S: AsRef<str>>(log: &[S]) -> impl Iterator<Item = &str> {
    log.iter().flat_map(|e| e.as_ref().lines())
}

/// An attempt that ended without a word: its round and worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiedAttempt {
    pub round: u64,
    pub worker: String,
}

/// The most recent attempts, oldest first, that died without a release and without saving a
/// checkpoint, counting back from the last attempt in the log until one that made progress.
pub(crate) fn died_attempts<S: AsRef<str>>(log: &[S]) -> Vec<DiedAttempt> {
    // (attempt, released or progressed)
    let mut attempts: Vec<(DiedAttempt, bool)> = Vec::new();
    for line in log_lines(log) {
        if line.trim_start().starts_with(CHECKPOINT_SAVED) {
            if let Some(last) = attempts.last_mut() {
                last.1 = true;
            }
            continue;
        }
        match Line::parse(line) {
            // a retried PUT can write the same attempt twice: one round is one attempt
            Some(Line::Attempt { round, .. }) if attempts.last().is_some_and(|(a, _)| a.round == round) => {}
            Some(Line::Attempt { round, worker }) => attempts.push((DiedAttempt { round, worker }, false)),
            Some(Line::Release { round, .. }) => {
                attempts.iter_mut().filter(|(a, _)| a.round == round).for_each(|(_, ok)| *ok = true)
            }
            _ => {}
        }
    }
    let died: Vec<DiedAttempt> =
        attempts.into_iter().rev().take_while(|(_, ok)| !ok).map(|(a, _)| a).collect();
    died.into_iter().rev().collect()
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Claim { round, worker, nonce } => {
                write!(f, "{PREFIX} claim round={round} worker={worker} nonce={nonce}")
            }
            Line::Release { round, worker, epoch } => {
                write!(f, "{PREFIX} release round={round} worker={worker}")?;
                if let Some(e) = epoch {
                    write!(f, " checkpoint_epoch={e}")?;
                }
                Ok(())
            }
            Line::Attempt { round, worker } => write!(f, "{PREFIX} attempt round={round} worker={worker}"),
        }
    }
}

impl Line {
    /// Parses one line of a log entry; `None` for anything that is not a whole protocol line
    /// (the prefix must start the line: a marker quoted inside a message never counts).
    pub fn parse(line: &str) -> Option<Line> {
        let rest = line.trim_end().strip_prefix(PREFIX)?.trim();
        let mut words = rest.split_whitespace();
        let kind = words.next()?;
        let mut round = None;
        let mut worker = None;
        let mut nonce = None;
        let mut epoch = None;
        for w in words {
            let (k, v) = w.split_once('=')?;
            match k {
                "round" => round = v.parse().ok(),
                "worker" => worker = Some(v.to_string()),
                "nonce" => nonce = Some(v.to_string()),
                "checkpoint_epoch" => epoch = v.parse().ok(),
                _ => {}
            }
        }
        match kind {
            "claim" => Some(Line::Claim { round: round?, worker: worker?, nonce: nonce? }),
            "release" => Some(Line::Release { round: round?, worker: worker?, epoch }),
            "attempt" => Some(Line::Attempt { round: round?, worker: worker? }),
            _ => None,
        }
    }

    pub fn round(&self) -> u64 {
        match self {
            Line::Claim { round, .. } | Line::Release { round, .. } | Line::Attempt { round, .. } => *round,
        }
    }
}

/// What the protocol lines of a log say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogState {
    /// Highest round claimed or released so far (0: never claimed).
    pub round: u64,
    /// The owner of `round`: the author and nonce of its first claim line.
    pub owner: Option<(String, String)>,
    /// Whether `round` was released (handed back).
    pub released: bool,
}

impl LogState {
    /// Reads every line of every entry: Girder stores one `PUT /job?log=` as one entry however
    /// many lines it holds, so a marker may share an entry with other text.
    pub fn of<S: AsRef<str>>(log: &[S]) -> LogState {
        let mut st = LogState::default();
        for line in log_lines(log).filter_map(Line::parse) {
            match line {
                Line::Claim { round, worker, nonce } => {
                    if round > st.round {
                        st = LogState { round, owner: Some((worker, nonce)), released: false };
                    }
                    // a later claim of the same round lost; ignore it
                }
                Line::Release { round, .. } => {
                    if round == st.round {
                        st.released = true;
                    }
                }
                Line::Attempt { .. } => {}
            }
        }
        st
    }

    /// The round a new claim must name.
    pub(crate) fn next_round(&self) -> u64 {
        self.round + 1
    }

    /// Whether the claim (`round`, `worker`, `nonce`) owns the job in this log.
    pub(crate) fn owned_by(&self, round: u64, worker: &str, nonce: &str) -> bool {
        self.round == round
            && !self.released
            && self.owner.as_ref().is_some_and(|(w, n)| w == worker && n == nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let c = Line::Claim { round: 3, worker: "gpu-1.4242".into(), nonce: "ab12".into() };
        assert_eq!(Line::parse(&c.to_string()), Some(c));
        let r = Line::Release { round: 3, worker: "w".into(), epoch: Some(40) };
        assert_eq!(Line::parse(&r.to_string()), Some(r));
        assert_eq!(Line::parse("{\"progress\": 0.4}"), None);
        assert_eq!(Line::parse(&format!("{PREFIX} claim round=x worker=a nonce=b")), None);
    }

    #[test]
    fn a_marker_line_counts_anywhere_in_a_multi_line_entry_but_never_inside_a_line() {
        let claim = Line::Claim { round: 1, worker: "a".into(), nonce: "1".into() }.to_string();
        let release = Line::Release { round: 1, worker: "a".into(), epoch: Some(3) }.to_string();
        // one PUT holding a message and the release line: one entry on a real Girder
        let log = [format!("{claim}\n"), format!("Worker a shut down.\n{release}\n")];
        assert!(LogState::of(&log).released);
        // the same words quoted inside a message line (a user's tag, model name, error text)
        let quoted = [format!("{claim}\n"), format!("Error: bad tag `{release}`\n"), format!(" {release}")];
        let st = LogState::of(&quoted);
        assert!(!st.released && st.owned_by(1, "a", "1"), "{st:?}");
        // a marker line followed by anything else on the line is not a marker
        assert_eq!(Line::parse(&format!("{release} and more")), None);
    }

    #[test]
    fn entries_with_several_lines_are_read_line_by_line() {
        let release = Line::Release { round: 1, worker: "a".into(), epoch: None };
        let log = [
            Line::Claim { round: 1, worker: "a".into(), nonce: "1".into() }.to_string(),
            format!("Worker a shut down; handed back.\n{release}\n"),
        ];
        assert!(LogState::of(&log).released);
    }

    fn attempt(round: u64, worker: &str) -> String {
        Line::Attempt { round, worker: worker.into() }.to_string()
    }

    #[test]
    fn two_attempts_that_died_without_progress_are_a_poison_pill() {
        let a = attempt(1, "a");
        assert_eq!(Line::parse(&a), Some(Line::Attempt { round: 1, worker: "a".into() }));
        assert!(died_attempts::<String>(&[]).is_empty());
        let log = vec![a.clone(), "{\"progress\": 0.1}".into(), a.clone(), attempt(2, "b")];
        let died = died_attempts(&log);
        assert_eq!(died.len(), MAX_CRASHED);
        assert_eq!((died[0].round, died[1].worker.as_str()), (1, "b"));
    }

    #[test]
    fn a_checkpoint_or_a_release_between_attempts_is_progress() {
        assert_eq!(checkpoint_saved_line(2, 0), "Checkpoint saved after epoch 2.");
        assert_eq!(checkpoint_saved_line(2, 3), "Checkpoint saved after epoch 2 and 3 steps of epoch 3.");
        let log = vec![attempt(1, "a"), checkpoint_saved_line(2, 0), attempt(2, "b")];
        assert_eq!(died_attempts(&log), vec![DiedAttempt { round: 2, worker: "b".into() }]);
        let release = Line::Release { round: 1, worker: "a".into(), epoch: None };
        let log = vec![attempt(1, "a"), format!("Worker a shut down.\n{release}\n"), attempt(2, "b")];
        assert_eq!(died_attempts(&log).len(), 1);
        // progress long ago does not excuse two deaths since
        let log = vec![attempt(1, "a"), format!("{CHECKPOINT_SAVED} 2."), attempt(2, "b"), attempt(3, "c")];
        assert_eq!(died_attempts(&log).len(), 2);
    }

    #[test]
    fn first_claim_of_the_highest_round_owns() {
        let log = [
            Line::Claim { round: 1, worker: "a".into(), nonce: "1".into() }.to_string(),
            Line::Claim { round: 1, worker: "b".into(), nonce: "2".into() }.to_string(),
            "some job message".to_string(),
        ];
        let st = LogState::of(&log);
        assert!(st.owned_by(1, "a", "1"));
        assert!(!st.owned_by(1, "b", "2"));
        assert_eq!(st.next_round(), 2);

        let mut log = log.to_vec();
        log.push(Line::Release { round: 1, worker: "a".into(), epoch: Some(3) }.to_string());
        let st = LogState::of(&log);
        assert!(st.released && !st.owned_by(1, "a", "1"));
        log.push(Line::Claim { round: 2, worker: "b".into(), nonce: "3".into() }.to_string());
        assert!(LogState::of(&log).owned_by(2, "b", "3"));
    }

    /// One worker's steps: read the log (to pick a round), append its claim, read again and
    /// decide. Each read sees the log as it is at that moment.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Pc {
        ReadRound,
        Append,
        Decide,
        Done,
    }

    /// Explores every interleaving of `n` workers claiming the same job (all starting from the
    /// same log) and checks that exactly one of them ends up owning it.
    fn explore(
        log: &mut Vec<String>,
        pcs: &mut Vec<Pc>,
        rounds: &mut Vec<u64>,
        winners: &mut Vec<usize>,
        checked: &mut usize,
    ) {
        if pcs.iter().all(|p| *p == Pc::Done) {
            assert_eq!(winners.len(), 1, "winners {winners:?} for log {log:?}");
            *checked += 1;
            return;
        }
        for w in 0..pcs.len() {
            let (saved_log, saved_pc, saved_round, saved_winners) =
                (log.len(), pcs[w], rounds[w], winners.len());
            match pcs[w] {
                Pc::ReadRound => {
                    let st = LogState::of(log);
                    // a worker that reads a live, unreleased claim does not claim (its lease
                    // observation has just started); one that finds none, a released round or
                    // the dead worker's expired lease claims the next round
                    let live = st.owner.as_ref().is_some_and(|(w, _)| w != "dead");
                    if live && !st.released {
                        pcs[w] = Pc::Done;
                    } else {
                        rounds[w] = st.next_round();
                        pcs[w] = Pc::Append;
                    }
                }
                Pc::Append => {
                    log.push(
                        Line::Claim { round: rounds[w], worker: format!("w{w}"), nonce: w.to_string() }
                            .to_string(),
                    );
                    pcs[w] = Pc::Decide;
                }
                Pc::Decide => {
                    if LogState::of(log).owned_by(rounds[w], &format!("w{w}"), &w.to_string()) {
                        winners.push(w);
                    }
                    pcs[w] = Pc::Done;
                }
                Pc::Done => continue,
            }
            explore(log, pcs, rounds, winners, checked);
            log.truncate(saved_log);
            pcs[w] = saved_pc;
            rounds[w] = saved_round;
            winners.truncate(saved_winners);
        }
    }

    #[test]
    fn every_interleaving_of_three_workers_has_exactly_one_owner() {
        let dead = Line::Claim { round: 1, worker: "dead".into(), nonce: "x".into() }.to_string();
        let released = Line::Release { round: 1, worker: "dead".into(), epoch: Some(2) }.to_string();
        // a fresh QUEUED job, a job whose owner died (lease expired), a job handed back
        for start in [vec![], vec![dead.clone()], vec![dead, released]] {
            let mut checked = 0;
            let mut log = start.clone();
            explore(&mut log, &mut vec![Pc::ReadRound; 3], &mut vec![0; 3], &mut Vec::new(), &mut checked);
            // 3 workers x 3 steps: 9!/(3!^3) = 1680 full interleavings, fewer when some stop early
            assert!(checked > 100, "only {checked} interleavings explored");
        }
    }
}
