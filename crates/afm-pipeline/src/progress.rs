//! How the pipeline reports what it does: a callback, not a terminal.
//!
//! The library never draws bars or prints; every stage transition, unit of
//! work and fact goes to a [`Progress`] as an [`Event`]. The CLI renders
//! them as log lines and progress bars; tests record them.

use std::path::Path;

/// What happens to a stage when the pipeline reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageStatus {
    /// A complete run with the same fingerprint is recorded: not run.
    Skipped,
    /// An interrupted run with the same fingerprint: runs again over what
    /// is there (training picks up its checkpoints).
    Resuming,
    /// The recorded run had another fingerprint (or an unreadable summary):
    /// the directory is emptied and the stage runs.
    InputsChanged,
    /// The directory holds outputs without a marker: emptied, then run.
    UnknownOutputs,
    /// Nothing there yet: runs.
    Fresh,
}

/// One thing the pipeline reports.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Stage `stage` (outputs in `dir`) is reached.
    Stage {
        stage: &'a str,
        dir: &'a Path,
        status: StageStatus,
    },
    /// Stage `stage` finished its work in `wall_s` seconds.
    StageDone { stage: &'a str, wall_s: f64 },
    /// Work inside a stage: `done` of `total` units. `task` names the work
    /// (one progress bar per name); `step` is its current phase ("" = none).
    /// `total` may grow while the work runs.
    Work {
        task: &'a str,
        step: &'a str,
        done: u64,
        total: u64,
    },
    /// The work `task` reported through [`Event::Work`] is over.
    WorkDone { task: &'a str },
    /// A fact worth a log line ("trajectories: ...").
    Note(&'a str),
}

/// Receives the pipeline's [`Event`]s; called from worker threads too.
pub trait Progress: Sync {
    fn event(&self, e: Event<'_>);
}

impl<F: Fn(Event<'_>) + Sync> Progress for F {
    fn event(&self, e: Event<'_>) {
        self(e)
    }
}

/// A [`Progress`] that drops every event.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event<'_>) {}
}

/// `n` units of `task`, reported one by one, then done.
pub(crate) struct Counter<'a> {
    progress: &'a dyn Progress,
    task: &'a str,
    done: u64,
    total: u64,
}

impl<'a> Counter<'a> {
    pub(crate) fn new(progress: &'a dyn Progress, task: &'a str, total: u64) -> Self {
        progress.event(Event::Work {
            task,
            step: "",
            done: 0,
            total,
        });
        Counter {
            progress,
            task,
            done: 0,
            total,
        }
    }

    /// One more unit done, in phase `step`.
    pub(crate) fn inc(&mut self, step: &str) {
        self.done += 1;
        self.progress.event(Event::Work {
            task: self.task,
            step,
            done: self.done,
            total: self.total,
        });
    }
}

impl Drop for Counter<'_> {
    fn drop(&mut self) {
        self.progress.event(Event::WorkDone { task: self.task });
    }
}
