//! Real `chat` processes: the chat example's command line, built as this
//! package's `chat-node` binary (or `$CHAT_BIN`, a release build say).

use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use crate::process::{run_with_timeout, Server, START_WAIT};

/// `$CHAT_BIN`, or this package's `chat-node`.
pub fn chat_bin() -> PathBuf {
    std::env::var_os("CHAT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_chat-node")))
}

fn chat_command(args: &[&str], rust_log: &str) -> Command {
    let mut cmd = Command::new(chat_bin());
    cmd.args(args).env("RUST_LOG", rust_log);
    cmd
}

/// A running `chat` process on a free port (a [`Server`]).
pub struct Chat(Server);

newtype_deref!(Chat => Server);

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
        let cmd = chat_command(&args, rust_log);
        Chat(Server::spawn("chat", cmd, "chat example listening on http://").await)
    }

    /// `POST /admin/disconnect` (needs `--admin`): Rails'
    /// `remote_connections.where(current_user: user).disconnect(reconnect:)`,
    /// accepted.
    pub async fn disconnect_user(&self, user: &str, reconnect: bool) {
        let body = serde_json::json!({"user": user, "reconnect": reconnect}).to_string();
        let (status, answer) = self.post("/admin/disconnect", &body).await;
        assert_eq!((status, answer.as_str()), (200, r#"{"ok":true}"#), "{body}");
    }
}

/// Runs `chat ARGS…` expecting it to exit by itself within [`START_WAIT`];
/// returns its status and stderr.
pub async fn chat_exit(args: &[&str]) -> (ExitStatus, String) {
    let out = run_with_timeout(chat_command(args, "info"), START_WAIT)
        .await
        .expect("spawn chat");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
