//! Run tags and the orphan sweep (G9).
//!
//! Every worker carries `DSPEX_RUN_TAG=dspex.<host pid>.<host start time>.<nonce>`
//! in its environment, and so do its descendants. The host's start time (in
//! clock ticks since boot, from `/proc/<pid>/stat`) makes the tag immune to
//! pid reuse: a tag names a live host only if a process with that pid *and*
//! that start time exists.
//!
//! [`tagged_processes`] lists the live processes of one tag (the leak check);
//! [`sweep_orphans`] kills those of every tag whose host is gone (run at start
//! so a crashed predecessor's workers never pile up).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs;
use std::hash::{BuildHasher, Hasher};

use nix::sys::signal::Signal;

/// The environment variable that carries the run tag.
pub const RUN_TAG_ENV: &str = "DSPEX_RUN_TAG";

/// The tag of one supervision tree's processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunTag(String);

impl RunTag {
    /// A fresh tag for a new tree of this host process.
    pub fn new() -> Self {
        let pid = std::process::id();
        let start = proc_stat(pid).map_or(0, |stat| stat.start_time);
        let nonce = RandomState::new().build_hasher().finish();
        Self(format!("dspex.{pid}.{start}.{nonce:016x}"))
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host (pid, start time) a tag names, if it is well formed.
    fn host(tag: &str) -> Option<(u32, u64)> {
        let mut parts = tag.strip_prefix("dspex.")?.split('.');
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        Some((pid, start))
    }
}

impl Default for RunTag {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fields of `/proc/<pid>/stat` the process owner and leak checks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `T`, `Z` (zombie), ...
    pub state: char,
    /// The parent's pid.
    pub ppid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` if the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; the
    // fields after the last ')' are plain.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        // Field 22 of the whole line; the 20th after the name.
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The run tag in a process's environment, if it has one.
fn run_tag_of(pid: u32) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{RUN_TAG_ENV}=");
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|tag| String::from_utf8_lossy(tag).into_owned())
}

fn all_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
}

/// Live (non-zombie) processes carrying `tag`, descendants included.
pub fn tagged_processes(tag: &RunTag) -> Vec<u32> {
    all_pids()
        .filter(|&pid| run_tag_of(pid).as_deref() == Some(tag.as_str()))
        .filter(|&pid| proc_stat(pid).is_some_and(|stat| stat.state != 'Z'))
        .collect()
}

/// Sends SIGKILL to one process (and its group, if it leads one).
///
/// # Errors
/// The OS error, other than "no such process".
pub fn kill_process(pid: u32) -> std::io::Result<()> {
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
    if target.as_raw() <= 1 {
        return Ok(());
    }
    let _ = super::spawner::signal_group(pid, Signal::SIGKILL);
    match nix::sys::signal::kill(target, Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Kills every tagged process whose host is gone; returns how many.
///
/// A host is gone when no process has its pid with its start time. Only
/// processes this user may read are seen, so the sweep never touches another
/// user's workers.
pub fn sweep_orphans() -> usize {
    let mut killed = 0;
    for pid in all_pids() {
        let Some(tag) = run_tag_of(pid) else { continue };
        let Some((host, start)) = RunTag::host(&tag) else {
            continue;
        };
        let alive = proc_stat(host).is_some_and(|stat| stat.start_time == start);
        if !alive {
            tracing::warn!(
                pid,
                tag,
                "killing an orphaned dspex worker whose host is gone"
            );
            let _ = kill_process(pid);
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_this_host_and_are_unique() {
        let (a, b) = (RunTag::new(), RunTag::new());
        assert_ne!(a, b);
        let (pid, start) = RunTag::host(a.as_str()).unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(start, proc_stat(pid).unwrap().start_time);
    }

    #[test]
    fn malformed_tags_name_no_host() {
        assert_eq!(RunTag::host("nope"), None);
        assert_eq!(RunTag::host("dspex.x.1.0"), None);
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let stat = proc_stat(std::process::id()).unwrap();
        assert!(matches!(stat.state, 'R' | 'S'));
        assert!(stat.start_time > 0);
    }
}
