//! Draining a worker's stderr: continuously, into a bounded tail and
//! rate-limited log lines.
//!
//! A worker that floods stderr must never stall on a full pipe, and must never
//! make the host buffer without bound. The drain reads in fixed chunks, keeps
//! the last [`STDERR_TAIL_BYTES`] for error reports, and logs at most
//! [`LINES_PER_SECOND`] lines a second (each cut to [`MAX_LINE`] bytes), then
//! one line saying how many it suppressed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of stderr kept for error reports.
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;
const MAX_LINE: usize = 2 * 1024;
const LINES_PER_SECOND: u32 = 50;
const CHUNK: usize = 8 * 1024;

/// The last [`STDERR_TAIL_BYTES`] bytes a worker wrote to stderr.
#[derive(Debug, Clone, Default)]
pub struct StderrTail {
    bytes: Arc<Mutex<VecDeque<u8>>>,
}

impl StderrTail {
    /// The tail as text (invalid UTF-8 replaced).
    pub fn snapshot(&self) -> String {
        let bytes = match self.bytes.lock() {
            Ok(bytes) => bytes,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (front, back) = bytes.as_slices();
        String::from_utf8_lossy(&[front, back].concat()).into_owned()
    }

    fn extend(&self, chunk: &[u8]) {
        let mut bytes = match self.bytes.lock() {
            Ok(bytes) => bytes,
            Err(poisoned) => poisoned.into_inner(),
        };
        let chunk = &chunk[chunk.len().saturating_sub(STDERR_TAIL_BYTES)..];
        let overflow = (bytes.len() + chunk.len()).saturating_sub(STDERR_TAIL_BYTES);
        bytes.drain(..overflow);
        bytes.extend(chunk);
    }
}

/// Reads `stream` to its end, feeding `tail` and the log.
pub(crate) async fn drain(
    mut stream: impl AsyncRead + Unpin,
    tail: StderrTail,
    worker_id: String,
    pid: u32,
) {
    let mut chunk = vec![0u8; CHUNK];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut limiter = RateLimit::new(LINES_PER_SECOND);
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tail.extend(&chunk[..n]);
        for &byte in &chunk[..n] {
            if byte == b'\n' {
                emit(&mut line, &mut limiter, &worker_id, pid);
            } else if line.len() < MAX_LINE {
                line.push(byte);
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut limiter, &worker_id, pid);
    }
    limiter.flush(&worker_id, pid);
}

fn emit(line: &mut Vec<u8>, limiter: &mut RateLimit, worker_id: &str, pid: u32) {
    if limiter.admit(worker_id, pid) {
        let text = String::from_utf8_lossy(line);
        tracing::info!(target: "dspex::worker::stderr", worker = worker_id, pid, "{}", text.trim_end());
    }
    line.clear();
}

/// At most `per_second` lines a second; reports what it dropped.
struct RateLimit {
    per_second: u32,
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    fn admit(&mut self, worker_id: &str, pid: u32) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.flush(worker_id, pid);
            self.window = Instant::now();
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    fn flush(&mut self, worker_id: &str, pid: u32) {
        if self.suppressed > 0 {
            tracing::warn!(
                target: "dspex::worker::stderr",
                worker = worker_id,
                pid,
                suppressed = self.suppressed,
                "stderr rate limit: {} lines not logged",
                self.suppressed
            );
            self.suppressed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_only_the_last_bytes() {
        let tail = StderrTail::default();
        tail.extend(&vec![b'a'; STDERR_TAIL_BYTES]);
        tail.extend(b"end");
        let text = tail.snapshot();
        assert_eq!(text.len(), STDERR_TAIL_BYTES);
        assert!(text.ends_with("aaaend"));
        tail.extend(&vec![b'z'; 3 * STDERR_TAIL_BYTES]);
        assert_eq!(tail.snapshot(), "z".repeat(STDERR_TAIL_BYTES));
    }

    #[tokio::test]
    async fn drain_reads_everything_and_bounds_the_tail() {
        let flood: Vec<u8> = b"line of log output\n".repeat(100_000);
        let tail = StderrTail::default();
        drain(&flood[..], tail.clone(), "w".into(), 1).await;
        let text = tail.snapshot();
        assert!(text.len() <= STDERR_TAIL_BYTES);
        assert!(text.ends_with("line of log output\n"));
    }

    #[test]
    fn rate_limit_admits_a_bounded_number_per_window() {
        let mut limit = RateLimit::new(3);
        let admitted = (0..10).filter(|_| limit.admit("w", 1)).count();
        assert_eq!(admitted, 3);
        assert_eq!(limit.suppressed, 7);
    }
}
