//! Whether someone is at the keyboard, on macOS: `HIDIdleTime` of the `IOHIDSystem` service,
//! the nanoseconds since the last keyboard, mouse or trackpad event.

use objc2_core_foundation::{CFDictionary, CFNumber, CFRetained, CFString};
use objc2_io_kit::{
    kIOMainPortDefault, IOObjectRelease, IORegistryEntryCreateCFProperty,
    IOServiceGetMatchingService, IOServiceMatching,
};
use std::time::Duration;

/// Time since the last input; `None` when IOKit does not answer (the user counts as active).
pub(crate) fn idle_for() -> Option<Duration> {
    // SAFETY: a NUL-terminated class name; the matching dictionary is consumed by
    // IOServiceGetMatchingService, the service released below.
    let service = unsafe {
        let matching = IOServiceMatching(c"IOHIDSystem".as_ptr())?;
        let matching: CFRetained<CFDictionary> = CFRetained::from(&*matching);
        IOServiceGetMatchingService(kIOMainPortDefault, Some(matching))
    };
    if service == 0 {
        return None;
    }
    let key = CFString::from_static_str("HIDIdleTime");
    // SAFETY: `service` is a valid registry entry until released; the key is a CFString.
    let value = unsafe { IORegistryEntryCreateCFProperty(service, Some(&key), None, 0) };
    IOObjectRelease(service);
    let nanos = value?.downcast::<CFNumber>().ok()?.as_i64()?;
    Some(Duration::from_nanos(u64::try_from(nanos).ok()?))
}
