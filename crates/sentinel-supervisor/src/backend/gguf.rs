//! A small reader of a GGUF file's header metadata: the magic, the version, the tensor and
//! key/value counts, then the typed key/values (strings, integers, floats, bools, arrays). Only
//! what the memory estimate needs is kept: the architecture and its numeric hyperparameters
//! (`<arch>.block_count`, `<arch>.attention.head_count_kv`, key/value lengths, embedding
//! length). Arrays (the tokenizer's vocabulary) are skipped without being kept.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum GgufError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file (no GGUF magic); pass a .gguf model made for llama.cpp with --model")]
    Magic { path: PathBuf },
    #[error("{path}: unsupported GGUF version {version} (this reader knows versions 2 and 3)")]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: corrupt GGUF header: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// A metadata value, as far as the memory estimate cares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// An array, of which only the element count is kept. Per-layer hyperparameters (some
    /// models give `head_count_kv` per layer) keep their largest integer too.
    Array {
        len: u64,
        max_int: Option<i64>,
    },
}

/// The header of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
}

impl Header {
    /// Reads the header of the GGUF file at `path`.
    pub(crate) fn read(path: &Path) -> Result<Header, GgufError> {
        let file = std::fs::File::open(path).map_err(|source| GgufError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&mut BufReader::with_capacity(1 << 16, file), path)
    }

    /// Parses a header from `r` (`path` names it in errors).
    pub(crate) fn parse(r: &mut impl Read, path: &Path) -> Result<Header, GgufError> {
        let mut reader = Reader { r, path };
        let mut magic = [0u8; 4];
        reader.bytes(&mut magic)?;
        if &magic != b"GGUF" {
            return Err(GgufError::Magic {
                path: path.to_path_buf(),
            });
        }
        let version = reader.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version {
                path: path.to_path_buf(),
                version,
            });
        }
        let _tensor_count = reader.u64()?;
        let kv_count = reader.u64()?;
        if kv_count > 1_000_000 {
            return Err(reader.corrupt(format!("{kv_count} metadata keys")));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = reader.string()?;
            let kind = reader.u32()?;
            metadata.insert(key, reader.value(kind)?);
        }
        Ok(Header { version, metadata })
    }

    /// `general.architecture` (`llama`, `gemma3`, ...).
    pub(crate) fn architecture(&self) -> Option<&str> {
        match self.metadata.get("general.architecture") {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer hyperparameter of the architecture, `<arch>.<key>` (the largest element
    /// when it is given per layer).
    pub(crate) fn arch_int(&self, key: &str) -> Option<u64> {
        let arch = self.architecture()?;
        match self.metadata.get(&format!("{arch}.{key}"))? {
            Value::Int(v) => u64::try_from(*v).ok(),
            Value::Array { max_int, .. } => max_int.and_then(|v| u64::try_from(v).ok()),
            _ => None,
        }
    }
}

/// The vocabulary size of the model at `path` (`tokenizer.ggml.tokens`), `None` when its
/// header cannot be read or has no vocabulary.
pub(crate) fn vocab_size(path: &Path) -> Option<u64> {
    let header = Header::read(path).ok()?;
    match header.metadata.get("tokenizer.ggml.tokens")? {
        Value::Array { len, .. } => Some(*len),
        _ => None,
    }
}

/// GGUF metadata value types, in the order of their codes (0 to 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    Str,
    Array,
    U64,
    I64,
    F64,
}

impl Kind {
    fn of(code: u32) -> Option<Kind> {
        use Kind::{Array, Bool, Str, F32, F64, I16, I32, I64, I8, U16, U32, U64, U8};
        let all = [
            U8, I8, U16, I16, U32, I32, F32, Bool, Str, Array, U64, I64, F64,
        ];
        all.get(usize::try_from(code).ok()?).copied()
    }
}

/// Longest string accepted (a key or a value); real files stay far below.
const MAX_STRING: u64 = 64 << 20;

struct Reader<'a, R: Read> {
    r: &'a mut R,
    path: &'a Path,
}

impl<R: Read> Reader<'_, R> {
    fn corrupt(&self, message: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn bytes(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.corrupt("the file ends inside the header (truncated?)".into())
            } else {
                GgufError::Read {
                    path: self.path.to_path_buf(),
                    source: e,
                }
            }
        })
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.bytes(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A string's length, checked against [`MAX_STRING`].
    fn string_len(&mut self) -> Result<u64, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(self.corrupt(format!("a string of {len} bytes")));
        }
        Ok(len)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let mut buf = vec![0u8; self.string_len()? as usize];
        self.bytes(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn skip(&mut self, mut n: u64) -> Result<(), GgufError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let chunk = n.min(buf.len() as u64) as usize;
            self.bytes(&mut buf[..chunk])?;
            n -= chunk as u64;
        }
        Ok(())
    }

    fn value(&mut self, code: u32) -> Result<Value, GgufError> {
        let Some(kind) = Kind::of(code) else {
            return Err(self.corrupt(format!(
                "a metadata value of type {code}, which GGUF does not define"
            )));
        };
        Ok(match kind {
            Kind::U8 => Value::Int(i64::from(self.array::<1>()?[0])),
            Kind::I8 => Value::Int(i64::from(self.array::<1>()?[0] as i8)),
            Kind::U16 => Value::Int(i64::from(u16::from_le_bytes(self.array()?))),
            Kind::I16 => Value::Int(i64::from(i16::from_le_bytes(self.array()?))),
            Kind::U32 => Value::Int(i64::from(self.u32()?)),
            Kind::I32 => Value::Int(i64::from(i32::from_le_bytes(self.array()?))),
            Kind::U64 => Value::Int(i64::try_from(self.u64()?).unwrap_or(i64::MAX)),
            Kind::I64 => Value::Int(i64::from_le_bytes(self.array()?)),
            Kind::F32 => Value::Float(f64::from(f32::from_le_bytes(self.array()?))),
            Kind::F64 => Value::Float(f64::from_le_bytes(self.array()?)),
            Kind::Bool => Value::Bool(self.array::<1>()?[0] != 0),
            Kind::Str => Value::Str(self.string()?),
            Kind::Array => {
                let elem = self.u32()?;
                let len = self.u64()?;
                let Some(elem_kind) = Kind::of(elem).filter(|k| *k != Kind::Array) else {
                    return Err(self.corrupt(format!(
                        "an array of element type {elem}, which GGUF does not define"
                    )));
                };
                let mut max_int = None;
                for _ in 0..len {
                    if elem_kind == Kind::Str {
                        // The vocabulary's strings are read past, not kept.
                        let n = self.string_len()?;
                        self.skip(n)?;
                    } else if let Value::Int(v) = self.value(elem)? {
                        max_int = max_int.max(Some(v));
                    }
                }
                // Small integer arrays are per-layer values, kept for their maximum; a big one
                // (token types) is not.
                let max_int = max_int.filter(|_| len <= 4096);
                Value::Array { len, max_int }
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn value_types_are_numbered_as_gguf_numbers_them() {
        for code in 0..13 {
            assert_eq!(Kind::of(code).map(|k| k as u32), Some(code));
        }
        assert_eq!(Kind::of(13), None);
        assert_eq!(Kind::Str as u32, 8);
        assert_eq!(Kind::F64 as u32, 12);
    }

    /// Builds a GGUF v3 header with the given key/values (already encoded as type + bytes).
    pub(crate) fn header_bytes(kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend((kvs.len() as u64).to_le_bytes());
        for (key, kind, value) in kvs {
            out.extend((key.len() as u64).to_le_bytes());
            out.extend(key.as_bytes());
            out.extend(kind.to_le_bytes());
            out.extend(value);
        }
        out
    }

    pub(crate) fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    pub(crate) fn llama_like(layers: u32, kv_heads: u32, key_len: u32) -> Vec<u8> {
        let mut vocab = (Kind::Str as u32).to_le_bytes().to_vec();
        vocab.extend(3u64.to_le_bytes());
        for t in ["<s>", "a", "b"] {
            vocab.extend(string(t));
        }
        let mut per_layer = (Kind::I32 as u32).to_le_bytes().to_vec();
        per_layer.extend(2u64.to_le_bytes());
        per_layer.extend(1i32.to_le_bytes());
        per_layer.extend((kv_heads as i32).to_le_bytes());
        header_bytes(&[
            ("general.architecture", Kind::Str as u32, string("llama")),
            (
                "general.alignment",
                Kind::U32 as u32,
                32u32.to_le_bytes().to_vec(),
            ),
            ("tokenizer.ggml.tokens", Kind::Array as u32, vocab),
            (
                "llama.block_count",
                Kind::U32 as u32,
                layers.to_le_bytes().to_vec(),
            ),
            (
                "llama.attention.head_count_kv",
                Kind::Array as u32,
                per_layer,
            ),
            (
                "llama.attention.key_length",
                Kind::U64 as u32,
                u64::from(key_len).to_le_bytes().to_vec(),
            ),
            (
                "llama.rope.freq_base",
                Kind::F32 as u32,
                10000f32.to_le_bytes().to_vec(),
            ),
            ("llama.use_parallel", Kind::Bool as u32, vec![1]),
        ])
    }

    #[test]
    fn reads_typed_metadata_and_skips_arrays() {
        let bytes = llama_like(26, 4, 64);
        let h = Header::parse(&mut bytes.as_slice(), Path::new("m.gguf")).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.architecture(), Some("llama"));
        assert_eq!(h.arch_int("block_count"), Some(26));
        assert_eq!(h.arch_int("attention.head_count_kv"), Some(4));
        assert_eq!(h.arch_int("attention.key_length"), Some(64));
        assert_eq!(h.arch_int("attention.value_length"), None);
        assert_eq!(
            h.metadata["tokenizer.ggml.tokens"],
            Value::Array {
                len: 3,
                max_int: None
            }
        );
        assert_eq!(h.metadata["llama.use_parallel"], Value::Bool(true));
        assert_eq!(h.metadata["llama.rope.freq_base"], Value::Float(10000.0));
    }

    #[test]
    fn bad_files_are_named_errors() {
        let p = Path::new("/m/x.gguf");
        let e = Header::parse(&mut &b"<html>"[..], p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a GGUF file") && e.contains("/m/x.gguf"),
            "{e}"
        );
        let mut v1 = b"GGUF".to_vec();
        v1.extend(1u32.to_le_bytes());
        let e = Header::parse(&mut v1.as_slice(), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 1"), "{e}");
        let full = llama_like(26, 4, 64);
        let e = Header::parse(&mut &full[..full.len() - 3], p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let bad = header_bytes(&[("x", 99, vec![])]);
        let e = Header::parse(&mut bad.as_slice(), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("type 99"), "{e}");
    }
}
