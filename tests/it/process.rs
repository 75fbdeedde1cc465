//! Child processes for the end-to-end tests: servers that print the address
//! they listen on (chat, Rails' puma), and tools run to completion
//! (`redis-cli`, `psql`, `ruby`), every wait bounded.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a server process may take to start listening (or a tool, or a
/// process expected to exit, to finish).
pub const START_WAIT: Duration = Duration::from_secs(15);

/// Log lines kept per process (the floods of the hostile tests log a lot).
const LOG_LINES: usize = 500;

/// A running server process; killed on drop, its last log lines printed
/// when the test is failing.
pub struct Server {
    pub addr: SocketAddr,
    name: String,
    child: Child,
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Spawns `cmd` (named `name` in failures) and waits until a line of its
    /// stdout or stderr contains `marker` followed by the address it listens
    /// on (`marker` ends with `http://`).
    pub async fn spawn(name: &str, mut cmd: Command, marker: &'static str) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for pipe in [
            Box::new(stdout) as Box<dyn Read + Send>,
            Box::new(stderr) as Box<dyn Read + Send>,
        ] {
            let (logs, tx) = (logs.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some((_, addr)) = line.split_once(marker) {
                        if let Some(tx) = tx.lock().expect("tx lock").take() {
                            let _ = tx.send(addr.trim().to_owned());
                        }
                    }
                    let mut l = logs.lock().expect("log lock");
                    if l.len() >= LOG_LINES {
                        l.pop_front();
                    }
                    l.push_back(line);
                }
                // Both readers done: dropping the last sender tells the waiter.
            });
        }
        drop(tx);
        let mut server = Server {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            name: name.to_owned(),
            child,
            logs,
        };
        match tokio::time::timeout(START_WAIT, rx).await {
            Ok(Ok(addr)) => server.addr = addr.parse().expect("listening address"),
            Ok(Err(_)) => panic!(
                "{name} exited before listening ({:?}):\n{}",
                server.child.wait(),
                server.log_text()
            ),
            Err(_) => panic!(
                "{name} not listening within {START_WAIT:?}:\n{}",
                server.log_text()
            ),
        }
        server
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

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- last log lines of {} on {} ---\n{}",
                self.name,
                self.addr,
                self.log_text()
            );
        }
    }
}

/// Runs `cmd` to completion within `limit`, capturing its output;
/// Err(NotFound) when the program is missing. Killed (and a panic) past the
/// limit.
pub async fn run_with_timeout(mut cmd: Command, limit: Duration) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn()?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let deadline = tokio::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running after {limit:?}:\n{}",
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    })
}

/// Prints why a test is skipped and returns None; a failure when `CI` is set
/// (CI has every service and tool, so a skip there hides a broken setup).
pub fn skip<T>(why: &str) -> Option<T> {
    assert!(
        std::env::var_os("CI").is_none(),
        "{why} (CI is set, so this is a failure)"
    );
    println!("SKIPPED: {why}");
    None
}

/// Runs the tool `program` with `args` to completion, or None (after
/// printing why) when it is not installed; a failure instead when `CI` is
/// set.
pub async fn tool(program: &str, args: &[&str]) -> Option<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    match run_with_timeout(cmd, START_WAIT).await {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            skip(&format!("{program} not found on PATH"))
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}
