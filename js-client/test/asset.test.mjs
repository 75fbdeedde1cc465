// The chat example serves a committed build of this package
// (examples/chat/assets/vendor/cable-client.esm.js); it must equal a fresh build of
// src/, so it cannot go stale. Fix with `npm run build:asset`.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { it } from "node:test";

import { ASSET, bundle } from "../scripts/build-asset.mjs";

it("examples/chat/assets/vendor/cable-client.esm.js equals a fresh build of src/ (npm run build:asset)", async () => {
  const fresh = await bundle();
  const committed = readFileSync(ASSET, "utf8");
  assert.ok(committed === fresh, `${ASSET} is stale: run \`npm run build:asset\` in js-client`);
});

it("the asset exports the same names as the package", async () => {
  const asset = await import(ASSET);
  const pkg = await import("../dist/index.js");
  assert.deepEqual(Object.keys(asset).sort(), Object.keys(pkg).sort());
  assert.equal(typeof asset.createConsumer, "function");
});
