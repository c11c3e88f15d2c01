//! The grammars of the fleet's free-text values that templates put into
//! what machines execute: iPXE scripts, systemd units, dnsmasq's config,
//! etcd's environment, static-pod manifests. Each grammar admits nothing
//! that can leave the place a template puts the value: no line break, no
//! quote, no `#`, `$`, `%`, `;`, `,`, `{`, `}` or backslash, so a value
//! cannot end an iPXE or unit line, start a dnsmasq directive, expand as
//! an iPXE setting or a systemd specifier, or split a dnsmasq value.
//! (Names, addresses, CIDRs and MACs have grammars of their own, in
//! [`super::types`]; URLs are checked here after they parse.)
//!
//! To add a free-text field that templates see: give it a grammar here
//! and a case in `tests/it/injection.rs`.

use url::Url;

use super::types::OsFlavor;

/// The channels (Flatcar) and streams (Fedora CoreOS) each OS publishes;
/// the lab's image reads Flatcar's.
pub fn channel(flavor: Option<OsFlavor>, s: &str) -> Result<String, String> {
    let known: &[&str] = match flavor {
        Some(OsFlavor::Fcos) => &["stable", "testing", "next"],
        _ => &["stable", "beta", "alpha", "lts"],
    };
    if known.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown channel {:?}: one of {}",
            shown(s),
            known.join(", ")
        ))
    }
}

/// An OS or Kubernetes version: letters, digits and `. _ + ~ -`, up to 64,
/// starting with a letter or digit (`4081.2.0`, `41.20241027.3.0`,
/// `bookworm`, `v1.31.2`).
pub fn version(s: &str) -> Result<String, String> {
    let ok = s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid version {:?}: letters, digits and . _ + ~ - only, starting with a letter or digit",
            shown(s)
        ))
    }
}

/// An exact OS version, as docs/fleet.md promises: digits and dots
/// (Flatcar `4081.2.0`, Fedora CoreOS `40.20240416.3.0`), never a channel
/// or `latest`. The lab's version is its Debian suite (`bookworm`).
pub fn exact_os_version(flavor: Option<OsFlavor>, s: &str) -> Result<String, String> {
    let v = version(s)?;
    if flavor == Some(OsFlavor::Lab) {
        return Ok(v);
    }
    let exact = s.split('.').count() >= 2
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if exact {
        Ok(v)
    } else {
        Err(format!(
            "{:?} is not an exact version: give one release's number (e.g. 4081.2.0), not a channel or `latest`",
            shown(s)
        ))
    }
}

/// An exact Kubernetes version: `v1.31.2` (a pre-release suffix allowed).
pub fn exact_kubernetes_version(s: &str) -> Result<String, String> {
    let v = version(s)?;
    let core = s.strip_prefix('v').unwrap_or(s);
    let core = core.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        Ok(v)
    } else {
        Err(format!(
            "{:?} is not an exact Kubernetes version: MAJOR.MINOR.PATCH, e.g. v1.31.2",
            shown(s)
        ))
    }
}

/// A label people read (`datacenter: FRA-3`): one line, up to 64
/// characters, letters (any script), digits, spaces and `. _ - / ( ) :`.
pub fn label(s: &str) -> Result<String, String> {
    let ok = !s.trim().is_empty()
        && s.chars().count() <= 64
        && s.chars()
            .all(|c| c.is_alphanumeric() || " ._-/():".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid label {:?}: one line of letters, digits, spaces and . _ - / ( ) : (up to 64)",
            shown(s)
        ))
    }
}

/// A block device path: `/dev/` and letters, digits and `/ _ . : + -`
/// (`/dev/sda`, `/dev/disk/by-id/nvme-SAMSUNG_MZ1L2_S6E1:0`).
pub fn device(s: &str) -> Result<String, String> {
    let ok = s.len() > "/dev/".len()
        && s.len() <= 255
        && s.starts_with("/dev/")
        && !s.split('/').any(|part| part == "..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.:+-".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{:?} is not a device path: /dev/ and letters, digits and / _ . : + - only",
            shown(s)
        ))
    }
}

/// A URL as written (`raw`) and parsed: both only of characters that are
/// plain in every place a template puts a URL (no `$ { } , ; ' " \` or
/// `%`, which would expand in iPXE or systemd or split a dnsmasq value;
/// no line break, tab or `\`, which the parser drops or changes without a
/// word), no `&&` (iPXE's "and then") and no fragment.
pub fn url(raw: &str, url: &Url) -> Result<(), String> {
    if url.fragment().is_some() {
        return Err("the URL has a fragment (#...)".to_string());
    }
    if url.as_str().contains("&&") {
        // iPXE's "and then" between commands.
        return Err(format!("the URL {:?} holds \"&&\"", shown(raw)));
    }
    // The text as written too: the parser drops line breaks and tabs and
    // turns `\` into `/` without a word.
    let bad: String = raw
        .chars()
        .chain(url.as_str().chars())
        .filter(|c| !(c.is_ascii_alphanumeric() || "-._~:/?&=@[]+!*()".contains(*c)))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the URL {:?} holds {:?}: letters, digits and - . _ ~ : / ? & = @ [ ] + ! * ( ) only",
            shown(raw),
            bad
        ))
    }
}

/// An SSH public key's comment (`alice@laptop`): one line, without the
/// characters that could end or escape a value (a line break would add a
/// key of the writer's choosing to `authorized_keys`).
pub fn key_comment(s: &str) -> Result<(), String> {
    let bad: String = s
        .chars()
        .filter(|&c| {
            c.is_control() || (c.is_whitespace() && c != ' ') || "#\"'$%;,\\{}&".contains(c)
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the key's comment {:?} holds {bad:?}: one line without # \" ' $ % ; , \\ {{ }} &",
            shown(s)
        ))
    }
}

/// `s` for an error message: at most 80 characters, control characters
/// escaped by `{:?}` where it is printed.
fn shown(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HOSTILE: &[&str] = &[
        "\nchain http://127.0.0.1:9/evil.ipxe",
        "\r",
        "#x",
        "\"",
        "'",
        "${net0/ip}",
        "%n",
        ";x",
        ",x",
        "\\",
        "\u{2028}",
        " x",
        "&&chain",
    ];

    #[test]
    fn shipped_values_pass() {
        assert!(channel(Some(OsFlavor::Flatcar), "stable").is_ok());
        assert!(channel(Some(OsFlavor::Fcos), "testing").is_ok());
        assert!(channel(Some(OsFlavor::Fcos), "beta").is_err());
        for v in ["4081.2.0", "41.20241027.3.0", "bookworm", "v1.31.2"] {
            assert!(version(v).is_ok(), "{v}");
        }
        for l in ["FRA-3", "Frankfurt (Equinix FR5)", "München 2"] {
            assert!(label(l).is_ok(), "{l}");
        }
        for d in ["/dev/sda", "/dev/disk/by-id/nvme-SAMSUNG_MZ1L2_S6E1:0"] {
            assert!(device(d).is_ok(), "{d}");
        }
        for u in ["http://10.10.0.2:8080", "https://[fd00::1]:8443/boot/"] {
            assert!(url(u, &Url::parse(u).unwrap()).is_ok(), "{u}");
        }
    }

    #[test]
    fn nothing_hostile_passes_any_grammar() {
        for h in HOSTILE {
            let v = format!("stable{h}");
            assert!(channel(Some(OsFlavor::Flatcar), &v).is_err(), "{v:?}");
            assert!(version(&format!("4081.2.0{h}")).is_err(), "{h:?}");
            let l = format!("FRA-3{h}");
            // A space is a label's own; all else is refused.
            assert_eq!(label(&l).is_ok(), *h == " x", "{l:?}");
            assert!(device(&format!("/dev/sda{h}")).is_err(), "{h:?}");
            let u = format!("http://10.10.0.2:8080/boot{h}");
            let refused = match Url::parse(&u) {
                Ok(parsed) => url(&u, &parsed).is_err(),
                Err(_) => true,
            };
            assert!(refused, "{u:?}");
        }
        assert!(device("/dev/../etc/passwd").is_err());
        assert!(label("").is_err() && label("   ").is_err());
    }
}
