#!/usr/bin/env node
// Measures what each client costs a page: bundled with esbuild (minified, ESM,
// es2020), then gzipped (zlib level 9) and brotli-compressed. Two entries per
// client: the whole module (every export) and `createConsumer` alone (what a
// tree-shaking bundler keeps for the usual import).
//
//   node scripts/size.mjs            # prints a Markdown table
//   node scripts/size.mjs --json

import { fileURLToPath } from "node:url";
import { gzipSync, brotliCompressSync, constants } from "node:zlib";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const rails = fileURLToPath(
  import.meta.resolve("@rails/actioncable/app/assets/javascripts/actioncable.esm.js"),
);
const railsVersion = (await import("@rails/actioncable/package.json", { with: { type: "json" } })).default.version;
const ours = `${root}/src/index.ts`;

async function measure(contents, resolveDir) {
  const result = await build({
    stdin: { contents, resolveDir, loader: "ts" },
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2020",
    platform: "neutral",
    write: false,
    legalComments: "none",
  });
  const code = Buffer.from(result.outputFiles[0].contents);
  return {
    min: code.length,
    gzip: gzipSync(code, { level: 9 }).length,
    brotli: brotliCompressSync(code, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
  };
}

const rows = [];
for (const [name, path] of [
  [`@rails/actioncable ${railsVersion}`, rails],
  ["@cable-rs/client", ours],
]) {
  rows.push({ client: name, entry: "whole module", ...(await measure(`export * from ${JSON.stringify(path)};`, root)) });
  rows.push({
    client: name,
    entry: "createConsumer only",
    ...(await measure(`export { createConsumer } from ${JSON.stringify(path)};`, root)),
  });
}

if (process.argv.includes("--json")) {
  console.log(JSON.stringify(rows, null, 2));
} else {
  console.log("| client | entry | minified | min+gzip | min+brotli |");
  console.log("|---|---|---:|---:|---:|");
  for (const r of rows) console.log(`| ${r.client} | ${r.entry} | ${r.min} B | ${r.gzip} B | ${r.brotli} B |`);
  console.log(`\nesbuild ${(await import("esbuild")).version}, node ${process.version}`);
}
