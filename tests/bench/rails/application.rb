# Minimal Rails + ActionCable baseline for the benchmarks (see README.md).
#
# Runs on Debian's system ruby and Debian's Rails gems with plain `require`:
# no Gemfile, no bundler. Everything the app needs is in this file.

ENV["RAILS_ENV"] ||= "production"
ENV["RACK_ENV"] ||= ENV["RAILS_ENV"]

require "logger"
require "securerandom"
require "rails"
require "action_cable/engine"

module CableBench
  class Application < Rails::Application
    config.root = __dir__

    # Production-like: no code reloading, everything loaded at boot.
    config.cache_classes = true
    config.eager_load = true
    config.consider_all_requests_local = false
    # No public/ dir; the static file middleware would also need ActionController.
    config.public_file_server.enabled = false

    # Logging would dominate a benchmark: warnings and errors only, to stderr.
    # (ActionCable logs every broadcast and transmit at info/debug level.)
    config.log_level = :warn
    config.logger = ActiveSupport::Logger.new($stderr, level: :warn)

    # Nothing here uses sessions or cookies, but production Rails insists on
    # a secret; a fixed one keeps the app self-contained.
    config.secret_key_base = "cable-bench-" + "0123456789abcdef" * 8

    # ActionCable: mounted at /cable (the engine's default mount path), any
    # Origin accepted, in-process "async" pub/sub (no Redis).
    config.action_cable.mount_path = "/cable"
    config.action_cable.disable_request_forgery_protection = true
    config.action_cable.cable = { "adapter" => "async" }

    # Threads that run channel actions, subscribe/unsubscribe and every
    # per-subscriber stream delivery (Rails 6.1 decodes and re-encodes each
    # broadcast once per subscriber on this pool). Rails' default is 4. The
    # GVL lets one of them run Ruby at a time, so more threads buy nothing on
    # a 2-core machine beyond overlapping socket writes; 4 is kept, overridable
    # for experiments with CABLE_BENCH_WORKERS.
    config.action_cable.worker_pool_size = Integer(ENV.fetch("CABLE_BENCH_WORKERS", "4"))
  end
end

module ApplicationCable
  # Accepts every connection; no identifiers.
  class Connection < ActionCable::Connection::Base
  end

  class Channel < ActionCable::Channel::Base
  end
end

# websocket-shootout's channel. There the id came from the connection
# (identified_by :id, a UUID per connection); here each subscription gets its
# own stream name from a process-wide counter, which is the same thing for
# clients that subscribe once.
class BenchmarkChannel < ApplicationCable::Channel
  SEQ = Concurrent::AtomicFixnum.new(0)

  def subscribed
    @bench_id = "benchmark:#{SEQ.increment}"
    stream_from @bench_id
    stream_from "all"
  end

  def echo(data)
    ActionCable.server.broadcast @bench_id, data
  end

  def broadcast(data)
    ActionCable.server.broadcast "all", data
    data["action"] = "broadcastResult"
    ActionCable.server.broadcast @bench_id, data
  end
end

Rails.application.initialize!
