// The nginx configuration of docs/deployment.md (docs/nginx/cable.conf),
// run by Debian's nginx in front of the chat example: the unmodified
// @rails/actioncable client connects, subscribes and chats through it; an
// EventSource (the `eventsource` package) hears the room over SSE through it,
// resumes with Last-Event-ID after a cut in front of it, and a POST of
// commands passes.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import net from "node:net";
import { fileURLToPath } from "node:url";
import { freePort, sleep } from "./helpers.mjs";
import { CuttingProxy, SseScope, chatOverSse } from "./sse_helpers.mjs";

const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx"].find((p) => existsSync(p));
const CONF = fileURLToPath(new URL("../../docs/nginx/cable.conf", import.meta.url));

function listening(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("connect", () => { s.destroy(); resolve(true); });
    s.on("error", () => resolve(false));
  });
}

describe("through nginx (docs/nginx/cable.conf)", { skip: !NGINX && !process.env.CI ? "SKIPPED: nginx not installed (apt-get install nginx-light)" : false }, () => {
  const scope = new SseScope();
  let nginx;
  let port;
  let dir;
  let log = "";
  let server;

  before(async () => {
    assert.ok(NGINX, "nginx is required in CI");
    server = await scope.startServer({ port: await freePort(), admin: true });
    port = await freePort();
    dir = mkdtempSync(path.join(tmpdir(), "cable-nginx-"));
    for (const d of ["body", "proxy", "fastcgi", "uwsgi", "scgi"]) mkdirSync(path.join(dir, d));
    const site = readFileSync(CONF, "utf8")
      .replace("server 127.0.0.1:28080;", `server 127.0.0.1:${server.port};`)
      .replace("listen 80;", `listen 127.0.0.1:${port};`);
    assert.notEqual(site, readFileSync(CONF, "utf8"), "addresses replaced");
    writeFileSync(path.join(dir, "cable.conf"), site);
    writeFileSync(
      path.join(dir, "nginx.conf"),
      `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  include ${dir}/cable.conf;
}
`,
    );
    nginx = spawn(NGINX, ["-p", dir, "-c", path.join(dir, "nginx.conf")], { stdio: ["ignore", "pipe", "pipe"] });
    nginx.stdout.on("data", (d) => (log += d));
    nginx.stderr.on("data", (d) => (log += d));
    await scope.waitFor(`nginx listening (${log})`, () => listening(port));
  });

  after(async () => {
    await scope.closeAll();
    if (nginx) {
      nginx.kill("SIGTERM");
      await new Promise((r) => nginx.once("exit", r));
    }
  });

  it("the unmodified client connects, subscribes and chats through the proxy", { timeout: 30_000 }, scope.wrap(async () => {
    const url = `ws://127.0.0.1:${port}/cable`;
    const alice = await scope.client({ url, user: "alice" });
    const bob = await scope.client({ url, user: "bob" });
    const sub = alice.subscribe({ channel: "ChatChannel", room: "lobby" });
    bob.subscribe({ channel: "ChatChannel", room: "lobby" });
    await scope.waitFor("both connected through nginx", () => alice.has("lobby", "connected") && bob.has("lobby", "connected"));
    assert.equal(alice.sockets[0].protocol, "actioncable-v1-json", "subprotocol passed through");
    sub.perform("speak", { body: "via nginx" });
    await scope.waitFor("bob receives alice's message", () => bob.has("lobby", "received"));
    assert.deepEqual(bob.seq("lobby").at(-1), { cb: "received", arg: { user: "alice", body: "via nginx" } });
    // Pings keep flowing through the proxy (one every 3 s).
    await sleep(3_500);
    assert.ok(alice.framesIn().some((f) => f.type === "ping"), "pings arrive through nginx");
    // /health is proxied too.
    const res = await fetch(`http://127.0.0.1:${port}/health`);
    assert.ok([200, 404].includes(res.status), `health answered ${res.status}`);
  }));

  it("Server-Sent Events pass through the proxy as they come", { timeout: 30_000 }, scope.wrap(async () => {
    await chatOverSse(scope, `http://127.0.0.1:${port}`, `ws://127.0.0.1:${port}/cable`);
  }));

  /** Says `{n}` in the lobby through the chat's admin endpoint. */
  async function say(n) {
    const res = await server.post("/admin/broadcast", { stream: "chat_lobby", message: { n } });
    assert.equal(res.status, 200, JSON.stringify(res));
  }

  it("an SSE connection cut in front of nginx resumes with Last-Event-ID, exactly what was missed", { timeout: 40_000 }, scope.wrap(async () => {
    const proxy = await CuttingProxy.start(port);
    scope.proxies.push(proxy);
    const params = encodeURIComponent(JSON.stringify({ room: "lobby" }));
    const c = scope.source(`http://127.0.0.1:${proxy.port}/events?user=ivy&channel=ChatChannel&params=${params}`);
    await scope.waitFor("subscribed through nginx", () => c.has("confirm_subscription"));
    const before = c.messages.length;
    for (const n of [1, 2]) await say(n);
    await scope.waitFor("1 and 2", () => c.messages.length === before + 2);
    proxy.cut();
    for (const n of [3, 4]) await say(n);
    await scope.waitFor("re-opened through nginx", () => c.opened >= 2, { timeout: 15_000 });
    await scope.waitFor("the history replayed", () => c.has("confirm_history"));
    await say(5);
    await scope.waitFor("5 live", () => c.messages.length >= before + 5);
    await sleep(300);
    assert.deepEqual(c.messages.slice(before).map((m) => m.data.n), [1, 2, 3, 4, 5], "each once, in order");
  }));

  it("a POST of JSONL commands passes through nginx", { timeout: 30_000 }, scope.wrap(async () => {
    const identifier = JSON.stringify({ channel: "ChatChannel", room: "lobby" });
    const c = scope.source(`http://127.0.0.1:${port}/events?user=jon`, {
      method: "POST",
      body: `${JSON.stringify({ command: "subscribe", identifier })}\n`,
      headers: { Origin: "http://localhost:3000" },
    });
    await scope.waitFor("subscribed by POST through nginx", () => c.has("confirm_subscription"));
    await say(7);
    await scope.waitFor("the whole frame", () => c.messages.some((m) => m.data.message?.n === 7));
  }));
});
