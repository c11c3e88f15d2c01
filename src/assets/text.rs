//! The cache's records as `assets fetch`, `assets verify` and `assets
//! list` print them, one line each (a release with a line per file below
//! it).

use std::fmt;

use super::extensions::{CachedExtension, ExtensionRecheck};
use super::{Manifest, Recheck, Release};

/// `<flavor> <channel> <version>`.
impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flavor = self.flavor.as_str();
        write!(f, "{flavor} {} {}", self.channel, self.version)
    }
}

/// `ok    <flavor>/<version>/<file>`, or `FAIL  …: <problem>`.
impl fmt::Display for Recheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (flavor, version, name) = (&self.flavor, &self.version, &self.name);
        match &self.problem {
            None => write!(f, "ok    {flavor}/{version}/{name}"),
            Some(p) => write!(f, "FAIL  {flavor}/{version}/{name}: {p}"),
        }
    }
}

/// `ok    <path> (matches <pin>)`, or `FAIL  <path>: <problem> (<pin>)`.
impl fmt::Display for ExtensionRecheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => write!(f, "ok    {} (matches {})", self.path, self.against),
            Some(p) => write!(f, "FAIL  {}: {p} ({})", self.path, self.against),
        }
    }
}

/// The release, then each file with its size and digest.
impl fmt::Display for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {} ({})", self.flavor, self.version, self.channel)?;
        for file in &self.files {
            writeln!(
                f,
                "  {:<48} {:>12} bytes  sha512 {}…",
                file.name,
                file.size,
                &file.sha512[..16.min(file.sha512.len())]
            )?;
        }
        Ok(())
    }
}

/// The image's name, version, size and digest, and whether it is pinned.
impl fmt::Display for CachedExtension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  {:<20} {:<27} {:>12} bytes  sha512 {}…  {}",
            self.name,
            self.version,
            self.size,
            &self.sha512[..16.min(self.sha512.len())],
            if self.pinned { "pinned" } else { "NOT pinned" }
        )
    }
}
