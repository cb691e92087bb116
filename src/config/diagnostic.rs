//! Diagnostics: what went wrong, where, and what to do about it.
//!
//! A [`Diagnostic`] is plain data. It is rendered for people with
//! annotate-snippets (`file:line:col`, the source line, a caret and a label,
//! then notes and a hint) or as one JSON object for tools
//! (`--message-format json`).

use std::collections::BTreeSet;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Serialize;

use super::source::{Sources, Span};

/// A stable, kebab-case identifier for a kind of diagnostic, printed next to
/// the message (`error[unknown-option]`) and in JSON.
pub type Code = &'static str;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub text: String,
    pub primary: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub code: Code,
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
    /// A span whose text must never be shown (a secret value typed where a
    /// reference belongs). Rendering masks it with `*`.
    pub redact: Option<Span>,
}

impl Diagnostic {
    pub fn error(code: Code, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            labels: Vec::new(),
            notes: Vec::new(),
            help: None,
            redact: None,
        }
    }

    /// The main location, with what is wrong there.
    pub fn at(mut self, span: Span, text: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            text: text.into(),
            primary: true,
        });
        self
    }

    /// A second location that explains the first (the other definition).
    pub fn also(mut self, span: Span, text: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            text: text.into(),
            primary: false,
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn help_opt(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    pub fn redacting(mut self, span: Span) -> Self {
        self.redact = Some(span);
        self
    }

    pub fn primary_span(&self) -> Option<Span> {
        self.labels.iter().find(|l| l.primary).map(|l| l.span)
    }

    /// Sort key: file path, then position, then message — so output never
    /// depends on the order files were read or evaluated in.
    fn sort_key(&self, sources: &Sources) -> (String, usize, String) {
        match self.primary_span() {
            Some(span) => (
                sources.path(span.source).to_owned(),
                span.start,
                self.message.clone(),
            ),
            None => (String::new(), 0, self.message.clone()),
        }
    }
}

/// The diagnostics of one run, deduplicated and in a stable order.
#[derive(Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.items.push(diagnostic);
    }

    pub fn extend(&mut self, diagnostics: impl IntoIterator<Item = Diagnostic>) {
        self.items.extend(diagnostics);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Sort by location and drop exact duplicates (the same module error
    /// found while evaluating several hosts is reported once).
    pub fn finish(mut self, sources: &Sources) -> Vec<Diagnostic> {
        self.items
            .sort_by_cached_key(|diagnostic| diagnostic.sort_key(sources));
        let mut seen = BTreeSet::new();
        self.items.retain(|diagnostic| {
            let key = (
                diagnostic.code,
                diagnostic.message.clone(),
                diagnostic
                    .labels
                    .iter()
                    .map(|l| (l.span.source, l.span.start, l.span.end))
                    .collect::<Vec<_>>(),
            );
            seen.insert(key)
        });
        self.items
    }
}

/// Render one diagnostic for a terminal or a log.
pub fn render(diagnostic: &Diagnostic, sources: &Sources, color: bool) -> String {
    let mut title = Group::with_title(
        Level::ERROR
            .primary_title(diagnostic.message.as_str())
            .id(diagnostic.code),
    );
    // One snippet per file, the primary label's file first.
    let mut files: Vec<_> = Vec::new();
    for label in &diagnostic.labels {
        if !files.contains(&label.span.source) {
            files.push(label.span.source);
        }
    }
    let texts: Vec<String> = files
        .iter()
        .map(|&id| masked_text(sources, id, diagnostic.redact))
        .collect();
    for (&id, text) in files.iter().zip(&texts) {
        let mut snippet = Snippet::source(text.as_str()).path(sources.path(id));
        for label in diagnostic.labels.iter().filter(|l| l.span.source == id) {
            let kind = if label.primary {
                AnnotationKind::Primary
            } else {
                AnnotationKind::Context
            };
            snippet = snippet.annotation(
                kind.span(clamp(label.span, text))
                    .label(label.text.as_str()),
            );
        }
        title = title.element(snippet);
    }
    let mut report: Vec<Group<'_>> = vec![title];
    for note in &diagnostic.notes {
        report.push(Group::with_title(
            Level::NOTE.secondary_title(note.as_str()),
        ));
    }
    if let Some(help) = &diagnostic.help {
        report.push(Group::with_title(
            Level::HELP.secondary_title(help.as_str()),
        ));
    }
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    renderer.render(&report)
}

fn clamp(span: Span, text: &str) -> std::ops::Range<usize> {
    let end = span.end.min(text.len());
    span.start.min(end)..end
}

/// The file's text with the redacted span's bytes replaced by `*` (byte
/// length preserved so every other span stays valid).
fn masked_text(sources: &Sources, id: super::source::SourceId, redact: Option<Span>) -> String {
    let text = &sources.get(id).text;
    match redact {
        Some(span) if span.source == id && span.end <= text.len() => {
            let mut out = String::with_capacity(text.len());
            out.push_str(&text[..span.start]);
            // Keep line breaks so a multi-line secret stays on its lines.
            out.extend(
                text[span.range()]
                    .bytes()
                    .map(|b| if b == b'\n' { '\n' } else { '*' }),
            );
            out.push_str(&text[span.end..]);
            out
        }
        _ => text.clone(),
    }
}

/// One diagnostic as JSON (`--message-format json`). The shape is versioned
/// by `kind` and documented in `docs/src/reference/json.md`.
#[derive(Serialize)]
pub struct JsonDiagnostic<'a> {
    pub kind: &'static str,
    pub version: u32,
    pub level: &'static str,
    pub code: &'a str,
    pub message: &'a str,
    pub file: Option<&'a str>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub labels: Vec<JsonLabel<'a>>,
    pub notes: &'a [String],
    pub help: Option<&'a str>,
    pub rendered: String,
}

#[derive(Serialize)]
pub struct JsonLabel<'a> {
    pub file: &'a str,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub primary: bool,
    pub text: &'a str,
}

pub fn to_json<'a>(diagnostic: &'a Diagnostic, sources: &'a Sources) -> JsonDiagnostic<'a> {
    let labels: Vec<JsonLabel<'a>> = diagnostic
        .labels
        .iter()
        .map(|label| {
            let file = sources.get(label.span.source);
            let start = file.line_col(label.span.start);
            let end = file.line_col(label.span.end);
            JsonLabel {
                file: &file.path,
                line: start.line,
                column: start.column,
                end_line: end.line,
                end_column: end.column,
                primary: label.primary,
                text: &label.text,
            }
        })
        .collect();
    let primary = labels.iter().find(|l| l.primary);
    JsonDiagnostic {
        kind: "diagnostic",
        version: 1,
        level: "error",
        code: diagnostic.code,
        message: &diagnostic.message,
        file: primary.map(|l| l.file),
        line: primary.map(|l| l.line),
        column: primary.map(|l| l.column),
        labels,
        notes: &diagnostic.notes,
        help: diagnostic.help.as_deref(),
        rendered: render(diagnostic, sources, false),
    }
}
