//! Progress display: one line per image and platform with its current stage. On a terminal
//! the lines update in place; otherwise each stage change is printed as a plain line, so CI
//! logs show the same milestones.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
    bars: Mutex<HashMap<(usize, usize), ProgressBar>>,
    interactive: bool,
    verbose: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(verbose: bool, quiet: bool) -> Progress {
        let interactive = std::io::stderr().is_terminal() && !quiet;
        let target = if interactive {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            interactive,
            verbose,
            quiet,
        }
    }

    pub fn verbose(&self) -> bool {
        self.verbose
    }

    /// Adds the line of an image on a platform, labelled `label`.
    pub fn add(&self, key: (usize, usize), label: &str) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:32} {wide_msg}")
                .expect("the progress template is valid"),
        );
        bar.set_prefix(label.to_owned());
        bar.set_message("waiting");
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars.lock().expect("progress lock").insert(key, bar);
    }

    /// Sets the stage shown on the line `key`.
    pub fn stage(&self, key: (usize, usize), stage: &str) {
        let bars = self.bars.lock().expect("progress lock");
        let Some(bar) = bars.get(&key) else { return };
        bar.set_message(stage.to_owned());
        if !self.interactive && !self.quiet {
            eprintln!("{}: {stage}", bar.prefix());
        }
    }

    /// Marks the line `key` as finished with a final message.
    pub fn finish(&self, key: (usize, usize), message: &str) {
        let bars = self.bars.lock().expect("progress lock");
        let Some(bar) = bars.get(&key) else { return };
        bar.finish_with_message(message.to_owned());
        if !self.interactive && !self.quiet {
            eprintln!("{}: {message}", bar.prefix());
        }
    }

    /// Prints a line above the progress lines.
    pub fn println(&self, line: String) {
        if self.interactive {
            self.multi.suspend(|| eprintln!("{line}"));
        } else if !self.quiet || self.verbose {
            eprintln!("{line}");
        }
    }

    /// Returns a function that prints a line above the progress lines, for code that runs
    /// apart from this value (retries in the registry client).
    pub fn logger(&self) -> std::sync::Arc<dyn Fn(String) + Send + Sync> {
        let multi = self.multi.clone();
        let interactive = self.interactive;
        std::sync::Arc::new(move |line: String| {
            if interactive {
                multi.suspend(|| eprintln!("{line}"));
            } else {
                eprintln!("{line}");
            }
        })
    }

    /// Adds a byte-count bar of `total` bytes, labelled `label`.
    pub fn bytes_bar(&self, label: &str, total: u64) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template("{prefix:32} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec}")
                .expect("the progress template is valid"),
        );
        bar.set_prefix(label.to_owned());
        bar
    }

    /// Removes every line, so a final table or error prints cleanly.
    pub fn clear(&self) {
        let bars = self.bars.lock().expect("progress lock");
        for bar in bars.values() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}
