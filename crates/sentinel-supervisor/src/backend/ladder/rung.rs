//! The rungs of the backend ladder: one configuration of the pinned llama-server each (a
//! build [`Flavor`] and the run-time flags it adds), in the order they are climbed, and the
//! directory a rung without one CPU variant runs from.

use crate::backend::build::Flavor;
use crate::backend::setup::RungInUse;
use std::path::Path;

/// One configuration of the pinned llama-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rung {
    Native,
    /// The native binary with `--no-repack`.
    NativeNoRepack,
    Portable,
    /// The portable build without `libggml-cpu-<variant>.so`, the variant that failed here.
    PortableWithout(String),
    Baseline,
}

impl Rung {
    pub(super) fn name(&self) -> String {
        match self {
            Rung::Native => "native".into(),
            Rung::NativeNoRepack => "native --no-repack".into(),
            Rung::Portable => "portable".into(),
            Rung::PortableWithout(v) => format!("portable without {v}"),
            Rung::Baseline => "baseline".into(),
        }
    }

    /// This rung as the backend in use, chosen for `why`, with the llama-server flags it adds
    /// to every launch.
    pub(crate) fn in_use(&self, why: impl Into<String>) -> RungInUse {
        RungInUse {
            name: self.name(),
            args: match self {
                Rung::NativeNoRepack => vec!["--no-repack".into()],
                _ => Vec::new(),
            },
            why: why.into(),
        }
    }

    pub(super) fn flavor(&self) -> Flavor {
        match self {
            Rung::Native | Rung::NativeNoRepack => Flavor::Native,
            Rung::Portable | Rung::PortableWithout(_) => Flavor::Portable,
            Rung::Baseline => Flavor::Baseline,
        }
    }
}

/// The rungs in the order they are climbed. `failed_variant` is the CPU variant the portable
/// rung failed in on this host, when it did: only then is there a rung without it.
pub(super) fn rungs(failed_variant: Option<&str>) -> Vec<Rung> {
    let mut rungs = vec![Rung::Native, Rung::NativeNoRepack, Rung::Portable];
    if let Some(v) = failed_variant {
        rungs.push(Rung::PortableWithout(v.to_string()));
    }
    rungs.push(Rung::Baseline);
    rungs
}

/// Fills `dest` with hard links (copies where linking fails) of every file in `src` but
/// `libggml-cpu-<variant>.*`. ggml looks for its CPU variants in the executable's own
/// directory (`/proc/self/exe`, so symbolic links would lead back to `src`).
pub(super) fn without_variant(src: &Path, dest: &Path, variant: &str) -> std::io::Result<()> {
    let skip = format!("libggml-cpu-{variant}.");
    std::fs::create_dir_all(dest)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        // Following links: a file linked in counts as a file.
        if name_str.starts_with(&skip) || !std::fs::metadata(entry.path())?.is_file() {
            continue;
        }
        let target = dest.join(&name);
        // A file already there is left alone; a hard link that fails becomes a copy.
        if !target.exists() && std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_climb_from_fastest_to_safest() {
        let names: Vec<String> = rungs(None).iter().map(Rung::name).collect();
        assert_eq!(
            names,
            ["native", "native --no-repack", "portable", "baseline"]
        );
        let names: Vec<String> = rungs(Some("sapphirerapids"))
            .iter()
            .map(Rung::name)
            .collect();
        assert_eq!(
            names,
            [
                "native",
                "native --no-repack",
                "portable",
                "portable without sapphirerapids",
                "baseline"
            ]
        );
        assert_eq!(Rung::NativeNoRepack.in_use("").args, ["--no-repack"]);
        assert!(Rung::Portable.in_use("").args.is_empty());
        assert_eq!(Rung::NativeNoRepack.flavor(), Flavor::Native);
        assert_eq!(
            Rung::PortableWithout("zen4".into()).flavor(),
            Flavor::Portable
        );
    }

    #[test]
    fn the_rung_without_a_variant_links_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        for f in [
            "llama-server",
            "libggml-base.so",
            "libggml-cpu-haswell.so",
            "libggml-cpu-sapphirerapids.so",
        ] {
            std::fs::write(src.join(f), f).unwrap();
        }
        let dest = dir.path().join("dest");
        without_variant(&src, &dest, "sapphirerapids").unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["libggml-base.so", "libggml-cpu-haswell.so", "llama-server"]
        );
        // Again: nothing to do, no error.
        without_variant(&src, &dest, "sapphirerapids").unwrap();
    }
}
