//! What the operating system says and does for this program, each fact read in one place:
//! how a child is started and signalled ([`process`]), and what `/proc` says about a process
//! and its cgroups ([`procfs`]). The domain modules (the governor, the meter, the host) ask
//! here instead of reading the kernel's files or calling `libc` themselves.

pub mod process;
pub(crate) mod procfs;
