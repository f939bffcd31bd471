//! [`LmServer`]: an OpenAI-compatible LM server on loopback, for tests of
//! the real HTTP path (litellm → `/v1/chat/completions`) without a hosted
//! LLM. It answers as the offline `dummy` LM does, with token usage and
//! streaming (`python -m dspex_bridge.openai_stub`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dspex_protocol::{LmConfig, Secret};

use crate::managed_python;

/// A running stub server. Dropping it stops it and reaps it.
#[derive(Debug)]
pub struct LmServer {
    child: Child,
    port: u16,
}

impl LmServer {
    /// Starts a server on a free loopback port; `latency_ms` delays each
    /// answer.
    ///
    /// # Errors
    /// When Python cannot run it or it does not say its port within 30 s.
    pub fn start(latency_ms: u64) -> anyhow::Result<Self> {
        let python = managed_python()?;
        let mut child = Command::new(&python.interpreter)
            .args([
                "-m",
                "dspex_bridge.openai_stub",
                "--port",
                "0",
                "--exit-on-eof",
            ])
            .arg("--latency-ms")
            .arg(latency_ms.to_string())
            .env("PYTHONPATH", python.python_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the LM server did not say its port within 30 s");
            }
        };
        let port = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("port")?.as_u64())
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the LM server said {line:?}, not its port");
        };
        Ok(Self { child, port })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its base URL (`http://127.0.0.1:PORT/v1`).
    pub fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// An LM configuration that reaches it through litellm's OpenAI
    /// provider, under the model name `model`.
    pub fn lm(&self, model: &str) -> LmConfig {
        LmConfig {
            model: format!("openai/{model}"),
            api_key: Some(Secret::new("stub-key")),
            api_base: Some(self.api_base()),
            ..LmConfig::default()
        }
    }
}

impl Drop for LmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
