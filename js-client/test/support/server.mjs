// Runs the real `chat` example binary for the integration tests.
//
// CHAT_BIN names the binary; by default it is debug/chat under
// $CARGO_TARGET_DIR (relative to the repository root) or <repo>/target.
// Without the binary the suites are skipped with a SKIPPED line, unless CI is
// set, where they fail.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Scope, freePort, postJson, sleep, waitFor } from "../../../tests/node/harness.mjs";

// The repository's Node harness (tests/node/harness.mjs): the same polling and
// cleanup as the @rails/actioncable suite.
export { Scope, freePort, sleep, waitFor };

export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const CHAT_BIN =
  process.env.CHAT_BIN || resolve(REPO, process.env.CARGO_TARGET_DIR || "target", "debug", "chat");

/** `{ skip: reason }` for describe() when the binary is missing (outside CI), else `{}`. */
export function requireChatBin() {
  if (existsSync(CHAT_BIN)) return {};
  const reason = `chat binary not found at ${CHAT_BIN} (cargo build -p chat-example --bin chat, or set CHAT_BIN)`;
  if (process.env.CI) throw new Error(`${reason}; CI is set, so this is an error`);
  console.log(`SKIPPED: js-client integration tests: ${reason}`);
  return { skip: reason };
}



const live = new Set();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

/** A running chat server. */
export class ChatServer {
  static async start({ port, admin = false } = {}) {
    if (!port) port = await freePort();
    const args = ["--bind", `127.0.0.1:${port}`];
    if (admin) args.push("--admin");
    const child = spawn(CHAT_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    live.add(child);
    const server = new ChatServer(port, child);
    await waitFor(`the chat server on port ${port}`, () => {
      if (server.exit) throw new Error(`chat exited early: ${JSON.stringify(server.exit)}\n${server.log}`);
      return /listening on/.test(server.log);
    }, { timeout: 20_000, diag: () => server.log });
    return server;
  }

  constructor(port, child) {
    this.port = port;
    this.child = child;
    this.log = "";
    this.exit = null;
    this.exited = new Promise((ok) =>
      child.once("exit", (code, signal) => {
        live.delete(child);
        this.exit = { code, signal };
        ok(this.exit);
      }),
    );
    const onData = (chunk) => {
      this.log += chunk.toString("utf8").replace(/\x1b\[[0-9;]*m/g, "");
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
  }

  get origin() {
    return `http://127.0.0.1:${this.port}`;
  }

  get cableUrl() {
    return `ws://127.0.0.1:${this.port}/cable`;
  }

  /** SIGTERM (graceful: clients get `server_restart`), SIGKILL after 15 s. */
  async stop(signal = "SIGTERM") {
    if (this.exit) return this.exit;
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 15_000);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }

  post(path, body) {
    return postJson(`${this.origin}${path}`, body);
  }

  logTail(lines = 30) {
    return this.log.split("\n").slice(-lines).join("\n");
  }
}
