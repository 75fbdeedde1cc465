#!/usr/bin/env bash
# Installs what run.sh needs from Debian's packages, if it is missing, and
# prints the versions. Idempotent; needs root (or sudo) only to install.
set -euo pipefail

pkgs=(ruby ruby-actioncable ruby-railties puma)

have() {
  command -v ruby >/dev/null 2>&1 &&
    command -v puma >/dev/null 2>&1 &&
    ruby -e 'require "action_cable/engine"' >/dev/null 2>&1
}

if ! have; then
  sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { "${sudo[@]}" apt-get install -y --no-install-recommends "${pkgs[@]}"; }
  if ! apt_install; then
    "${sudo[@]}" apt-get update
    apt_install
  fi
  have || { echo "install.sh: ruby/puma/actioncable still missing" >&2; exit 1; }
fi

dpkg-query -W -f '${Package} ${Version}\n' ruby 'ruby3.*' ruby-actioncable ruby-railties puma 2>/dev/null || true
ruby -v
puma --version
ruby -e 'require "action_cable"; require "rails"; puts "actioncable #{ActionCable.version}, railties #{Rails.version}"'
