//! BMC credentials, resolved from the inventory's reference (`env:NAME`
//! or `file:PATH`) at the moment they are needed. The secret is a
//! `secrecy::SecretString`: its `Debug` prints a placeholder, and it is
//! zeroed on drop.

use std::fmt;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

use super::DriverError;
use crate::fleet::SecretRef;

/// `user:password`, as stored behind the reference.
pub struct Credentials {
    pub user: String,
    password: SecretString,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"****")
            .finish()
    }
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Self {
        Credentials {
            user: user.to_string(),
            password: SecretString::from(password.to_string()),
        }
    }

    /// Reads the secret behind `reference`; relative `file:` paths are
    /// relative to the fleet directory. Errors name the reference, never
    /// the value.
    pub fn resolve(reference: &SecretRef, fleet_root: &Path) -> Result<Self, DriverError> {
        let raw = SecretString::from(match reference {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| {
                DriverError::Credentials(format!(
                    "{reference}: the environment variable is not set"
                ))
            })?,
            SecretRef::File(path) => {
                let path = fleet_root.join(path);
                crate::fsutil::read_private(&path)
                    .map_err(|e| DriverError::Credentials(format!("{reference}: {e}")))?
            }
        });
        let text = raw.expose_secret().trim_end_matches(['\n', '\r']);
        let (user, password) = text.split_once(':').ok_or_else(|| {
            DriverError::Credentials(format!("{reference}: expected USER:PASSWORD"))
        })?;
        if user.is_empty() {
            return Err(DriverError::Credentials(format!(
                "{reference}: the user is empty"
            )));
        }
        Ok(Credentials::new(user, password))
    }

    /// The password, for the one place that must send it.
    pub fn password(&self) -> &str {
        self.password.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password_and_errors_never_show_it() {
        let c = Credentials::new("admin", "hunter2-secret");
        assert!(!format!("{c:?}").contains("hunter2"));
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| {
            let path = dir.path().join("bmc");
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        };
        write("no-colon-hunter2\n");
        let err = Credentials::resolve(&SecretRef::File("bmc".into()), dir.path()).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        write("admin:pw:with:colons\n");
        let ok = Credentials::resolve(&SecretRef::File("bmc".into()), dir.path()).unwrap();
        assert_eq!(
            (ok.user.as_str(), ok.password()),
            ("admin", "pw:with:colons")
        );
    }
}
