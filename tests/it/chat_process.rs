//! Real `chat` processes (the chat example's command line, built as this
//! package's `chat-node` binary, or `$CHAT_BIN`): started on a free port,
//! killed on drop, their last log lines printed when the test is failing.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a `chat` process may take to start listening (or to exit).
pub const START_WAIT: Duration = Duration::from_secs(15);

/// Log lines kept per process (the floods of the hostile tests log a lot).
const LOG_LINES: usize = 500;

/// `$CHAT_BIN` (a release build, say), or this package's `chat-node`.
pub fn chat_bin() -> PathBuf {
    std::env::var_os("CHAT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_chat-node")))
}

fn chat_command(args: &[&str], rust_log: &str) -> Command {
    let mut cmd = Command::new(chat_bin());
    cmd.args(args)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A running `chat` process on a free port.
pub struct Chat {
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl Chat {
    /// Starts `chat --bind 127.0.0.1:0 ARGS…` logging at `info` and waits
    /// until it listens.
    pub async fn start(args: &[&str]) -> Chat {
        Chat::start_logging(args, "info").await
    }

    /// [`Chat::start`] with `RUST_LOG=rust_log` (it must keep
    /// `chat_example=info`: the startup line gives the address).
    pub async fn start_logging(args: &[&str], rust_log: &str) -> Chat {
        let args = [&["--bind", "127.0.0.1:0"][..], args].concat();
        let mut child = chat_command(&args, rust_log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", chat_bin().display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        std::thread::spawn({
            let logs = logs.clone();
            move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some((_, addr)) = line.split_once("chat example listening on http://") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr.trim().to_owned());
                        }
                    }
                    let mut l = logs.lock().expect("log lock");
                    if l.len() >= LOG_LINES {
                        l.pop_front();
                    }
                    l.push_back(line);
                }
            }
        });
        let mut chat = Chat {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            logs,
        };
        // The reader drops `tx` without sending if chat exits first.
        match tokio::time::timeout(START_WAIT, rx).await {
            Ok(Ok(addr)) => chat.addr = addr.parse().expect("listening address"),
            Ok(Err(_)) => panic!(
                "chat {args:?} exited before listening ({:?}):\n{}",
                chat.child.wait(),
                chat.log_text()
            ),
            Err(_) => panic!(
                "chat {args:?} not listening within {START_WAIT:?}:\n{}",
                chat.log_text()
            ),
        }
        chat
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its last log lines.
    pub fn log_text(&self) -> String {
        let l = self.logs.lock().expect("log lock");
        l.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// `POST path` with a JSON body to this process; (status, body).
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        cable_test::http(self.addr, "POST", path, &[], Some(body)).await
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- last log lines of chat on {} ---\n{}",
                self.addr,
                self.log_text()
            );
        }
    }
}

/// Runs `chat ARGS…` expecting it to exit by itself within [`START_WAIT`];
/// returns its status and stderr. Killed if it does not.
pub async fn chat_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = chat_command(args, "info").spawn().expect("spawn chat");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = tokio::time::Instant::now() + START_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chat") {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chat {args:?} still running after {START_WAIT:?}:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (status, reader.join().expect("stderr reader"))
}
