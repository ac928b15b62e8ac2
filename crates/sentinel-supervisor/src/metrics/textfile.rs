//! The `/metrics` text written to a file every `metrics.textfile_interval`, for node_exporter's
//! textfile collector on hosts that are not scraped. Each write goes to a temporary file in the
//! same directory, then is renamed over the target, so the collector never reads half a file.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextfileConfig {
    /// The `.prom` file; empty: off.
    #[serde(default, with = "crate::config::empty_path")]
    pub textfile: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub textfile_interval: Duration,
}

/// Writes `text` to `path` atomically (temporary file beside it, then rename).
pub(crate) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics.prom".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Writes the metrics of `shared` every interval until `cancel`; a failed write is logged
/// (once until a write succeeds again) and tried again at the next tick.
pub(crate) fn spawn(
    shared: crate::proxy::AppState,
    config: TextfileConfig,
    cancel: CancellationToken,
) {
    let Some(path) = config.textfile else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.textfile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let backend = shared.status.borrow().backend.clone();
            let text = shared
                .metrics
                .render(&shared.report(), backend.as_ref())
                .await;
            let written = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || write_atomically(&path, &text)).await
            };
            match written {
                Ok(Ok(())) => failing = false,
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics textfile; check metrics.textfile and that its directory is writable");
                }
                _ => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_file_whole_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sentinel.prom");
        write_atomically(&path, "a 1\n").unwrap();
        write_atomically(&path, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_atomically(Path::new("/nonexistent/dir/x.prom"), "a").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
