//! A cross-process exclusive lock on a file (flock), so two setups never build or fetch the
//! same thing at once. Released when dropped (or when the process dies).

use super::fetch::{io_err, FetchError};
use std::path::Path;

pub(crate) struct FileLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl FileLock {
    /// Blocks until the lock on `path` (created if needed) is held.
    pub(crate) fn acquire(path: &Path) -> Result<FileLock, FetchError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err(path)(errno.into()))?;
        Ok(FileLock { _lock: lock })
    }
}
