//! The process's allocator: mimalloc, told to hand freed memory back to the OS at once and to
//! stay on small pages.
//!
//! Batches come and go in megabytes across many threads. glibc's per-thread arenas kept ≈ 50 MB
//! of freed batch memory resident under a slow destination; mimalloc does better, but with its
//! defaults it (1) holds freed pages for a second (its purge delay) and (2) asks for
//! transparent huge pages on its first arena, so each touch there makes 2 MiB resident. The
//! benchmark harness's kafka → SQL → kafka flow over a 300,000-record backlog peaked at 155 MB
//! RSS with the defaults, 137 MB without huge pages, and 114 MB with immediate purging as well,
//! at the same wall time and CPU. A user may still set mimalloc's own `MIMALLOC_*` variables.
// FFI: mimalloc's options (its safe wrapper offers no setter) and one prctl.
#![allow(unsafe_code)]

use std::os::raw::{c_int, c_long};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (default 1000 ms; 0 purges at once).
const PURGE_DELAY: c_int = 15;
/// `mi_option_allow_thp` (default 1).
const ALLOW_THP: c_int = 43;

/// First thing in `main`. mimalloc's first arena was mapped (asking for huge pages) before
/// `main` ran, so huge pages are turned off for the process itself: the kernel checks that flag
/// at each page fault, also in regions already mapped.
pub fn give_memory_back() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores an integer in mimalloc's option table, read on each purge.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0 as c_long) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: as above; read when mimalloc maps more memory.
        unsafe { libmimalloc_sys::mi_option_set(ALLOW_THP, 0 as c_long) };
        // Best effort: without it the process only uses more memory.
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of the process.
        #[cfg(target_os = "linux")]
        let _ = unsafe {
            libc::prctl(
                libc::PR_SET_THP_DISABLE,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option indices are mimalloc's enum positions; an upgrade that moved them would
    /// silently tune the wrong options. Their defaults identify them.
    #[test]
    fn option_indices_name_the_options_meant() {
        // SAFETY: reading an option is a plain table lookup.
        let got = unsafe { (libmimalloc_sys::mi_option_get(PURGE_DELAY), libmimalloc_sys::mi_option_get(ALLOW_THP)) };
        assert_eq!(got, (1000, 1));
    }
}
