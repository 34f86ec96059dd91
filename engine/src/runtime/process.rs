//! Who wrote something — this process's id — and whether another writer is known to be dead.
//!
//! Commits in Kafka carry the writer's id (the source claim's heartbeat, the sink's offsets), so
//! a process that starts after a kill -9 can tell that the member still holding its partitions
//! was its own predecessor on this host and is gone, and ask for a fresh rebalance at once
//! instead of waiting out a silence window. A broker that expires dead members (Apache Kafka)
//! needs no help; the embedded broker (tansu 0.6) hands a restarted worker nothing until someone
//! rejoins.

/// This process: `<host>:<pid>`.
pub fn writer_id() -> String {
    format!("{}:{}", crate::ledger::host_name(), std::process::id())
}

/// Whether `writer` (`<host>:<pid>`, optionally `/<turn>`) is a process of this host, not this
/// one, that no longer runs. Only ever `true` on evidence: another host's writer, this process,
/// an unparsable id or a process id now in use by anyone all count as alive, so at worst a
/// reused process id delays a takeover to the caller's silence window.
pub(crate) fn is_gone(writer: &str) -> bool {
    let process = writer.split('/').next().unwrap_or_default();
    let Some((host, pid)) = process.rsplit_once(':') else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if pid <= 0 || pid as u32 == std::process::id() || host != crate::ledger::host_name() {
        return false;
    }
    // Signal 0 checks that the process exists without touching it; ESRCH is the evidence.
    matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_process_of_this_host_is_gone() {
        let host = crate::ledger::host_name();
        // This process, with and without a turn.
        assert!(!is_gone(&writer_id()));
        assert!(!is_gone(&format!("{}/3", writer_id())));
        // A child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(is_gone(&format!("{host}:{pid}/1")));
        // Another host's writer, or nonsense, is never called dead.
        assert!(!is_gone(&format!("{host}-elsewhere:{pid}/1")));
        assert!(!is_gone("no-colon"));
        assert!(!is_gone(&format!("{host}:not-a-pid")));
        assert!(!is_gone(&format!("{host}:0")));
        // A running process (pid 1 always runs).
        assert!(!is_gone(&format!("{host}:1")));
    }
}
