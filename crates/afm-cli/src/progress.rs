//! The CLI's progress bars: one look for every verb, and the bar that
//! renders a training run's [`afm_train::Progress`]. The libraries draw
//! nothing; they report through callbacks that these bars render.

use indicatif::{ProgressBar, ProgressStyle};

/// The style of every counted bar: label, bar, count, time and status.
pub fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// The same bar counting bytes (reading input files).
pub fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// A bar of `len` steps labelled `label`.
pub fn bar(len: u64, label: &str) -> ProgressBar {
    let b = ProgressBar::new(len).with_style(style());
    b.set_prefix(label.to_string());
    b
}

/// [`bar`], or a hidden one when `show` is false.
pub fn bar_if(show: bool, len: u64, label: &str) -> ProgressBar {
    if show {
        bar(len, label)
    } else {
        ProgressBar::hidden()
    }
}

/// A training run's progress as a bar (steps, loss and tokens/s), with the
/// evaluation lines printed above it; lines only when hidden.
pub struct TrainBar(ProgressBar);

impl TrainBar {
    pub fn new(show: bool, label: &str) -> Self {
        Self(bar_if(show, 0, label))
    }
}

impl afm_train::Progress for TrainBar {
    fn start(&mut self, step: usize, total: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(step as u64);
    }

    fn step(&mut self, step: usize, status: Option<&str>) {
        self.0.set_position(step as u64);
        if let Some(s) = status {
            self.0.set_message(s.to_string());
        }
    }

    fn line(&mut self, line: &str) {
        if self.0.is_hidden() {
            eprintln!("{line}");
        } else {
            self.0.println(line);
        }
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}
