//! Layered TOML: built-in defaults with files merged over them key by key, deserialized
//! strictly, and an error that names the file which set the key at fault. The configuration is
//! read this way, and so are `sentinel-bench`'s own settings (one set of rules for both).

use super::ConfigError;
use serde::de::DeserializeOwned;
use std::path::Path;

/// The built-in text and each file over it, parsed and merged.
#[derive(Debug)]
pub struct Layers<'a> {
    builtin_name: &'a str,
    files: Vec<(&'a Path, toml::Table)>,
    merged: toml::Table,
}

impl<'a> Layers<'a> {
    /// Parses `builtin` (named `builtin_name` in errors) and merges `files` over it in order.
    pub fn parse(
        builtin_name: &'a str,
        builtin: &str,
        files: &[(&'a Path, &str)],
    ) -> Result<Layers<'a>, ConfigError> {
        let mut merged = parse_table(builtin, builtin_name)?;
        let mut tables = Vec::with_capacity(files.len());
        for (path, text) in files {
            let table = parse_table(text, &path.display().to_string())?;
            deep_merge(&mut merged, table.clone());
            tables.push((*path, table));
        }
        Ok(Layers {
            builtin_name,
            files: tables,
            merged,
        })
    }

    /// The first file over the built-in text (the user's main file), if any.
    pub(crate) fn first_path(&self) -> Option<&'a Path> {
        self.files.first().map(|(path, _)| *path)
    }

    /// The last file that set the dotted `key` (the built-in text when none did; the last file
    /// for the top level, `""`).
    pub(crate) fn file_of(&self, key: &str) -> String {
        self.files
            .iter()
            .rev()
            .find(|(_, table)| key.is_empty() || has_key(table, key))
            .map_or_else(
                || self.builtin_name.to_string(),
                |(p, _)| p.display().to_string(),
            )
    }

    /// The merged layers as `T`; an error names the key and the file that set it.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(self.merged.clone())).map_err(|err| {
            let path = err.path().to_string();
            let top = path == ".";
            ConfigError::Key {
                file: self.file_of(if top { "" } else { &path }),
                key: if top { "(top level)".into() } else { path },
                message: err.into_inner().to_string(),
            }
        })
    }
}

fn parse_table(text: &str, file: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })
}

/// Overlays `top` onto `base`: tables merge key by key, anything else is replaced.
fn deep_merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => deep_merge(b, t),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// Whether a dotted key path (`profiles.balanced.cpus`) is present in `table`.
fn has_key(table: &toml::Table, dotted: &str) -> bool {
    let (first, rest) = dotted.split_once('.').unwrap_or((dotted, ""));
    match table.get(first) {
        Some(toml::Value::Table(t)) if !rest.is_empty() => has_key(t, rest),
        found => found.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lookup() {
        let t: toml::Table = "a = 1\n[b]\nc = 2\n".parse().unwrap();
        assert!(has_key(&t, "a"));
        assert!(has_key(&t, "b.c"));
        assert!(!has_key(&t, "b.d"));
        assert!(!has_key(&t, "z"));
    }

    #[test]
    fn the_last_file_setting_a_key_is_named() {
        let (a, b) = (Path::new("a.toml"), Path::new("b.toml"));
        let layers = Layers::parse(
            "defaults",
            "x = 1\ny = 2\n",
            &[(a, "x = 3\n"), (b, "y = 4\n")],
        )
        .unwrap();
        assert_eq!(layers.file_of("x"), "a.toml");
        assert_eq!(layers.file_of("y"), "b.toml");
        assert_eq!(layers.file_of("z"), "defaults");
        assert_eq!(layers.first_path(), Some(a));
    }
}
