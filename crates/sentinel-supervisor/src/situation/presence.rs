//! Whether someone is at the keyboard, on Linux. The user is active while there was keyboard or
//! mouse input within `idle_after`. Sources, the first that works:
//! 1. logind's `IdleHint` and `IdleSinceHint` over the system D-Bus (the manager's combined
//!    hint), where a graphical session is open to set them (a desktop marks its session idle);
//! 2. the interrupt counts of the input devices in `<root>/proc/interrupts` (the PS/2
//!    controller `i8042` behind a laptop's keyboard and touchpad, I2C HID touchpads): any new
//!    interrupt is input;
//! 3. neither: the user counts as always active (the profile's own budget holds).
//!
//! With a test root (`situation.root` set) only the files under it are read.

use super::PresenceSource;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Names in `/proc/interrupts` that are keyboards, mice and touchpads.
const INPUT_DEVICES: [&str; 4] = ["i8042", "i2c_hid", "i2c-hid", "hid-"];

/// The sum of the input devices' interrupt counts over all CPUs; `None` when the file lists no
/// input device.
pub(crate) fn input_interrupts(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    let cpus = lines.next()?.split_whitespace().count();
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_once(':')?.1.split_whitespace().collect();
            let counts: Vec<u64> = fields
                .iter()
                .take(cpus)
                .map_while(|f| f.parse().ok())
                .collect();
            // The device names follow the counts, the chip and the trigger.
            let names = fields[counts.len()..].join(" ");
            INPUT_DEVICES
                .iter()
                .any(|d| names.contains(d))
                .then(|| counts.iter().sum::<u64>())
        })
        .reduce(|a, b| a + b)
}

/// Follows the input devices' interrupt counts: the last time they moved is the last input.
#[derive(Debug)]
pub(crate) struct Interrupts {
    path: PathBuf,
    last_count: u64,
    last_input: Instant,
}

impl Interrupts {
    /// `None` when `<root>/proc/interrupts` is missing or lists no input device. Input is
    /// assumed at start (nothing says how long ago the last was).
    pub(crate) fn open(root: &Path) -> Option<Interrupts> {
        let path = root.join("proc/interrupts");
        let count = input_interrupts(&std::fs::read_to_string(&path).ok()?)?;
        Some(Interrupts {
            path,
            last_count: count,
            last_input: Instant::now(),
        })
    }

    /// How long since the last input, read now.
    pub(crate) fn idle_for(&mut self) -> Duration {
        let now = Instant::now();
        let count = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| input_interrupts(&t));
        if let Some(count) = count.filter(|c| *c != self.last_count) {
            self.last_count = count;
            self.last_input = now;
        }
        now.saturating_duration_since(self.last_input)
    }
}

/// logind's combined idle hint, over the system bus.
#[derive(Debug)]
pub(crate) struct Logind {
    manager: zbus::Proxy<'static>,
}

impl Logind {
    /// Connects, when a system bus answers and some session is graphical (a desktop sets the
    /// idle hint; text sessions and services leave it unset for ever).
    pub(crate) async fn open() -> Option<Logind> {
        let connection = zbus::Connection::system().await.ok()?;
        let manager = zbus::Proxy::new(
            &connection,
            "org.freedesktop.login1",
            "/org/freedesktop/login1",
            "org.freedesktop.login1.Manager",
        )
        .await
        .ok()?;
        type SessionRow = (String, u32, String, String, zbus::zvariant::OwnedObjectPath);
        let sessions: Vec<SessionRow> = manager.call("ListSessions", &()).await.ok()?;
        for (.., path) in sessions {
            let session = zbus::Proxy::new(
                &connection,
                "org.freedesktop.login1",
                path,
                "org.freedesktop.login1.Session",
            )
            .await
            .ok()?;
            let kind: String = session.get_property("Type").await.unwrap_or_default();
            if matches!(kind.as_str(), "x11" | "wayland" | "mir") {
                return Some(Logind { manager });
            }
        }
        None
    }

    /// How long the sessions have been idle (zero while active); `None` when the bus fails.
    pub(crate) async fn idle_for(&self) -> Option<Duration> {
        let idle: bool = self.manager.get_property("IdleHint").await.ok()?;
        if !idle {
            return Some(Duration::ZERO);
        }
        // Microseconds since the epoch when the hint last changed.
        let since: u64 = self.manager.get_property("IdleSinceHint").await.ok()?;
        let since = std::time::UNIX_EPOCH + Duration::from_micros(since);
        Some(
            std::time::SystemTime::now()
                .duration_since(since)
                .unwrap_or_default(),
        )
    }
}

/// The presence source in use, picked once at start.
#[derive(Debug)]
pub(crate) enum Presence {
    Logind(Logind),
    Interrupts(Interrupts),
    AlwaysActive,
}

impl Presence {
    /// The first source that works: logind (only on the real root), the input interrupts,
    /// else always active.
    pub(crate) async fn open(root: &Path) -> Presence {
        if root == Path::new("/") {
            if let Some(logind) = Logind::open().await {
                return Presence::Logind(logind);
            }
        }
        Interrupts::open(root).map_or(Presence::AlwaysActive, Presence::Interrupts)
    }

    pub(crate) fn source(&self) -> PresenceSource {
        match self {
            Presence::Logind(_) => PresenceSource::Logind,
            Presence::Interrupts(_) => PresenceSource::Interrupts,
            Presence::AlwaysActive => PresenceSource::AlwaysActive,
        }
    }

    /// How long since the last input (`None`: not known, counts as active).
    pub(crate) async fn idle_for(&mut self) -> Option<Duration> {
        match self {
            Presence::Logind(l) => l.idle_for().await,
            Presence::Interrupts(i) => Some(i.idle_for()),
            Presence::AlwaysActive => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A laptop's `/proc/interrupts`, captured (trimmed to the interesting lines).
    const LAPTOP: &str = "            CPU0       CPU1       CPU2       CPU3
   0:         11          0          0          0  IR-IO-APIC    2-edge      timer
   1:       4120          0          0        312  IR-IO-APIC    1-edge      i8042
   8:          0          0          0          0  IR-IO-APIC    8-edge      rtc0
   9:          0       1503          0          0  IR-IO-APIC    9-fasteoi   acpi
  12:          0          0      20881          0  IR-IO-APIC   12-edge      i8042
  16:          0          0          0          0  IR-IO-APIC   16-fasteoi   i801_smbus
  51:          0       9377          0          0  intel-gpio   3  SYNA8004:00
 120:          0          0          0      88731  IR-PCI-MSI 327680-edge      xhci_hcd
 NMI:         28         30         26         27   Non-maskable interrupts
 LOC:    5133424    4813305    5032731    4743612   Local timer interrupts
 ERR:          0
";

    /// This virtual machine's: its `virtio*-input` queues are network, not people.
    const VM: &str = "           CPU0       CPU1
 34:         17          0 PCI-MSIX-0000:00:05.0   1-edge      virtio4-input
 38:          0       3878 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 LOC:      54205      59172   Local timer interrupts
";

    #[test]
    fn the_keyboard_and_mouse_lines_are_summed() {
        assert_eq!(input_interrupts(LAPTOP), Some(4120 + 312 + 20881));
        assert_eq!(input_interrupts(VM), None);
        assert_eq!(input_interrupts(""), None);
    }

    #[tokio::test(start_paused = true)]
    async fn input_resets_the_idle_clock() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        let file = root.path().join("proc/interrupts");
        std::fs::write(&file, LAPTOP).unwrap();
        let mut presence = Presence::open(root.path()).await;
        assert_eq!(presence.source(), PresenceSource::Interrupts);
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(presence.idle_for().await, Some(Duration::from_secs(100)));
        std::fs::write(&file, LAPTOP.replace("4120", "4121")).unwrap();
        assert_eq!(presence.idle_for().await, Some(Duration::ZERO));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(presence.idle_for().await, Some(Duration::from_secs(5)));
        // Without input devices: always active.
        std::fs::write(&file, VM).unwrap();
        let mut none = Presence::open(root.path()).await;
        assert_eq!(none.source(), PresenceSource::AlwaysActive);
        assert_eq!(none.idle_for().await, None);
    }
}
