#!/usr/bin/env bash
# Installs what run.sh needs from Debian's packages, if it is missing, and
# prints the versions. Idempotent; needs root (or sudo) only to install.
#
# Besides the benchmark's needs: the gems of Rails' redis and postgresql
# pub/sub adapters for interop mode (README.md): redis (ruby-redis), pg
# (ruby-pg) and Active Record (ruby-activerecord), on whose connection pool
# Rails 6.1's postgresql adapter runs.
set -euo pipefail

pkgs=(ruby ruby-actioncable ruby-railties puma ruby-redis ruby-pg ruby-activerecord)

have() {
  command -v ruby >/dev/null 2>&1 &&
    command -v puma >/dev/null 2>&1 &&
    ruby -e 'require "action_cable/engine"
             gem "redis", ">= 3", "< 5"; require "redis"
             gem "pg", "~> 1.1"; require "pg"
             require "active_record"' >/dev/null 2>&1
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
  have || { echo "install.sh: ruby/puma/actioncable/redis/pg/activerecord still missing" >&2; exit 1; }
fi

dpkg-query -W -f '${Package} ${Version}\n' ruby 'ruby3.*' ruby-actioncable ruby-railties puma \
  ruby-redis ruby-pg ruby-activerecord 2>/dev/null || true
ruby -v
puma --version
ruby -e 'require "action_cable"; require "rails"; puts "actioncable #{ActionCable.version}, railties #{Rails.version}"'
ruby -e 'require "redis"; require "pg"; require "active_record"
         puts "redis #{Redis::VERSION}, pg #{PG::VERSION}, activerecord #{ActiveRecord.version}"'
