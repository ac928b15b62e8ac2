//! The drain's view of the requests in flight: the lifecycle waits for a backend generation's
//! requests to end ([`InFlight::drained`]) before it stops that backend, and tells the registry
//! how a backend ended ([`InFlight::exited`]). The counts live in [`crate::requests`]; this is
//! its name on the lifecycle's side.

pub(crate) use crate::requests::Requests as InFlight;
