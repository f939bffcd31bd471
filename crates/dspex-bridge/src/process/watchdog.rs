//! The tree's watchdog: kills every process of a run tag once the host is
//! gone, however it went.
//!
//! Workers die with their host through the parent-death signal, but a
//! worker's own children (a `subprocess` the Python code started) do not, and
//! when the host is SIGKILLed nobody is left to kill their process groups.
//! The watchdog is a tiny `/bin/sh` process, in its own process group and
//! deaf to INT/TERM/HUP, that blocks reading a pipe from the host. When the
//! host exits — cleanly, by a signal, or by SIGKILL — the kernel closes the
//! pipe; the watchdog then SIGKILLs every process (and process group)
//! carrying the tree's `DSPEX_RUN_TAG`, repeating until none is left, and
//! exits. Dropping the [`Watchdog`] closes the pipe too, so a tree that shuts
//! down gets the same final sweep.

use std::process::Stdio;

use tokio::process::{Child, ChildStdin, Command};

use super::RunTag;

const SCRIPT: &str = r#"
trap '' INT TERM HUP
tag="$1"
while read -r _; do :; done
sweep() {
  found=1
  for f in $(grep -lszxF "DSPEX_RUN_TAG=$tag" /proc/[0-9]*/environ); do
    pid=${f#/proc/}; pid=${pid%/environ}
    kill -9 -"$pid" "$pid" 2>/dev/null
    found=0
  done
  return $found
}
n=0
while sweep && [ "$n" -lt 50 ]; do n=$((n + 1)); done
"#;

/// Holds the pipe whose end is the watchdog's signal. See the module docs.
#[derive(Debug)]
pub struct Watchdog {
    _pipe: ChildStdin,
}

impl Watchdog {
    /// Starts the watchdog of `tag`. Must be called inside a tokio runtime
    /// (a task reaps the watchdog when it exits).
    ///
    /// # Errors
    /// The OS error if `/bin/sh` cannot be started.
    pub fn start(tag: &RunTag, fds: &super::FdLedger) -> std::io::Result<Self> {
        let mut child: Child = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("dspex-watchdog")
            .arg(tag.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("watchdog has no stdin"))?;
        fds.record([std::os::fd::AsRawFd::as_raw_fd(&pipe)]);
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(Self { _pipe: pipe })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{RUN_TAG_ENV, tagged_processes};
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn dropping_the_watchdog_kills_the_tagged_processes() {
        let tag = RunTag::new();
        let watchdog = Watchdog::start(&tag, &crate::process::FdLedger::default()).unwrap();
        // A stray, as a worker's subprocess would be: tagged, not our worker.
        let mut stray = std::process::Command::new("sleep")
            .arg("1000")
            .env(RUN_TAG_ENV, tag.as_str())
            .spawn()
            .unwrap();
        // Its environment shows the tag once it has exec'd.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tagged_processes(&tag) != [stray.id()] {
            assert!(Instant::now() < deadline, "the stray never showed its tag");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(watchdog);
        loop {
            if let Some(status) = stray.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), Some(9));
                break;
            }
            assert!(Instant::now() < deadline, "the stray survived the watchdog");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
