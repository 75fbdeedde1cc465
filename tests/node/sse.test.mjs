// Server-Sent Events with the `eventsource` npm package (the WHATWG
// EventSource for Node, nobody here wrote it):
// - cable-server configured by ANYCABLE_* variables (ANYCABLE_SSE): a public
//   stream and a signed stream receive broadcasts; a bad signature is
//   refused; a connection killed under the client is re-opened by the
//   client itself with Last-Event-ID, and exactly the missed broadcasts are
//   replayed; a POST of JSONL commands subscribes;
// - the chat example: a subscription by channel and params receives what a
//   @rails/actioncable client says in the room.
// tests/node/nginx.test.mjs runs the chat one through nginx as well.
//
//   cargo build -p cable-standalone --bin cable-server -p chat-example --bin chat
//   cd tests/node && npm ci && node --test sse.test.mjs

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";

import { broadcastKey, freePort, killAllServers, postBroadcast, sleep } from "./helpers.mjs";
import { CuttingProxy, EventSource, SSE_SECRET, SseScope, chatOverSse, signedStream } from "./sse_helpers.mjs";

const KEY = broadcastKey(SSE_SECRET);
const TAG = `${process.pid}_${Date.now()}`;

after(killAllServers);

describe("SSE on cable-server (ANYCABLE_SSE) with the eventsource package", () => {
  const scope = new SseScope();
  scope.closeAfterEach();

  it("a public stream and a signed stream receive broadcasts; a bad signature is refused", { timeout: 30_000 }, scope.wrap(async () => {
    const server = await scope.cableServer();
    const events = `http://127.0.0.1:${server.port}/events`;
    const pub = `sse_public_${TAG}`;
    const secret = `sse_signed_${TAG}`;
    const a = scope.source(`${events}?stream=${pub}`);
    const b = scope.source(`${events}?signed_stream=${encodeURIComponent(signedStream(secret))}`);
    await scope.waitFor("both subscribed", () => a.has("confirm_subscription") && b.has("confirm_subscription"));
    assert.ok(a.has("welcome"), "the welcome is an event too");
    assert.equal(await postBroadcast(server, pub, { to: "public" }, KEY), 201);
    assert.equal(await postBroadcast(server, secret, { to: "signed" }, KEY), 201);
    await scope.waitFor("each got its own", () => a.messages.length >= 1 && b.messages.length >= 1);
    await sleep(300);
    assert.deepEqual(a.messages.map((m) => m.data), [{ to: "public" }]);
    assert.deepEqual(b.messages.map((m) => m.data), [{ to: "signed" }]);
    assert.match(a.messages[0].id, new RegExp(`^1/[^/]+/${pub}$`), "id: offset/epoch/stream");

    const forged = scope.source(`${events}?signed_stream=${encodeURIComponent(signedStream(secret, "not-the-secret"))}`);
    await scope.waitFor("the forged one failed", () => forged.errors > 0 && forged.source.readyState === EventSource.CLOSED);
    assert.equal(forged.opened, 0);
    const res = await fetch(`${events}?signed_stream=${encodeURIComponent(signedStream(secret, "x"))}`);
    assert.equal(res.status, 400);
  }));

  it("a killed connection is re-opened by the client with Last-Event-ID and exactly what it missed is replayed", { timeout: 40_000 }, scope.wrap(async () => {
    const server = await scope.cableServer();
    const proxy = await CuttingProxy.start(server.port);
    scope.proxies.push(proxy);
    const stream = `sse_resume_${TAG}`;
    const c = scope.source(`http://127.0.0.1:${proxy.port}/events?stream=${stream}`);
    await scope.waitFor("subscribed", () => c.has("confirm_subscription"));
    for (const n of [1, 2]) assert.equal(await postBroadcast(server, stream, { n }, KEY), 201);
    await scope.waitFor("1 and 2", () => c.messages.length === 2);
    proxy.cut();
    // While the client is away (it retries after its reconnection delay).
    for (const n of [3, 4]) assert.equal(await postBroadcast(server, stream, { n }, KEY), 201);
    await scope.waitFor("the client re-opened the stream", () => c.opened >= 2, { timeout: 15_000 });
    await scope.waitFor("the history was replayed", () => c.has("confirm_history"));
    assert.equal(await postBroadcast(server, stream, { n: 5 }, KEY), 201);
    await scope.waitFor("5 live", () => c.messages.length >= 5);
    await sleep(300);
    assert.deepEqual(c.messages.map((m) => m.data.n), [1, 2, 3, 4, 5], "each once, in order");
    const offsets = c.messages.map((m) => Number(m.id.split("/")[0]));
    assert.deepEqual(offsets, [1, 2, 3, 4, 5]);
  }));

  it("a POST of JSONL commands subscribes and streams whole frames", { timeout: 30_000 }, scope.wrap(async () => {
    const server = await scope.cableServer();
    const stream = `sse_post_${TAG}`;
    const identifier = JSON.stringify({ channel: "$pubsub", stream_name: stream });
    const body = `${JSON.stringify({ command: "subscribe", identifier })}\n`;
    const c = scope.source(`http://127.0.0.1:${server.port}/events`, {
      method: "POST",
      body,
      headers: { "Content-Type": "application/x-ndjson" },
    });
    await scope.waitFor("subscribed", () => c.has("confirm_subscription"));
    assert.equal(await postBroadcast(server, stream, { via: "post" }, KEY), 201);
    await scope.waitFor("the frame", () => c.messages.length === 1);
    const frame = c.messages[0].data;
    assert.equal(frame.identifier, identifier);
    assert.deepEqual(frame.message, { via: "post" });
    assert.equal(frame.stream_id, stream);
  }));
});

describe("SSE on the chat example", () => {
  const scope = new SseScope();
  scope.closeAfterEach();

  it("a subscription by channel and params hears the room", { timeout: 30_000 }, scope.wrap(async () => {
    const server = await scope.startServer({ port: await freePort() });
    await chatOverSse(scope, `http://127.0.0.1:${server.port}`, server.cableUrl);
  }));
});
