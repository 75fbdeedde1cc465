#!/usr/bin/env bash
# Rails ActionCable baseline server for the benchmarks.
#
# Usage: bench/rails/run.sh PORT
#
# Serves ws://127.0.0.1:PORT/cable (BenchmarkChannel, async adapter) from one
# puma process in the foreground; SIGTERM or SIGINT stops it. Run install.sh
# first. Prints nothing but errors: wait for the port to accept connections.
# Set CABLE_BENCH_VERBOSE=1 for puma's start-up banner.
set -euo pipefail

if [ $# -ne 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 PORT" >&2
  exit 2
fi
port=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

export RAILS_ENV=production RACK_ENV=production
# Debian's gems through plain rubygems: no bundler, whatever the caller set.
unset BUNDLE_GEMFILE RUBYGEMS_GEMDEPS RUBYOPT

quiet=(--silent)
[ "${CABLE_BENCH_VERBOSE:-}" = 1 ] && quiet=()

# Single mode (no -w): one process, as a cable server is one process.
# Threads 5:5: puma's threads only serve the HTTP request up to the WebSocket
# upgrade; ActionCable then hijacks the socket and its own nio4r event loop and
# worker pool (application.rb) do all the rest. A handful of threads keeps the
# handshake of a connection storm moving without piling more threads onto the
# GVL of a 2-core machine; 5 is Rails' own default (RAILS_MAX_THREADS).
# backlog=4096 (the kernel's somaxconn here) instead of puma's 1024, so a burst
# of thousands of connects queues rather than being refused.
exec puma --no-config --dir "$here" \
  -e production -t 5:5 -q "${quiet[@]}" \
  -b "tcp://127.0.0.1:${port}?backlog=4096" \
  "$here/config.ru"
