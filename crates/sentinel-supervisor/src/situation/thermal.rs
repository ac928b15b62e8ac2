//! Heat, on Linux: `<root>/sys/class/thermal`. The machine is under thermal pressure while a
//! zone's temperature has reached one of its `passive`, `hot` or `critical` trip points (where
//! the kernel starts throttling the CPU), or while a CPU cooling device (`Processor`,
//! `intel_powerclamp`, `thermal-cpufreq-*`) is engaged. Fans (`active` trips, `Fan` devices) do
//! not count: a fan turning at its first step is normal. No thermal zone: no pressure known.

use std::path::{Path, PathBuf};

/// What one zone says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Zone {
    pub name: String,
    /// Millidegrees Celsius.
    pub temp: i64,
    /// The lowest passive, hot or critical trip point, millidegrees.
    pub throttle_at: Option<i64>,
}

impl Zone {
    fn read(dir: &Path) -> Option<Zone> {
        let text = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let number = |f: &str| text(f)?.trim().parse::<i64>().ok();
        let temp = number("temp")?;
        let throttle_at = (0..)
            .map_while(|k| Some((k, text(&format!("trip_point_{k}_type"))?)))
            .filter(|(_, kind)| matches!(kind.trim(), "passive" | "hot" | "critical"))
            .filter_map(|(k, _)| number(&format!("trip_point_{k}_temp")).filter(|t| *t > 0))
            .min();
        Some(Zone {
            name: text("type").map_or_else(
                || dir.file_name().unwrap_or_default().to_string_lossy().into(),
                |t| t.trim().to_string(),
            ),
            temp,
            throttle_at,
        })
    }

    fn hot(&self) -> bool {
        self.throttle_at.is_some_and(|t| self.temp >= t)
    }
}

/// A cooling device that slows the CPU, and how far it is engaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cooling {
    pub kind: String,
    pub state: u64,
}

impl Cooling {
    fn read(dir: &Path) -> Option<Cooling> {
        let kind = std::fs::read_to_string(dir.join("type")).ok()?;
        let kind = kind.trim();
        let cpu = kind == "Processor"
            || kind == "intel_powerclamp"
            || kind.starts_with("thermal-cpufreq")
            || kind.starts_with("cpufreq");
        if !cpu {
            return None;
        }
        let state = std::fs::read_to_string(dir.join("cur_state"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Cooling {
            kind: kind.to_string(),
            state,
        })
    }
}

/// The thermal class under a root.
#[derive(Debug, Clone)]
pub(crate) struct Sysfs(PathBuf);

impl Sysfs {
    pub(crate) fn new(root: &Path) -> Sysfs {
        Sysfs(root.to_path_buf())
    }

    /// Whether any zone or CPU cooling device reports pressure, and which (`None`: none does).
    pub(crate) fn pressure(&self) -> Option<String> {
        for dir in super::sys_class(&self.0, "thermal") {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("thermal_zone") {
                if let Some(zone) = Zone::read(&dir).filter(Zone::hot) {
                    return Some(format!(
                        "{} at {:.1} °C (throttles at {:.1} °C)",
                        zone.name,
                        zone.temp as f64 / 1000.0,
                        zone.throttle_at.unwrap_or_default() as f64 / 1000.0
                    ));
                }
            } else if name.starts_with("cooling_device") {
                if let Some(c) = Cooling::read(&dir).filter(|c| c.state > 0) {
                    return Some(format!("{} engaged (state {})", c.kind, c.state));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::write_fake_files as write;

    #[test]
    fn trip_points_and_cpu_cooling_make_pressure_fans_do_not() {
        let root = tempfile::tempdir().unwrap();
        let class = root.path().join("sys/class/thermal");
        let thermal = Sysfs::new(root.path());
        assert_eq!(thermal.pressure(), None);
        // A laptop's x86_pkg_temp zone as captured: an active (fan) trip below a passive one.
        let zone = class.join("thermal_zone0");
        write(
            &zone,
            &[
                ("type", "x86_pkg_temp\n"),
                ("temp", "71000\n"),
                ("trip_point_0_type", "active\n"),
                ("trip_point_0_temp", "65000\n"),
                ("trip_point_1_type", "passive\n"),
                ("trip_point_1_temp", "95000\n"),
                ("trip_point_2_type", "critical\n"),
                ("trip_point_2_temp", "105000\n"),
            ],
        );
        write(
            &class.join("cooling_device0"),
            &[("type", "Fan\n"), ("cur_state", "1\n")],
        );
        assert_eq!(thermal.pressure(), None);
        write(&zone, &[("temp", "96000\n")]);
        assert_eq!(
            thermal.pressure().as_deref(),
            Some("x86_pkg_temp at 96.0 °C (throttles at 95.0 °C)")
        );
        write(&zone, &[("temp", "60000\n")]);
        write(
            &class.join("cooling_device1"),
            &[("type", "intel_powerclamp\n"), ("cur_state", "0\n")],
        );
        assert_eq!(thermal.pressure(), None);
        write(&class.join("cooling_device1"), &[("cur_state", "12\n")]);
        assert_eq!(
            thermal.pressure().as_deref(),
            Some("intel_powerclamp engaged (state 12)")
        );
    }
}
