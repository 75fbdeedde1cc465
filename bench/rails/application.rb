# Minimal Rails + ActionCable baseline for the benchmarks (see README.md).
#
# Runs on Debian's system ruby and Debian's Rails gems with plain `require`:
# no Gemfile, no bundler. Everything the app needs is in this file.
#
# Interop mode (README.md, "Interop mode"): when CABLE_RAILS_ADAPTER is set,
# the app also identifies users (`identified_by :current_user`) and serves
# ChatChannel, on the pub/sub adapter CABLE_RAILS_ADAPTER names (async, redis
# or postgresql; CABLE_RAILS_URL, CABLE_RAILS_CHANNEL_PREFIX). Without it the
# app is exactly the benchmark baseline: async adapter, anyone accepted,
# BenchmarkChannel only.

ENV["RAILS_ENV"] ||= "production"
ENV["RACK_ENV"] ||= ENV["RAILS_ENV"]

require "logger"
require "securerandom"
require "rails"
require "action_cable/engine"

module CableBench
  # The interop settings, read once; nil when CABLE_RAILS_ADAPTER is unset.
  INTEROP =
    if (adapter = ENV["CABLE_RAILS_ADAPTER"].to_s).empty?
      nil
    else
      url = ENV["CABLE_RAILS_URL"].to_s
      prefix = ENV["CABLE_RAILS_CHANNEL_PREFIX"].to_s
      unless %w[async redis postgresql].include?(adapter)
        abort "CABLE_RAILS_ADAPTER=#{adapter.inspect}: expected async, redis or postgresql"
      end
      if adapter != "async" && url.empty?
        abort "CABLE_RAILS_ADAPTER=#{adapter} needs CABLE_RAILS_URL"
      end
      # What config/cable.yml would give: an indifferent hash (the adapters
      # read cable[:channel_prefix] and pass the rest to Redis.new).
      cable = { "adapter" => adapter }
      cable["url"] = url if adapter == "redis"
      cable["channel_prefix"] = prefix unless prefix.empty? || adapter == "async"
      { adapter: adapter, url: url, cable: cable.with_indifferent_access }.freeze
    end
end

# Rails' postgresql adapter runs LISTEN/NOTIFY on Active Record's connection
# pool; Active Record is loaded in that mode only (the benchmark does not need it).
if CableBench::INTEROP&.fetch(:adapter) == "postgresql"
  require "active_record"
  # No config/database.yml: the database is CABLE_RAILS_URL
  # (postgres://USER@HOST:PORT/DB), as DATABASE_URL would give it.
  ActiveRecord::Base.establish_connection(CableBench::INTEROP[:url])
end

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
    # CABLE_RAILS_LOG_LEVEL (debug, info, ...) overrides it, for interop runs.
    log_level = ENV.fetch("CABLE_RAILS_LOG_LEVEL", "warn").to_sym
    config.log_level = log_level
    config.logger = ActiveSupport::Logger.new($stderr, level: log_level)

    # Nothing here uses sessions or cookies, but production Rails insists on
    # a secret; a fixed one keeps the app self-contained.
    config.secret_key_base = "cable-bench-" + "0123456789abcdef" * 8

    # ActionCable: mounted at /cable (the engine's default mount path), any
    # Origin accepted, in-process "async" pub/sub (no Redis); in interop mode
    # the adapter CABLE_RAILS_ADAPTER names.
    config.action_cable.mount_path = "/cable"
    config.action_cable.disable_request_forgery_protection = true
    config.action_cable.cable = CableBench::INTEROP ? CableBench::INTEROP[:cable] : { "adapter" => "async" }

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
  # Benchmark mode: accepts every connection; no identifiers.
  #
  # Interop mode: the chat example's connection hook (examples/chat identify()):
  # the user is the `user` cookie, else `?user=NAME`; none, or `banned`, is
  # refused. A String identifier, so Rails' connection identifier (and the
  # internal channel action_cable/<identifier>) is the name itself, as ours.
  class Connection < ActionCable::Connection::Base
    if CableBench::INTEROP
      identified_by :current_user

      def connect
        user = cookies[:user]
        user = request.params[:user] if user.nil?
        user = user.to_s
        reject_unauthorized_connection if user.empty? || user == "banned"
        self.current_user = user
      end
    end
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

if CableBench::INTEROP
  # The chat example's ChatChannel (examples/chat/src/lib.rs):
  # {"channel":"ChatChannel","room":R} streams chat_<R>, room `forbidden` (or
  # none) is rejected; `speak` broadcasts {"user","body"} to the room, in that
  # key order; `echo` transmits the data back.
  class ChatChannel < ApplicationCable::Channel
    def subscribed
      room = params[:room]
      if room.nil? || !(room.is_a?(String) || room.is_a?(Numeric)) || room.to_s == "forbidden"
        reject
        return
      end
      @room_stream = "chat_#{room}"
      stream_from @room_stream
    end

    def speak(data)
      ActionCable.server.broadcast @room_stream, { user: current_user, body: data["body"] }
    end

    def echo(data)
      transmit data
    end
  end
end

Rails.application.initialize!
