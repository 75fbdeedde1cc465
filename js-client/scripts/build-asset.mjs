#!/usr/bin/env node
// Builds the single-file ESM bundle the chat example serves at
// /assets/cable-client.esm.js (examples/chat/assets/vendor/cable-client.esm.js).
//
//   node scripts/build-asset.mjs          # (re)write the asset
//   node scripts/build-asset.mjs --check  # exit 1 if the committed asset is stale
//
// Unminified, so the committed file stays readable; the test suite checks that
// it equals a fresh build (test/asset.test.mjs).

import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
export const ASSET = fileURLToPath(new URL("../../examples/chat/assets/vendor/cable-client.esm.js", import.meta.url));

/** The bundle's text, built from src/ with the pinned esbuild. */
export async function bundle() {
  const { version } = JSON.parse(readFileSync(`${root}/package.json`, "utf8"));
  const result = await build({
    entryPoints: [`${root}/src/index.ts`],
    bundle: true,
    format: "esm",
    target: "es2020",
    platform: "neutral",
    write: false,
    charset: "utf8",
    legalComments: "none",
    banner: {
      js:
        `// @cable-rs/client ${version}: built from js-client/src by js-client/scripts/build-asset.mjs.\n` +
        "// Do not edit: change the TypeScript source and run `npm run build:asset` in js-client.",
    },
  });
  return result.outputFiles[0].text;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const text = await bundle();
  if (process.argv.includes("--check")) {
    let current = "";
    try {
      current = readFileSync(ASSET, "utf8");
    } catch {
      /* missing */
    }
    if (current !== text) {
      console.error(`${ASSET} is stale: run \`npm run build:asset\` in js-client`);
      process.exit(1);
    }
    console.log(`${ASSET} is up to date`);
  } else {
    writeFileSync(ASSET, text);
    console.log(`wrote ${ASSET} (${text.length} bytes)`);
  }
}
