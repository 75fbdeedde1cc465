// Turbo Streams through @anycable/turbo-stream, unmodified from npm, in a real
// browser (Debian's Chromium driven by playwright-core) against the
// cable-server binary configured by AnyCable's ANYCABLE_* variables alone.
//
// A small page (served by this test from node_modules, with an import map)
// runs @anycable/web, @anycable/turbo-stream and @hotwired/turbo, and holds a
// <turbo-cable-stream-source> whose signed-stream-name is signed as
// turbo-rails and AnyCable sign it (Base64(JSON(name)) "--" hex HMAC-SHA256,
// the key being ANYCABLE_TURBO_STREAMS_SECRET). The app's side is played by
// this test: a Turbo Stream rendered as HTML is POSTed to /_broadcast in
// AnyCable's format, and Turbo applies it to the page. For "to others", a
// Turbo form submission carries the page's session id as X-Socket-ID
// (`requestSocketIDHeader`), the app broadcasts with that header, and every
// page but the sender's gets the update.
//
// Env: CABLE_SERVER_BIN (default: debug/cable-server under $CARGO_TARGET_DIR
// or <repo>/target), CHROMIUM (default /usr/bin/chromium). Without either
// the suite prints a SKIPPED line, unless CI is set (then it fails).

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import http from "node:http";
import { resolve, normalize } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

import { CHROMIUM, CHROMIUM_ARGS, binary, freePort, skipReason, startServer } from "./support.mjs";

const MODULES = fileURLToPath(new URL("./node_modules/", import.meta.url));
const SERVER_BIN = binary("CABLE_SERVER_BIN", "cable-server");

const SECRET = "anycable-app-secret-for-turbo-tests";
const TURBO_SECRET = "turbo-streams-secret-for-tests";
const BROADCAST_KEY = createHmac("sha256", SECRET).update("broadcast-cable").digest("hex");

const skip = skipReason("Turbo browser tests", [
  [SERVER_BIN, "cable-server (cargo build -p cable-standalone --bin cable-server)"],
  [resolve(MODULES, "@anycable/turbo-stream"), "@anycable/turbo-stream (npm ci in tests/browser)"],
]);

/** A signed stream name as turbo-rails' `signed_stream_name` makes it with a raw key. */
function signed(name, key = TURBO_SECRET) {
  const encoded = Buffer.from(JSON.stringify(name)).toString("base64");
  return `${encoded}--${createHmac("sha256", key).update(encoded).digest("hex")}`;
}

/** cable-server on `port`, configured by ANYCABLE_* variables only. */
async function startCable(port) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(ANY)?CABLE_/.test(k)));
  Object.assign(env, {
    ANYCABLE_PORT: String(port),
    ANYCABLE_SECRET: SECRET,
    ANYCABLE_TURBO_STREAMS: "true",
    ANYCABLE_TURBO_STREAMS_SECRET: TURBO_SECRET,
    ANYCABLE_BROADCAST_ADAPTER: "http",
  });
  const server = await startServer(SERVER_BIN, [], env);
  return { url: `ws://127.0.0.1:${port}/cable`, http: `http://127.0.0.1:${port}`, ...server };
}

/** POSTs AnyCable's broadcast body; `headers` add to it (X-Socket-ID). */
async function broadcast(cable, stream, html, headers = {}) {
  const res = await fetch(`${cable.http}/_broadcast`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${BROADCAST_KEY}`, ...headers },
    // turbo-rails broadcasts the rendered HTML as the message: JSON text of a string.
    body: JSON.stringify({ stream, data: JSON.stringify(html) }),
  });
  return res.status;
}

function append(id, text) {
  return `<turbo-stream action="append" target="messages"><template><p id="${id}">${text}</p></template></turbo-stream>`;
}

const IMPORTS = {
  "@anycable/web": "/m/@anycable/web/index.js",
  "@anycable/core": "/m/@anycable/core/index.js",
  nanoevents: "/m/nanoevents/index.js",
  "@anycable/turbo-stream": "/m/@anycable/turbo-stream/index.js",
  "@hotwired/turbo": "/m/@hotwired/turbo/dist/turbo.es2017-esm.js",
};

function page(cableUrl, signedName) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>turbo</title>
<script type="importmap">${JSON.stringify({ imports: IMPORTS })}</script>
<script type="module">
  import * as Turbo from "@hotwired/turbo";
  import { createCable } from "@anycable/web";
  import { start } from "@anycable/turbo-stream";
  const cable = createCable(${JSON.stringify(cableUrl)}, { protocol: "actioncable-v1-ext-json", logLevel: "error" });
  start(cable, { requestSocketIDHeader: true });
  cable.on("connect", () => { document.body.dataset.sid = cable.sessionId || ""; });
  window.cable = cable;
  window.Turbo = Turbo;
</script></head>
<body>
<turbo-cable-stream-source channel="Turbo::StreamsChannel" signed-stream-name="${signedName}"></turbo-cable-stream-source>
<form id="say" action="/say" method="post"><input name="body" value="from the sender"><button>say</button></form>
<div id="messages"></div>
</body></html>`;
}

/** The app: serves the page and the npm modules, and broadcasts what /say gets to others. */
async function startApp(cable, stream) {
  const said = [];
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html" });
      return res.end(page(cable.url, signed(stream)));
    }
    if (url.pathname.startsWith("/m/")) {
      const file = normalize(resolve(MODULES, `.${url.pathname.slice(2)}`));
      if (!file.startsWith(MODULES) || !existsSync(file)) {
        res.writeHead(404);
        return res.end();
      }
      res.writeHead(200, { "content-type": "text/javascript" });
      return res.end(readFileSync(file));
    }
    if (url.pathname === "/say" && req.method === "POST") {
      const socketId = req.headers["x-socket-id"];
      said.push(socketId);
      // As Rails' `broadcast_append_to ... to_others` via AnyCable: the
      // request's X-Socket-ID goes with the broadcast.
      const status = await broadcast(cable, stream, append(`said-${said.length}`, "to others"), { "X-Socket-ID": socketId || "" });
      res.writeHead(status === 201 ? 200 : 500, { "content-type": "text/vnd.turbo-stream.html" });
      return res.end("");
    }
    res.writeHead(404);
    res.end();
  });
  const port = await freePort();
  await new Promise((ok) => server.listen(port, "127.0.0.1", ok));
  return { origin: `http://127.0.0.1:${port}`, said, close: () => new Promise((ok) => server.close(ok)) };
}

if (skip) it("@anycable/turbo-stream in headless Chromium", { skip }, () => {});

describe("@anycable/turbo-stream in headless Chromium, against cable-server configured by ANYCABLE_*", { skip: !!skip }, () => {
  const STREAM = "Z2lkOi8vYXBwL1Jvb20vMQ:messages";
  let browser;
  let cable;
  let app;

  before(async () => {
    const { chromium } = await import("playwright-core");
    cable = await startCable(await freePort());
    app = await startApp(cable, STREAM);
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  });

  after(async () => {
    await browser?.close();
    await app?.close();
    await cable?.stop();
  });

  async function open() {
    const context = await browser.newContext();
    const p = await context.newPage();
    const errors = [];
    p.on("pageerror", (e) => errors.push(String(e)));
    await p.goto(app.origin);
    // Connected, and the stream source confirmed (turbo-stream sets `connected`).
    await p.waitForFunction(() => document.querySelector("turbo-cable-stream-source")?.hasAttribute("connected"), null, {
      timeout: 20_000,
    });
    return { page: p, context, errors };
  }

  const texts = (c) => c.page.$$eval("#messages p", (ps) => ps.map((p) => `${p.id}:${p.textContent}`));

  it("a Turbo Stream broadcast to a signed stream is applied to every page", { timeout: 60_000 }, async () => {
    const a = await open();
    const b = await open();
    try {
      assert.equal(await broadcast(cable, STREAM, append("m1", "hello turbo")), 201);
      for (const c of [a, b]) {
        await c.page.waitForSelector("#m1", { timeout: 10_000 });
      }
      assert.deepEqual(await texts(a), ["m1:hello turbo"]);
      assert.deepEqual(await texts(b), ["m1:hello turbo"]);
      // A name signed with another key is refused: that page never connects.
      const bad = await browser.newContext();
      const p = await bad.newPage();
      await p.goto(app.origin);
      await p.evaluate((name) => {
        const el = document.createElement("turbo-cable-stream-source");
        el.id = "forged";
        el.setAttribute("channel", "Turbo::StreamsChannel");
        el.setAttribute("signed-stream-name", name);
        document.body.append(el);
      }, signed(STREAM, "not-the-turbo-secret"));
      await sleep(1_000);
      assert.equal(await p.evaluate(() => document.getElementById("forged").hasAttribute("connected")), false);
      await bad.close();
      assert.deepEqual(a.errors, []);
      assert.deepEqual(b.errors, []);
    } finally {
      await a.context.close();
      await b.context.close();
    }
  });

  it("to others: a Turbo request's X-Socket-ID keeps the sender's page out", { timeout: 60_000 }, async () => {
    const sender = await open();
    const other = await open();
    try {
      await sender.page.waitForFunction(() => !!document.body.dataset.sid, null, { timeout: 10_000 });
      const sid = await sender.page.evaluate(() => document.body.dataset.sid);
      await sender.page.click("#say button");
      await other.page.waitForSelector("#said-1", { timeout: 10_000 });
      assert.deepEqual(app.said, [sid], "Turbo sent the session id as X-Socket-ID");
      // A later broadcast to all reaches the sender, so it would have shown said-1 by now.
      assert.equal(await broadcast(cable, STREAM, append("all", "to all")), 201);
      await sender.page.waitForSelector("#all", { timeout: 10_000 });
      assert.deepEqual(await texts(sender), ["all:to all"]);
      assert.deepEqual(await texts(other), ["said-1:to others", "all:to all"]);
    } finally {
      await sender.context.close();
      await other.context.close();
    }
  });
});
