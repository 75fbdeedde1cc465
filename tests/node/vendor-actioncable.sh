#!/usr/bin/env bash
# Refreshes examples/chat/assets/vendor/actioncable.esm.js from the @rails/actioncable
# npm package pinned in tests/node/package.json (and package-lock.json).
#
# Usage (from anywhere):
#   tests/node/vendor-actioncable.sh          # runs `npm ci` first
#   tests/node/vendor-actioncable.sh --no-ci  # reuse the installed node_modules
#
# To move to a newer client: bump the version in package.json, `npm install`
# in tests/node, run this script, and run `npm test` against the chat server.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
assets="$repo/examples/chat/assets/vendor"
pkg="$here/node_modules/@rails/actioncable"

if [[ "${1:-}" != "--no-ci" ]]; then
  (cd "$here" && npm ci --no-audit --no-fund)
fi

if [[ ! -f "$pkg/app/assets/javascripts/actioncable.esm.js" ]]; then
  echo "error: $pkg/app/assets/javascripts/actioncable.esm.js not found (run npm ci in $here)" >&2
  exit 1
fi

version="$(node -p "require('$pkg/package.json').version")"
mkdir -p "$assets"
cp "$pkg/app/assets/javascripts/actioncable.esm.js" "$assets/actioncable.esm.js"

# The npm package ships no license file; keep ours if the package ever does.
for f in LICENSE LICENSE.md MIT-LICENSE; do
  if [[ -f "$pkg/$f" ]]; then
    cp "$pkg/$f" "$assets/ACTIONCABLE-LICENSE"
    break
  fi
done

# Record the version in VENDORED.md.
if [[ -f "$assets/VENDORED.md" ]]; then
  sed -i -E "s/(@rails\/actioncable@)[0-9A-Za-z.+-]+/\1$version/g" "$assets/VENDORED.md"
fi

sha="$(sha256sum "$assets/actioncable.esm.js" | cut -d' ' -f1)"
if [[ -f "$assets/VENDORED.md" ]]; then
  sed -i -E "s/(sha256: \`)[0-9a-f]+(\`)/\1$sha\2/" "$assets/VENDORED.md"
fi

echo "vendored @rails/actioncable@$version into $assets/actioncable.esm.js (sha256 $sha)"
