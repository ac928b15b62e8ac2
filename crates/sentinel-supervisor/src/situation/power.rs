//! Where the machine's power comes from, on Linux: the power supplies in
//! `<root>/sys/class/power_supply/*`. A system battery (not a mouse's: `scope` = `Device` is left
//! out) whose `status` is `Discharging` means "on battery", even while an adapter says it is
//! `online` (a weak USB-C charger can be online while the battery drains); so does a battery with
//! every adapter offline. A machine without a system battery is on mains.
//!
//! Each supply's attributes come from its own files (`type`, `online`, `status`, `scope`), and
//! from `uevent`'s `POWER_SUPPLY_*` lines for any file that is missing.

use super::PowerSource;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One entry of `/sys/class/power_supply`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Supply {
    pub name: String,
    /// `Battery`, `Mains`, `USB`, `UPS`, ...
    pub kind: String,
    /// Adapters: whether they supply power.
    pub online: Option<bool>,
    /// Batteries: `Charging`, `Discharging`, `Full`, `Not charging`, `Unknown`.
    pub status: Option<String>,
    /// `System` or `Device` (a peripheral's own battery).
    pub scope: Option<String>,
}

impl Supply {
    /// Reads a supply's directory; `None` when it has no type at all.
    pub(crate) fn read(dir: &Path) -> Option<Supply> {
        let uevent = std::fs::read_to_string(dir.join("uevent"))
            .map(|text| parse_uevent(&text))
            .unwrap_or_default();
        let attr = |file: &str, key: &str| -> Option<String> {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .map(|v| v.trim().to_string())
                .or_else(|| uevent.get(key).cloned())
                .filter(|v| !v.is_empty())
        };
        Some(Supply {
            name: dir.file_name()?.to_string_lossy().into_owned(),
            kind: attr("type", "POWER_SUPPLY_TYPE")?,
            online: attr("online", "POWER_SUPPLY_ONLINE").map(|v| v == "1"),
            status: attr("status", "POWER_SUPPLY_STATUS"),
            scope: attr("scope", "POWER_SUPPLY_SCOPE"),
        })
    }

    fn is_system_battery(&self) -> bool {
        self.kind.eq_ignore_ascii_case("battery")
            && !self
                .scope
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("device"))
    }

    fn is_adapter(&self) -> bool {
        !self.kind.eq_ignore_ascii_case("battery") && self.online.is_some()
    }
}

/// `KEY=value` lines of a `uevent` file.
pub(crate) fn parse_uevent(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// What the supplies say together.
pub(crate) fn decide(supplies: &[Supply]) -> PowerSource {
    let batteries: Vec<&Supply> = supplies.iter().filter(|s| s.is_system_battery()).collect();
    if batteries.is_empty() {
        return PowerSource::Mains;
    }
    let draining = batteries.iter().any(|b| {
        b.status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("discharging"))
    });
    let adapters: Vec<&Supply> = supplies.iter().filter(|s| s.is_adapter()).collect();
    let unplugged = !adapters.is_empty() && adapters.iter().all(|a| a.online == Some(false));
    if draining || unplugged {
        PowerSource::Battery
    } else {
        PowerSource::Mains
    }
}

/// The power supplies under `root`.
#[derive(Debug, Clone)]
pub(crate) struct Sysfs(PathBuf);

impl Sysfs {
    pub(crate) fn new(root: &Path) -> Sysfs {
        Sysfs(root.to_path_buf())
    }

    /// Every supply now (none when the directory is missing: no battery, on mains).
    pub(crate) fn supplies(&self) -> Vec<Supply> {
        let mut all: Vec<Supply> = super::sys_class(&self.0, "power_supply")
            .iter()
            .filter_map(|dir| Supply::read(dir))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub(crate) fn read(&self) -> PowerSource {
        decide(&self.supplies())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ThinkPad's battery `uevent`, captured (serial number removed).
    const BAT0_UEVENT: &str = "DEVTYPE=power_supply
POWER_SUPPLY_NAME=BAT0
POWER_SUPPLY_TYPE=Battery
POWER_SUPPLY_STATUS=Discharging
POWER_SUPPLY_PRESENT=1
POWER_SUPPLY_TECHNOLOGY=Li-poly
POWER_SUPPLY_CYCLE_COUNT=112
POWER_SUPPLY_VOLTAGE_MIN_DESIGN=15440000
POWER_SUPPLY_VOLTAGE_NOW=16498000
POWER_SUPPLY_POWER_NOW=7254000
POWER_SUPPLY_ENERGY_FULL_DESIGN=57000000
POWER_SUPPLY_ENERGY_FULL=50850000
POWER_SUPPLY_ENERGY_NOW=41430000
POWER_SUPPLY_CAPACITY=81
POWER_SUPPLY_CAPACITY_LEVEL=Normal
POWER_SUPPLY_MODEL_NAME=5B10W13930
POWER_SUPPLY_MANUFACTURER=SMP
";

    /// The same laptop's adapter.
    const AC_UEVENT: &str = "POWER_SUPPLY_NAME=AC
POWER_SUPPLY_TYPE=Mains
POWER_SUPPLY_ONLINE=0
";

    use super::super::write_fake_files as write;

    #[test]
    fn a_captured_uevent_parses() {
        let keys = parse_uevent(BAT0_UEVENT);
        assert_eq!(keys["POWER_SUPPLY_STATUS"], "Discharging");
        assert_eq!(keys["POWER_SUPPLY_CAPACITY"], "81");
        assert_eq!(keys["DEVTYPE"], "power_supply");
    }

    #[test]
    fn uevent_alone_and_attribute_files_both_read() {
        let root = tempfile::tempdir().unwrap();
        let sysfs = Sysfs::new(root.path());
        let class = root.path().join("sys/class/power_supply");
        write(&class.join("BAT0"), &[("uevent", BAT0_UEVENT)]);
        write(&class.join("AC"), &[("uevent", AC_UEVENT)]);
        let supplies = sysfs.supplies();
        assert_eq!(supplies[0].name, "AC");
        assert_eq!(supplies[0].online, Some(false));
        assert_eq!(supplies[1].status.as_deref(), Some("Discharging"));
        assert_eq!(sysfs.read(), PowerSource::Battery);
        // The attribute files win over uevent: plugged in and charging.
        write(&class.join("AC"), &[("online", "1\n")]);
        write(&class.join("BAT0"), &[("status", "Charging\n")]);
        assert_eq!(sysfs.read(), PowerSource::Mains);
    }

    fn supply(kind: &str, online: Option<bool>, status: Option<&str>, scope: &str) -> Supply {
        Supply {
            name: kind.into(),
            kind: kind.into(),
            online,
            status: status.map(String::from),
            scope: Some(scope.into()).filter(|s: &String| !s.is_empty()),
        }
    }

    #[test]
    fn the_decision_follows_batteries_and_adapters() {
        use PowerSource::*;
        // No battery at all (a desktop, a server): mains.
        assert_eq!(decide(&[]), Mains);
        assert_eq!(decide(&[supply("Mains", Some(false), None, "")]), Mains);
        // A weak adapter online while the battery drains: battery.
        assert_eq!(
            decide(&[
                supply("USB", Some(true), None, ""),
                supply("Battery", None, Some("Discharging"), "")
            ]),
            Battery
        );
        // Full, adapter online: mains; adapter unplugged with a full battery: battery.
        let full = supply("Battery", None, Some("Full"), "System");
        assert_eq!(
            decide(&[supply("Mains", Some(true), None, ""), full.clone()]),
            Mains
        );
        assert_eq!(
            decide(&[supply("Mains", Some(false), None, ""), full]),
            Battery
        );
        // A wireless mouse's battery discharging is not the machine's.
        assert_eq!(
            decide(&[supply("Battery", None, Some("Discharging"), "Device")]),
            Mains
        );
    }
}
