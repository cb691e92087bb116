//! Everything kiln prints goes through [`Printer`].

use std::collections::BTreeSet;
use std::io::Write;

use serde::Serialize;

use super::MessageFormat;
use crate::config::Sources;
use crate::config::diagnostic::{Diagnostic, render, to_json};
use crate::ops::CheckReport;

pub(super) struct Printer {
    format: MessageFormat,
    color: bool,
    quiet: bool,
    /// stderr is a terminal: progress may redraw a line.
    terminal: bool,
}

impl Printer {
    pub(super) fn new(format: MessageFormat, color: bool, quiet: bool) -> Printer {
        Printer {
            format,
            color,
            quiet,
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn stderr_line(&self, text: &str) {
        // Nothing sensible to do if stderr is gone.
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    pub(super) fn stdout(&self, text: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// A progress or summary line on stderr (not with --quiet).
    pub(super) fn status(&self, text: &str) {
        if !self.quiet {
            self.stderr_line(text);
        }
    }

    /// Whether --quiet was given.
    pub(super) fn quiet(&self) -> bool {
        self.quiet
    }

    /// Whether progress can be drawn live (a terminal, and not --quiet).
    pub(super) fn interactive(&self) -> bool {
        self.terminal && !self.quiet && self.format == MessageFormat::Human
    }

    pub(super) fn line(&self, text: &str) -> std::io::Result<()> {
        self.stdout(&format!("{text}\n"))
    }

    pub(super) fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        Ok(self.stdout(&text)?)
    }

    /// A spec as TOML, the way a person reads it.
    pub(super) fn toml<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let json = strip_nulls(serde_json::to_value(value)?);
        Ok(self.stdout(&toml::to_string_pretty(&json)?)?)
    }

    pub(super) fn diagnostic(&self, diagnostic: &Diagnostic, sources: &Sources) {
        match self.format {
            MessageFormat::Human => {
                self.stderr_line(&format!("{}\n", render(diagnostic, sources, self.color)))
            }
            MessageFormat::Json => {
                if let Ok(line) = serde_json::to_string(&to_json(diagnostic, sources)) {
                    self.stderr_line(&line);
                }
            }
        }
    }

    /// An error with no source location (no repo, unknown target).
    pub(super) fn fatal(&self, message: &str) {
        match self.format {
            MessageFormat::Human => {
                let prefix = if self.color {
                    "\x1b[1;31merror\x1b[0m"
                } else {
                    "error"
                };
                self.stderr_line(&format!("{prefix}: {message}"));
            }
            MessageFormat::Json => {
                let line = serde_json::json!({
                    "kind": "diagnostic", "version": 1, "level": "error", "code": "fatal",
                    "message": message, "file": null, "line": null, "column": null,
                    "labels": [], "notes": [], "help": null, "rendered": format!("error: {message}"),
                });
                self.stderr_line(&line.to_string());
            }
        }
    }

    pub(super) fn error_count(&self, count: usize, sources: &Sources, diagnostics: &[Diagnostic]) {
        if self.format == MessageFormat::Human {
            let files: BTreeSet<&str> = diagnostics
                .iter()
                .filter_map(|d| d.primary_span())
                .map(|s| sources.path(s.source))
                .collect();
            let plural = if count == 1 { "" } else { "s" };
            let file_plural = if files.len() == 1 { "" } else { "s" };
            self.stderr_line(&format!(
                "error: {count} problem{plural} in {} file{file_plural}",
                files.len()
            ));
        }
    }

    /// The summary of `kiln check`; `other_errors` were found outside the
    /// report (in kiln.toml) and already counted for humans.
    pub(super) fn check_summary(
        &self,
        report: &CheckReport,
        sources: &Sources,
        other_errors: usize,
    ) {
        match self.format {
            MessageFormat::Json => {
                let line = serde_json::json!({
                    "kind": "check", "version": 1, "ok": report.ok() && other_errors == 0,
                    "errors": report.diagnostics.len() + other_errors,
                    "hosts": report.hosts, "images": report.images,
                    "stacks": report.stacks, "modules": report.modules,
                });
                let _ = self.stdout(&format!("{line}\n"));
            }
            MessageFormat::Human => {
                if report.ok() && other_errors == 0 {
                    if !self.quiet {
                        let _ = self.stdout(&format!(
                            "ok: {} host{}, {} image{}, {} stack{}, {} module{}\n",
                            report.hosts,
                            plural(report.hosts),
                            report.images,
                            plural(report.images),
                            report.stacks,
                            plural(report.stacks),
                            report.modules,
                            plural(report.modules),
                        ));
                    }
                } else if !report.ok() {
                    self.error_count(report.diagnostics.len(), sources, &report.diagnostics);
                }
            }
        }
    }
}

impl Printer {
    /// Every problem in kiln.toml, then their count.
    pub(super) fn settings_error(&self, error: &crate::config::settings::SettingsError) {
        for diagnostic in &error.diagnostics {
            self.diagnostic(diagnostic, &error.sources);
        }
        self.error_count(error.diagnostics.len(), &error.sources, &error.diagnostics);
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// TOML has no null: drop unset options from the human view.
fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        J::Object(map) => J::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        J::Array(items) => J::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}
