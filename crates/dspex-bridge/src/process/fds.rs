//! [`FdLedger`]: the pipes a tree opened to its processes, so that a check
//! can prove none of them is still open once the tree has stopped — even
//! while other trees in the same process open and close their own.

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

/// One descriptor a tree opened: its number and the inode it refers to (a
/// number reused later for another file does not count as this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpenFd {
    /// The descriptor number.
    pub fd: i32,
    /// The device of what it referred to.
    pub dev: u64,
    /// The inode of what it referred to (a pipe's inode is unique while
    /// either end is open).
    pub ino: u64,
}

impl OpenFd {
    /// The descriptor `fd` as it is now, if open.
    fn of(fd: i32) -> Option<Self> {
        let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
        Some(Self {
            fd,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether this descriptor still refers to what it did.
    fn is_open(&self) -> bool {
        Self::of(self.fd).is_some_and(|now| now == *self)
    }
}

/// The descriptors one tree opened. Cheap to clone; clones share the list.
#[derive(Debug, Clone, Default)]
pub struct FdLedger(Arc<Mutex<Vec<OpenFd>>>);

impl FdLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OpenFd>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records descriptors just opened (those already closed again are
    /// ignored). Entries that have been closed since are dropped, so the
    /// ledger of a long-lived tree stays as small as its open pipes.
    pub fn record(&self, fds: impl IntoIterator<Item = i32>) {
        let fresh: Vec<OpenFd> = fds.into_iter().filter_map(OpenFd::of).collect();
        let mut open = self.lock();
        open.retain(OpenFd::is_open);
        open.extend(fresh);
    }

    /// The recorded descriptors that are still open.
    pub fn still_open(&self) -> Vec<OpenFd> {
        self.lock()
            .iter()
            .copied()
            .filter(OpenFd::is_open)
            .collect()
    }
}

/// The resident memory of process `pid` in bytes (from `/proc/<pid>/statm`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    Some(pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_ledger_sees_exactly_its_own_descriptors_close() {
        let ledger = FdLedger::default();
        let (reader, writer) = std::io::pipe().unwrap();
        ledger.record([reader.as_raw_fd(), writer.as_raw_fd()]);
        assert_eq!(ledger.still_open().len(), 2);
        drop(writer);
        assert_eq!(ledger.still_open().len(), 1);
        let number = reader.as_raw_fd();
        drop(reader);
        // The number may be reused by another file: that is not ours.
        let (other, _keep) = std::io::pipe().unwrap();
        let _ = (other.as_raw_fd() == number, other);
        assert!(ledger.still_open().is_empty());
    }

    #[test]
    fn our_own_memory_is_measured() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
