//! Heat, on macOS: the process info's thermal state (`NSProcessInfoThermalState`). `serious`
//! and `critical` are pressure (the system throttles, the fans are loud); `nominal` and `fair`
//! are not.

use objc2_foundation::{NSProcessInfo, NSProcessInfoThermalState};

/// What reports pressure (`None`: none).
pub(crate) fn pressure() -> Option<String> {
    let state = NSProcessInfo::processInfo().thermalState();
    if state == NSProcessInfoThermalState::Serious {
        Some("thermal state serious".into())
    } else if state == NSProcessInfoThermalState::Critical {
        Some("thermal state critical".into())
    } else {
        None
    }
}
