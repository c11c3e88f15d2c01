//! Diagnostics: what is wrong with a fleet, and where. Every problem the
//! loader finds becomes one [`Diagnostic`] naming the file, the line and the
//! field; the loader collects them all before giving up, so an SRE fixes a
//! broken fleet in one pass instead of one error per run.

use std::fmt;
use std::path::PathBuf;

use marked_yaml::Span;
use serde::Serialize;

/// One problem in one place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file, relative to the fleet directory (`inventory/fra.yaml`).
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// The field, as a path from the top of the file (`machines[2].mac`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// Collects diagnostics for a set of files, identified by their index in
/// [`Diagnostics::files`] (the same index marked_yaml stores in its spans).
#[derive(Default)]
pub struct Diagnostics {
    files: Vec<PathBuf>,
    found: Vec<(usize, Diagnostic)>,
}

impl Diagnostics {
    /// Registers a file and returns its id.
    pub fn add_file(&mut self, path: PathBuf) -> usize {
        self.files.push(path);
        self.files.len() - 1
    }

    pub fn file(&self, id: usize) -> &PathBuf {
        &self.files[id]
    }

    /// Records a problem at `span` (or at the top of `file` if the span
    /// carries no position).
    pub fn at(
        &mut self,
        file: usize,
        span: &Span,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = span
            .start()
            .map(|m| (m.line(), m.column()))
            .unwrap_or((0, 0));
        self.push(file, line, column, field.into(), message.into());
    }

    pub fn push(
        &mut self,
        file: usize,
        line: usize,
        column: usize,
        field: String,
        message: String,
    ) {
        let diagnostic = Diagnostic {
            file: self.files[file].clone(),
            line,
            column,
            field,
            message,
        };
        self.found.push((file, diagnostic));
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The diagnostics in file order, then line order.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.found
            .sort_by(|(fa, a), (fb, b)| (fa, a.line, a.column).cmp(&(fb, b.line, b.column)));
        self.found.dedup_by(|(_, a), (_, b)| a == b);
        self.found.into_iter().map(|(_, d)| d).collect()
    }
}
