// The closing handshake as a client nobody here wrote sees it: `ws` (the
// WebSocket @rails/actioncable runs on under Node). Before cable answered a
// client's Close, every client-side close ended as 1006 (abnormal).

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import WebSocket from "ws";

import { ORIGIN, PROTOCOL, Scope, killAllServers } from "./helpers.mjs";

after(killAllServers);

function open(url, user) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, [PROTOCOL], { headers: { Origin: ORIGIN, Cookie: `user=${user}` } });
    ws.once("message", () => resolve(ws)); // the welcome
    ws.once("error", reject);
  });
}

function closed(ws) {
  return new Promise((resolve) => ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
}

describe("closing handshake (ws)", () => {
  const scope = new Scope();
  let server;
  before(async () => {
    server = await scope.startServer({});
  });
  after(() => scope.closeAll());

  for (const [code, reason] of [
    [1000, ""],
    [1001, "going away"],
    [4001, "bye"],
  ]) {
    it(`a client close ${code} is answered with ${code}, not 1006`, async () => {
      const ws = await open(server.cableUrl, "closer");
      const done = closed(ws);
      ws.close(code, reason);
      assert.deepEqual(await done, { code, reason });
    });
  }

  it("a close without a code (what close() sends) is answered with 1000, as Rails does", async () => {
    const ws = await open(server.cableUrl, "closer");
    const done = closed(ws);
    ws.close();
    assert.deepEqual(await done, { code: 1000, reason: "" });
  });

  it("an unknown opcode is closed with 1002 and websocket-driver's reason", async () => {
    const ws = await open(server.cableUrl, "bad");
    const done = closed(ws);
    const mask = Buffer.from([1, 2, 3, 4]);
    ws._socket.write(Buffer.concat([Buffer.from([0x83, 0x82]), mask, Buffer.from([0x78 ^ 1, 0x78 ^ 2])]));
    assert.deepEqual(await done, { code: 1002, reason: "Unrecognized frame opcode: 3" });
  });

  it("invalid UTF-8 is closed with 1007", async () => {
    const ws = await open(server.cableUrl, "bad");
    const done = closed(ws);
    // A text frame with invalid UTF-8, written by hand (masked, as a client must).
    const payload = Buffer.from([0x7b, 0xff, 0xfe, 0x7d]);
    const mask = Buffer.from([1, 2, 3, 4]);
    const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
    ws._socket.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]));
    assert.deepEqual(await done, { code: 1007, reason: "Could not decode a text frame as UTF-8" });
  });
});
