//! Running child processes: output is captured and attached to the error on failure, so
//! parallel jobs never interleave with the progress display. With `-v` every command line is
//! printed before it runs and its output after it ends.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::progress::Progress;

/// A command to run: program, arguments, working directory and extra environment.
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    dir: Option<std::path::PathBuf>,
    env: Vec<(OsString, OsString)>,
}

impl Command {
    pub fn new(program: impl Into<OsString>) -> Command {
        Command { program: program.into(), args: Vec::new(), dir: None, env: Vec::new() }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Command {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Command {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn dir(mut self, dir: &Path) -> Command {
        self.dir = Some(dir.to_owned());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Command {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Formats the command as a shell line, with the environment it sets.
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = self
            .env
            .iter()
            .map(|(key, value)| format!("{}={}", key.to_string_lossy(), quote(value)))
            .collect();
        parts.push(quote(&self.program));
        parts.extend(self.args.iter().map(|arg| quote(arg)));
        parts.join(" ")
    }

    /// Runs the command to completion, with `jobserver` (when given) inherited by the child.
    /// Returns the combined stdout and stderr; a failure carries that output in its error.
    pub fn run(
        &self,
        progress: &Progress,
        jobserver: Option<&jobserver::Client>,
    ) -> Result<String> {
        if progress.verbose() {
            progress.println(format!("$ {}", self.display()));
        }
        let mut expression = duct::cmd(&self.program, &self.args);
        if let Some(dir) = &self.dir {
            expression = expression.dir(dir);
        }
        for (key, value) in &self.env {
            expression = expression.env(key, value);
        }
        if let Some(client) = jobserver {
            let client = client.clone();
            expression = expression.before_spawn(move |command| {
                client.configure_make(command);
                Ok(())
            });
        }
        let output = expression
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run()
            .with_context(|| format!("starting {}", self.program.to_string_lossy()))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if progress.verbose() && !text.is_empty() {
            progress.println(text.trim_end().to_owned());
        }
        if !output.status.success() {
            let program = Path::new(&self.program).file_name().unwrap_or(&self.program);
            let status = match output.status.code() {
                Some(code) => format!("exited with {code}"),
                None => "was killed by a signal".to_owned(),
            };
            bail!("{} {status}\n{}", program.to_string_lossy(), text.trim_end());
        }
        Ok(text)
    }
}

fn quote(value: &std::ffi::OsStr) -> String {
    let text = value.to_string_lossy();
    let plain = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
