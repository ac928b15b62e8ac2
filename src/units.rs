//! The numbers with a valid range that the configuration and the command line share, checked in
//! one place: a CPU budget in cores ([`Cores`], above 0) and a share of the machine ([`Share`],
//! above 0 and at most 1).
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
    #[error("`{0}` is not a number (write it like 0.5)")]
    NotANumber(String),
}

/// A CPU budget in cores, like Docker's `--cpus`: 1.0 = one full core. Always finite and above 0.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Cores(f64);

impl Cores {
    /// `cores` when it is finite and above 0.
    pub fn new(cores: f64) -> Result<Cores, UnitError> {
        if cores.is_finite() && cores > 0.0 {
            Ok(Cores(cores))
        } else {
            Err(UnitError::Cores(cores))
        }
    }

    /// The number of cores.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// A share of the whole machine, above 0 and at most 1 (0.6 = 60 % of all CPUs).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Share(f64);

impl Share {
    /// `share` when it is above 0 and at most 1.
    pub fn new(share: f64) -> Result<Share, UnitError> {
        if share > 0.0 && share <= 1.0 {
            Ok(Share(share))
        } else {
            Err(UnitError::Share(share))
        }
    }

    /// The share, in (0, 1].
    pub fn get(self) -> f64 {
        self.0
    }
}

macro_rules! conversions {
    ($t:ident) => {
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

conversions!(Cores);
conversions!(Share);

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
