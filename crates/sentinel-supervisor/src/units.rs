//! The numbers with a valid range that the configuration and the command line share, checked in
//! one place: a CPU budget in cores ([`Cores`], above 0) and a share of the machine ([`Share`],
//! above 0 and at most 1), and an amount of memory ([`ByteSize`], bytes or `"6GiB"`).
//!
//! Both parse from TOML (`serde(try_from = "f64")`) and from a flag (`FromStr`) with the same
//! message, so `cpus = 0` in a file and `--cpus 0` on the command line say the same thing; the
//! config loader adds the dotted key and the file, clap adds the flag.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A value outside its range, or not a number at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "CPU budget {0} is out of range: use a number of cores above 0, such as 0.5 or 1.0 \
         (1.0 = one full core)"
    )]
    Cores(f64),
    #[error(
        "share {0} is out of range: use a share of the whole machine above 0 and at most 1, \
         such as 0.6"
    )]
    Share(f64),
    #[error(
        "CPU budget {0} is out of range: use a number of cores of at least 0, such as 0.5 \
         (0 pauses: requests wait in the queue)"
    )]
    CoresOrPause(f64),
    #[error("`{0}` is not a number (write it like 0.5)")]
    NotANumber(String),
}

/// A CPU budget in cores, like Docker's `--cpus`: 1.0 = one full core. Always finite and above 0.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Cores(f64);

/// A share of the whole machine, above 0 and at most 1 (0.6 = 60 % of all CPUs).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Share(f64);

/// A CPU budget that may be 0, which pauses the backend (`cpus_on_battery`): finite, at least 0.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct CoresOrPause(f64);

impl CoresOrPause {
    /// The budget: `None` for 0 (pause).
    pub fn cores(self) -> Option<Cores> {
        Cores::new(self.0).ok()
    }
}

/// `new` (the value when `valid` holds, else the [`UnitError`] variant of the type's name),
/// `get`, and the conversions to and from `f64` and text.
macro_rules! bounded {
    ($t:ident, $valid:expr) => {
        impl $t {
            /// The value when it is in the type's range (see its doc).
            pub fn new(value: f64) -> Result<$t, UnitError> {
                let valid: fn(f64) -> bool = $valid;
                if valid(value) {
                    Ok($t(value))
                } else {
                    Err(UnitError::$t(value))
                }
            }

            /// The value.
            pub fn get(self) -> f64 {
                self.0
            }
        }

        impl TryFrom<f64> for $t {
            type Error = UnitError;
            fn try_from(value: f64) -> Result<Self, UnitError> {
                $t::new(value)
            }
        }

        impl From<$t> for f64 {
            fn from(value: $t) -> f64 {
                value.0
            }
        }

        impl FromStr for $t {
            type Err = UnitError;
            fn from_str(text: &str) -> Result<Self, UnitError> {
                let value: f64 = text
                    .trim()
                    .parse()
                    .map_err(|_| UnitError::NotANumber(text.to_string()))?;
                $t::new(value)
            }
        }

        /// Formats like the `f64` inside (precision flags apply).
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

bounded!(Cores, |cores| cores.is_finite() && cores > 0.0);
bounded!(Share, |share| share > 0.0 && share <= 1.0);
bounded!(CoresOrPause, |cores| cores.is_finite() && cores >= 0.0);

/// An amount of memory in bytes, written in a file as a whole number of bytes or a string with
/// a binary or decimal unit (`"6GiB"`, `"512MiB"`, `"6GB"`, `"6000000000"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "ByteSizeText", into = "u64")]
pub struct ByteSize(u64);

/// What a file may hold for a [`ByteSize`].
#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSizeText {
    Bytes(u64),
    Text(String),
}

/// A size that is not a number with a known unit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "`{0}` is not a memory size: write a whole number of bytes or a number with a unit, such as \
     \"6GiB\", \"512MiB\" or \"6GB\" (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000)"
)]
pub struct ByteSizeError(String);

impl ByteSize {
    pub const fn from_bytes(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl TryFrom<ByteSizeText> for ByteSize {
    type Error = ByteSizeError;
    fn try_from(value: ByteSizeText) -> Result<Self, ByteSizeError> {
        match value {
            ByteSizeText::Bytes(b) => Ok(ByteSize(b)),
            ByteSizeText::Text(t) => t.parse(),
        }
    }
}

impl From<ByteSize> for u64 {
    fn from(value: ByteSize) -> u64 {
        value.0
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;
    fn from_str(text: &str) -> Result<Self, ByteSizeError> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let bad = || ByteSizeError(text.to_string());
        let number: f64 = number.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        let bytes = number * scale as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

/// `1.50 GiB`, `512.0 MiB`, `900 B`.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 >= 1 << 30 {
            write!(f, "{:.2} GiB", b / (1u64 << 30) as f64)
        } else if self.0 >= 1 << 20 {
            write!(f, "{:.1} MiB", b / (1u64 << 20) as f64)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_finite_and_above_zero() {
        assert_eq!(Cores::new(0.5).unwrap().get(), 0.5);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Cores::new(bad).is_err(), "{bad}");
        }
        assert_eq!("1.5".parse::<Cores>().unwrap().get(), 1.5);
        let err = "0".parse::<Cores>().unwrap_err().to_string();
        assert!(
            err.contains("out of range") && err.contains("above 0"),
            "{err}"
        );
        let err = "half".parse::<Cores>().unwrap_err().to_string();
        assert!(err.contains("`half` is not a number"), "{err}");
    }

    #[test]
    fn shares_are_in_zero_to_one() {
        assert_eq!(Share::new(1.0).unwrap().get(), 1.0);
        for bad in [0.0, -0.1, 1.01, f64::NAN] {
            assert!(Share::new(bad).is_err(), "{bad}");
        }
        let err = "1.5".parse::<Share>().unwrap_err().to_string();
        assert!(err.contains("share 1.5 is out of range"), "{err}");
    }

    #[test]
    fn byte_sizes_take_units_or_bytes() {
        assert_eq!("6GiB".parse::<ByteSize>().unwrap().bytes(), 6 << 30);
        assert_eq!("512 MiB".parse::<ByteSize>().unwrap().bytes(), 512 << 20);
        assert_eq!("6GB".parse::<ByteSize>().unwrap().bytes(), 6_000_000_000);
        assert_eq!("1.5g".parse::<ByteSize>().unwrap().bytes(), 3 << 29);
        assert_eq!("100".parse::<ByteSize>().unwrap().bytes(), 100);
        for bad in ["", "six GiB", "6 parsecs", "-1GiB"] {
            let e = bad.parse::<ByteSize>().unwrap_err().to_string();
            assert!(e.contains("not a memory size") && e.contains("6GiB"), "{e}");
        }
        #[derive(Deserialize)]
        struct T {
            limit: ByteSize,
        }
        let t: T = toml::from_str("limit = \"6GiB\"").unwrap();
        assert_eq!(t.limit.bytes(), 6 << 30);
        let t: T = toml::from_str("limit = 4096").unwrap();
        assert_eq!(t.limit.bytes(), 4096);
        assert_eq!(ByteSize::from_bytes(3 << 29).to_string(), "1.50 GiB");
    }

    #[test]
    fn serde_checks_and_writes_a_plain_number() {
        #[derive(Debug, Deserialize, Serialize)]
        struct T {
            cpus: Cores,
            share: Share,
        }
        let t: T = toml::from_str("cpus = 2\nshare = 0.6").unwrap();
        assert_eq!((t.cpus.get(), t.share.get()), (2.0, 0.6));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"cpus":2.0,"share":0.6}"#
        );
        let err = toml::from_str::<T>("cpus = 0\nshare = 0.6").unwrap_err();
        assert!(
            err.to_string().contains("CPU budget 0 is out of range"),
            "{err}"
        );
        assert_eq!(format!("{:.2}", Cores::new(0.5).unwrap()), "0.50");
    }
}
