//! Where the machine's power comes from, on macOS: IOKit's power-source API
//! (`IOPSCopyPowerSourcesInfo`, `IOPSGetProvidingPowerSourceType`). "Battery Power" is on
//! battery; "AC Power" (a Mac without a battery says so too) and anything else is on mains.

use super::PowerSource;
use objc2_io_kit::{
    kIOPSBatteryPowerValue, IOPSCopyPowerSourcesInfo, IOPSGetProvidingPowerSourceType,
};

/// The power source now; mains when IOKit does not answer.
pub(crate) fn read() -> PowerSource {
    let Some(snapshot) = IOPSCopyPowerSourcesInfo() else {
        return PowerSource::Mains;
    };
    // SAFETY: `snapshot` is the blob IOPSCopyPowerSourcesInfo returned, alive for the call.
    let providing = unsafe { IOPSGetProvidingPowerSourceType(Some(&snapshot)) };
    let battery = kIOPSBatteryPowerValue.to_str().unwrap_or("Battery Power");
    match providing {
        Some(kind) if kind.to_string() == battery => PowerSource::Battery,
        _ => PowerSource::Mains,
    }
}
