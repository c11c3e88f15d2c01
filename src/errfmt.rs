//! One-line error messages with their causes. Many libraries' `Display`
//! names only the outermost layer (reqwest: "error sending request"; Tera:
//! "Failed to render 'x'"), and the useful part is in `source()`.

/// `error: cause: cause of cause`, with repeated layers said once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = inner.source();
    }
    parts.join(": ")
}

/// Where a YAML document failed to load, and why, for a `file:line`
/// diagnostic. The scanner's message names the problem, never the text
/// around it, so an inline secret is not echoed.
pub struct YamlProblem {
    pub line: usize,
    pub column: usize,
    /// The duplicated key, or empty.
    pub field: String,
    pub message: String,
}

/// Explains a `marked_yaml` load error with its position.
pub fn yaml_problem(e: &marked_yaml::LoadError) -> YamlProblem {
    use marked_yaml::LoadError::*;
    let (marker, message) = match e {
        TopLevelMustBeMapping(m) => (Some(*m), "the file must be a YAML mapping".to_string()),
        TopLevelMustBeSequence(m) => (Some(*m), "the file must be a YAML list".to_string()),
        UnexpectedAnchor(m) => (Some(*m), "YAML anchors are not supported".to_string()),
        MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be plain values".to_string()),
        UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".to_string()),
        ScanError(m, err) => (Some(*m), format!("invalid YAML: {}", err.info())),
        DuplicateKey(inner) => {
            let first = inner.prev_key.span().start().map(|m| m.line()).unwrap_or(0);
            (
                inner.key.span().start().copied(),
                format!(
                    "duplicate key `{}` (first at line {first})",
                    inner.key.as_str()
                ),
            )
        }
        #[allow(unreachable_patterns)]
        _ => (None, "invalid YAML".to_string()),
    };
    let (line, column) = marker.map(|m| (m.line(), m.column())).unwrap_or((0, 0));
    let field = match e {
        DuplicateKey(inner) => inner.key.as_str().to_string(),
        _ => String::new(),
    };
    YamlProblem {
        line,
        column,
        field,
        message,
    }
}
