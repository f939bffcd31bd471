//! Capturing this test binary's log lines (the host's and, folded into
//! them, the workers' stderr).

use std::sync::{Arc, Mutex, OnceLock};

/// Every log line captured so far.
pub type Logs = Arc<Mutex<String>>;

/// Installs (once per test binary) a subscriber that keeps every log line
/// at `filter` (an `EnvFilter` directive, e.g. `dspex=debug`); later calls
/// return the same capture.
pub fn capture(filter: &str) -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct Writer(Logs);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
