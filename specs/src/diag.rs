//! Diagnostics: what is wrong with an input, where, and how to fix it.

use std::fmt;

/// A place in a source file: 1-based line and column, and which file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Index into the loader's list of files.
    pub file: u16,
    pub line: u32,
    pub col: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about an input. `Display` is written for the person who has to fix the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the user named it; `None` for findings about the whole input (e.g. flags).
    pub file: Option<String>,
    /// Line and column inside `file`; `None` when the finding has no single place.
    pub line_col: Option<(u32, u32)>,
    /// Field path such as `services.web.deploy.replicas`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            match self.line_col {
                Some((line, col)) => write!(f, "{file}:{line}:{col}: ")?,
                None => write!(f, "{file}: ")?,
            }
        }
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every finding of one load, in the order found. A load fails when any of them is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Where each field path was written. Recorded for every value while checking a file, but looked up only when
/// something is reported, so it is a plain list until the first lookup builds an index (a later entry for the same
/// path — from an override file — wins).
#[derive(Debug, Default)]
pub struct Spans {
    entries: Vec<(String, Pos)>,
    index: std::sync::OnceLock<std::collections::HashMap<String, Pos>>,
}

impl Spans {
    pub fn push(&mut self, path: &str, pos: Pos) {
        self.entries.push((path.to_string(), pos));
        self.index = std::sync::OnceLock::new();
    }

    pub fn extend(&mut self, other: Spans) {
        self.entries.extend(other.entries);
        self.index = std::sync::OnceLock::new();
    }

    pub fn get(&self, path: &str) -> Option<Pos> {
        self.index
            .get_or_init(|| self.entries.iter().cloned().collect())
            .get(path)
            .copied()
    }
}
