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
