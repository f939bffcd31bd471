//! [`DirectSpawner`]: `fork`+`exec` of the interpreter from one dedicated,
//! long-lived OS thread.
//!
//! Linux delivers the parent-death signal when the *thread* that created the
//! child exits, not the process. A tokio blocking-pool thread retires after
//! ten idle seconds, which would SIGKILL every worker it had spawned; the
//! spawner's own thread lives exactly as long as the spawner, so its workers
//! get the signal only when their tree is gone (or the host dies).

#![allow(unsafe_code)] // `pre_exec` is the only way to set up the child before `exec`.

use std::io;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::{Exit, ProcessControl, SpawnError, SpawnStrategy, Spawned, WorkerCommand};

type Job = (WorkerCommand, oneshot::Sender<Result<Spawned, SpawnError>>);

/// Spawns workers as direct children, from a dedicated thread.
///
/// Each worker gets its own process group, `PR_SET_PDEATHSIG(SIGKILL)` tied to
/// the spawner thread, piped stdio (close-on-exec) and `kill_on_drop`. The
/// thread ends when the spawner is dropped; any worker still alive then is
/// killed by the parent-death signal, so keep the spawner alive as long as its
/// workers (a tree holds it in an `Arc`).
#[derive(Debug)]
pub struct DirectSpawner {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DirectSpawner {
    /// Starts the spawner thread, named `name` (shown in `ps -L`).
    ///
    /// Must be called inside a tokio runtime: children are registered with
    /// that runtime's process driver.
    ///
    /// # Errors
    /// The OS error if the thread cannot be created.
    pub fn new(name: &str) -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (jobs, inbox) = mpsc::channel::<Job>();
        let thread = thread::Builder::new()
            .name(format!("{name}-spawner"))
            .spawn(move || {
                let _runtime = runtime.enter();
                for (command, reply) in inbox {
                    let spawned = spawn_child(&command);
                    if let Err(Ok(orphan)) = reply.send(spawned) {
                        // The caller gave up: do not leak what it asked for.
                        drop(orphan.control);
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }
}

impl Drop for DirectSpawner {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl SpawnStrategy for DirectSpawner {
    fn spawn(&self, command: WorkerCommand) -> BoxFuture<'static, Result<Spawned, SpawnError>> {
        let (reply, result) = oneshot::channel();
        let worker_id = command.worker_id.clone();
        let interpreter = command.interpreter.clone();
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send((command, reply)).is_ok());
        async move {
            let stopped = || SpawnError {
                worker_id: worker_id.clone(),
                interpreter: interpreter.clone(),
                source: io::Error::other("the spawner has stopped"),
            };
            if !sent {
                return Err(stopped());
            }
            result.await.unwrap_or_else(|_| Err(stopped()))
        }
        .boxed()
    }
}

fn spawn_child(command: &WorkerCommand) -> Result<Spawned, SpawnError> {
    let parent = std::process::id();
    let inherit: Vec<libc::c_int> = command
        .inherit_fds
        .iter()
        .map(|fd| fd.as_raw_fd())
        .collect();
    let mut cmd = Command::new(&command.interpreter);
    cmd.arg("-m")
        .arg("dspex_bridge")
        .arg("--worker-id")
        .arg(&command.worker_id)
        .args(&command.args)
        .env("PYTHONPATH", &command.python_path)
        .env("PYTHONUNBUFFERED", "1")
        // litellm would fetch its model price map from the network on the
        // first priced call (5 s timeout): its bundled copy is enough.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env(super::RUN_TAG_ENV, command.run_tag.as_str())
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, fcntl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody
            // would ever send the signal, so leave now.
            if libc::getppid() != parent as libc::pid_t {
                libc::_exit(1);
            }
            // Only the child's copies lose close-on-exec.
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| SpawnError {
        worker_id: command.worker_id.clone(),
        interpreter: command.interpreter.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or_default();
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(SpawnError {
            worker_id: command.worker_id.clone(),
            interpreter: command.interpreter.clone(),
            source: io::Error::other("child has no piped stdio"),
        });
    };
    command
        .fds
        .record([stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()]);
    Ok(Spawned {
        pid,
        stdin: Box::new(stdin),
        stdout: Box::new(stdout),
        stderr: Box::new(stderr),
        control: Box::new(ChildControl { child }),
        signaller: super::Signaller::process_group(pid),
    })
}

/// A direct child, reaped by tokio.
#[derive(Debug)]
struct ChildControl {
    child: Child,
}

impl ProcessControl for ChildControl {
    fn wait(&mut self) -> BoxFuture<'_, io::Result<Exit>> {
        async move { self.child.wait().await.map(Exit::from_status) }.boxed()
    }
}

/// Sends `signal` to process group `pgid`; a group that is gone is fine.
pub(crate) fn signal_group(pgid: u32, signal: nix::sys::signal::Signal) -> io::Result<()> {
    let Ok(pgid) = i32::try_from(pgid) else {
        return Ok(());
    };
    if pgid <= 1 {
        // Never signal "every process" or init, whatever a caller passed.
        return Ok(());
    }
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => Err(io::Error::from(errno)),
    }
}
