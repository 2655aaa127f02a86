//! Secret values (client secrets, access tokens) in types whose `Debug` and `Display`
//! never show them.

use std::fmt;
use std::path::PathBuf;

/// A string that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a tenant's client secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(Secret),
    /// Read at every token fetch, so a rotated file is picked up without a restart.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read client secret file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("client secret file {path} is empty")]
    Empty { path: PathBuf },
}

impl SecretSource {
    /// The current secret; a file's surrounding whitespace (the trailing newline) is trimmed.
    pub async fn read(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Inline(secret) => Ok(secret.clone()),
            SecretSource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| SecretError::Read {
                        path: path.clone(),
                        source,
                    })?;
                let trimmed = text.trim();
                if trimmed.is_empty() {
                    return Err(SecretError::Empty { path: path.clone() });
                }
                Ok(Secret::new(trimmed))
            }
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("<redacted>"),
            SecretSource::File(path) => write!(f, "<redacted, read from {}>", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        let src = SecretSource::Inline(s);
        assert!(!format!("{src:?} {src}").contains("hunter2"));
    }

    #[tokio::test]
    async fn file_is_trimmed_and_reread() {
        let dir = std::env::temp_dir().join(format!("zap-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "first\n").unwrap();
        let src = SecretSource::File(path.clone());
        assert_eq!(src.read().await.unwrap().expose(), "first");
        std::fs::write(&path, "  second \r\n").unwrap();
        assert_eq!(src.read().await.unwrap().expose(), "second");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(src.read().await, Err(SecretError::Empty { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(src.read().await, Err(SecretError::Read { .. })));
    }
}
