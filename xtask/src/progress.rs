//! Progress display: one line per image and platform with its current stage. On a terminal
//! the lines update in place; otherwise each stage change is printed as a plain line, so CI
//! logs show the same milestones. With `--json`, stdout carries one JSON object per event
//! instead (the README lists them) and nothing else is drawn.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

/// Key of a line: an image and a platform, as indexes into the plan.
pub type Key = (usize, usize);

struct Line {
    bar: ProgressBar,
    image: String,
    platform: String,
}

pub struct Progress {
    multi: MultiProgress,
    lines: Mutex<HashMap<Key, Line>>,
    interactive: bool,
    verbose: bool,
    quiet: bool,
    json: bool,
}

impl Progress {
    pub fn new(verbose: bool, quiet: bool) -> Progress {
        Progress::with_json(verbose, quiet, false)
    }

    pub fn with_json(verbose: bool, quiet: bool, json: bool) -> Progress {
        let interactive = std::io::stderr().is_terminal() && !quiet && !json;
        let target = if interactive {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            lines: Mutex::new(HashMap::new()),
            interactive,
            verbose,
            quiet,
            json,
        }
    }

    pub fn verbose(&self) -> bool {
        self.verbose
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints one JSON event on stdout (with `--json` only).
    pub fn event(&self, reason: &str, fields: Value) {
        if !self.json {
            return;
        }
        let mut event = json!({ "reason": reason });
        if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
            event.extend(fields);
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{event}");
        let _ = out.flush();
    }

    /// Adds the line of `image` on `platform`.
    pub fn add(&self, key: Key, image: &str, platform: &str) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:32} {wide_msg}")
                .expect("the progress template is valid"),
        );
        bar.set_prefix(format!("{image} {platform}"));
        bar.set_message("waiting");
        if self.interactive {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        let line = Line { bar, image: image.to_owned(), platform: platform.to_owned() };
        self.lines.lock().expect("progress lock").insert(key, line);
    }

    /// Sets the stage shown on the line `key`.
    pub fn stage(&self, key: Key, stage: &str) {
        self.update(key, stage, false);
    }

    /// Marks the line `key` as finished with a final message.
    pub fn finish(&self, key: Key, message: &str) {
        self.update(key, message, true);
    }

    fn update(&self, key: Key, message: &str, last: bool) {
        let lines = self.lines.lock().expect("progress lock");
        let Some(line) = lines.get(&key) else { return };
        if last {
            line.bar.finish_with_message(message.to_owned());
        } else {
            line.bar.set_message(message.to_owned());
        }
        if self.json {
            let fields = json!({ "image": line.image, "platform": line.platform, "stage": message });
            self.event("stage", fields);
        } else if !self.interactive && !self.quiet {
            eprintln!("{}: {message}", line.bar.prefix());
        }
    }

    /// Prints a line above the progress lines, on stderr.
    pub fn println(&self, line: String) {
        if self.interactive {
            self.multi.suspend(|| eprintln!("{line}"));
        } else if !self.quiet || self.verbose {
            eprintln!("{line}");
        }
    }

    /// Returns a function that prints a line above the progress lines, for code that runs
    /// apart from this value (retries in the registry client).
    pub fn logger(&self) -> Arc<dyn Fn(String) + Send + Sync> {
        let multi = self.multi.clone();
        let interactive = self.interactive;
        Arc::new(move |line: String| {
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
            ProgressStyle::with_template(
                "{prefix:32} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec}",
            )
            .expect("the progress template is valid"),
        );
        bar.set_prefix(label.to_owned());
        bar
    }

    /// Removes every line, so a final table or error prints cleanly.
    pub fn clear(&self) {
        let lines = self.lines.lock().expect("progress lock");
        for line in lines.values() {
            line.bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}
