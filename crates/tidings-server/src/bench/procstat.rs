//! CPU time and resident memory of a process, read from `/proc`.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux has used 100 on every
/// mainstream architecture for decades; `getconf CLK_TCK` would say otherwise.
const CLK_TCK: f64 = 100.0;

/// User + system CPU time used so far by process `pid` (all its threads).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow its `)`.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after `)`.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / CLK_TCK))
}

/// Resident set size of process `pid`, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time of a process over a window.
pub struct CpuWindow {
    pid: u32,
    start: Option<Duration>,
}

impl CpuWindow {
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            start: cpu_time(pid),
        }
    }

    /// CPU seconds used since `start`, if the process could be read both times.
    pub fn seconds(&self) -> Option<f64> {
        let end = cpu_time(self.pid)?;
        Some(end.checked_sub(self.start?)?.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(cpu_time(me).is_some());
        assert!(rss_kib(me).is_some_and(|k| k > 0));
    }
}
