//! The Unix-socket listener: bound at a path with the configured mode and group, replacing
//! the stale socket file an earlier run left behind, and removing its file when it closes.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} exists and is not a socket; not replacing it")]
    NotASocket { path: String },
    #[error("{path}: another process is listening on this socket")]
    InUse { path: String },
}

/// A bound Unix socket; its file goes when this does, unless another file has taken its place.
#[derive(Debug)]
pub struct UnixSocketListener {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this listener made.
    file: (u64, u64),
}

impl UnixSocketListener {
    /// Binds `path`, then gives the file `group` (if any) and `mode`.
    pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixSocketListener, UnixSocketError> {
        let io_error = |source| UnixSocketError::Io {
            path: path.display().to_string(),
            source,
        };
        remove_stale(path)?;
        // Until the mode is set, the process's umask bounds the new file's permissions.
        let listener = UnixListener::bind(path).map_err(io_error)?;
        let bound = UnixSocketListener {
            file: identity(path).map_err(io_error)?,
            listener,
            path: path.to_path_buf(),
        };
        // The group first: once the mode lets the group in, it is the right group.
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(io_error)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error)?;
        Ok(bound)
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocketListener {
    fn drop(&mut self) {
        // A newer instance may have replaced the file since: that one is not ours to remove.
        if identity(&self.path).is_ok_and(|file| file == self.file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn identity(path: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// A socket file nobody listens on (a crash, a `kill -9`) is removed so that the bind can
/// succeed; a live socket or any other kind of file is left alone and reported.
fn remove_stale(path: &Path) -> Result<(), UnixSocketError> {
    let shown = || path.display().to_string();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(UnixSocketError::Io { path: shown(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(UnixSocketError::NotASocket { path: shown() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(UnixSocketError::InUse { path: shown() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|source| UnixSocketError::Io { path: shown(), source })
        }
        Err(source) => Err(UnixSocketError::Io { path: shown(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        // A socket left behind by a listener that is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let bound = UnixSocketListener::bind(&path, 0o600, None).expect("stale socket replaced");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let again = UnixSocketListener::bind(&path, 0o600, None).unwrap_err();
        assert!(matches!(again, UnixSocketError::InUse { .. }), "{again}");
        drop(bound);
        assert!(!path.exists(), "removed on close");

        std::fs::write(&path, "not a socket").unwrap();
        let err = UnixSocketListener::bind(&path, 0o600, None).unwrap_err();
        assert!(matches!(err, UnixSocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    }

    #[tokio::test]
    async fn a_replaced_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let bound = UnixSocketListener::bind(&path, 0o660, None).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(bound);
        assert!(path.exists());
    }
}
