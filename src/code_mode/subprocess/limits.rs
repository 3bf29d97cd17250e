//! OS resource limits of an engine process, applied in the child before `exec`.

use std::io;

use crate::code_mode::sandbox::EngineLimits;

/// Address space the engine process may use besides the engine's memory limit: the mapped binary,
/// shared libraries, thread stacks and the allocator's own reservations.
// NOTE: measured with `prlimit --as` on Linux x86_64 with glibc. A trivial program needs about
// 32 MiB in a release build and 56 MiB in a debug build. A program holding 48 MiB under a 64 MiB
// engine limit needed about 48 MiB beyond the limit, for allocator slack. Another libc or
// allocator may need a different figure.
pub const ADDRESS_SPACE_OVERHEAD_BYTES: u64 = 256 * 1024 * 1024;
/// Maximum open files of the engine process: its three standard streams and a few more.
pub const MAX_OPEN_FILES: u64 = 16;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

/// The OS limits of one engine process.
#[derive(Debug, Clone, Copy)]
pub(super) struct OsLimits {
    address_space_bytes: u64,
    cpu_seconds: u64,
}

impl OsLimits {
    pub(super) fn for_run(limits: &EngineLimits) -> Self {
        let runtime = limits.max_runtime;
        let whole_seconds = runtime.as_secs() + u64::from(runtime.subsec_nanos() > 0);
        Self {
            address_space_bytes: (limits.memory_limit_bytes as u64)
                .saturating_add(ADDRESS_SPACE_OVERHEAD_BYTES),
            // The gateway kills the child at the deadline; CPU time only catches a child that
            // outlives the gateway. The hard limit, a second later, turns SIGXCPU into SIGKILL.
            cpu_seconds: whole_seconds + 1,
        }
    }

    /// Applies the limits to the calling process. Runs between fork and exec, so it must stay
    /// async-signal-safe: no allocation, no locks.
    pub(super) fn apply(&self) -> io::Result<()> {
        let address_space = self.address_space_bytes;
        set_limit(libc::RLIMIT_AS, address_space, address_space)?;
        set_limit(libc::RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 1)?;
        set_limit(libc::RLIMIT_CORE, 0, 0)?;
        set_limit(libc::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES)?;
        set_limit(libc::RLIMIT_FSIZE, 0, 0)
    }
}

/// Sets a soft and a hard limit, neither above the current hard limit (raising it needs
/// privileges the gateway should not have).
fn set_limit(resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a valid rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let hard = (hard as libc::rlim_t).min(current.rlim_max);
    let limit = libc::rlimit {
        rlim_cur: (soft as libc::rlim_t).min(hard),
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit for setrlimit to read.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
