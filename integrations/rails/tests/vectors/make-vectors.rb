#!/usr/bin/env ruby
# frozen_string_literal: true

# Makes the test vectors of cable-rails with real Rails code: Debian's
# ruby-activesupport, ruby-actionpack and ruby-actioncable (Rails 6.1.7.10)
# and ruby-globalid (0.6.0).
#
#   apt-get install ruby-activesupport ruby-actionpack ruby-actioncable ruby-globalid
#   ruby integrations/rails/tests/vectors/make-vectors.rb   # rewrites the *.json beside it
#
# What is real and what is reproduced:
# - Cookies are written by ActionDispatch's own cookie jar (cookies.signed /
#   cookies.encrypted), sessions by the real ActionDispatch::Cookies and
#   Session::CookieStore middlewares around a tiny Rack app.
# - Rails 6.1's KeyGenerator is hard-wired to PBKDF2-HMAC-SHA1. Rails 7.0+
#   derives with `OpenSSL::PKCS5.pbkdf2_hmac(secret, salt, iterations,
#   key_size, hash_digest_class.new)`; Sha256KeyGenerator below does exactly
#   that, so the "SHA256" profiles are what a `load_defaults 7.0` app writes.
# - turbo-rails is not packaged in Debian. Its verifier is reproduced from its
#   source (lib/turbo/engine.rb, app/channels/turbo/streams/stream_name.rb):
#   key = config.turbo.signed_stream_verifier_key ||
#         Rails.application.key_generator.generate_key("turbo/signed_stream_verifier_key"),
#   ActiveSupport::MessageVerifier.new(key, digest: "SHA256", serializer: JSON),
#   and the name is streamables mapped through to_gid_param || to_param and
#   joined with ":". The signing itself is ActiveSupport's MessageVerifier.
# - AnyCable's signed streams ($pubsub) follow its documentation:
#   strict_base64(JSON.dump(name)) + "--" + HMAC-SHA256-hex(secret, that),
#   with the secret used as it is; the anycable gem's AnyCable::Streams.signed
#   uses urlsafe_encode64 instead, so both are made.
# - GlobalID params come from the globalid gem; broadcasting names from
#   ActionCable::Channel::Base.broadcasting_for.
#
# Encryption uses random IVs, so every run gives different encrypted values;
# any of them must decrypt.

require "json"
require "time"
require "openssl"
require "base64"
require "active_support"
require "active_support/all"
require "action_dispatch"
require "action_dispatch/middleware/cookies"
require "action_dispatch/middleware/session/cookie_store"
require "action_controller"
require "action_cable"
require "global_id"
require "rack/mock"
require "active_support/messages/rotation_configuration"

OUT_DIR = __dir__

# 128 hex characters, as `rails secret` prints; fixed so the vectors are stable.
SECRET = Digest::SHA512.hexdigest("cable-rails test secret_key_base")
OLD_SECRET = Digest::SHA512.hexdigest("cable-rails old secret_key_base")
TURBO_CUSTOM_KEY = "s3cЯeT turbo key"
ANYCABLE_SECRET = "anycable-streams-secret"

FUTURE = Time.utc(2099, 1, 2, 3, 4, 5)
PAST = Time.utc(2001, 1, 2, 3, 4, 5)

# Rails 7.0's KeyGenerator with hash_digest_class = OpenSSL::Digest::SHA256.
class Sha256KeyGenerator
  def initialize(secret, iterations:)
    @secret = secret
    @iterations = iterations
  end

  def generate_key(salt, key_size = 64)
    OpenSSL::PKCS5.pbkdf2_hmac(@secret, salt, @iterations, key_size, OpenSSL::Digest::SHA256.new)
  end
end

def key_generator(secret, kdf)
  gen = case kdf
        when "SHA1" then ActiveSupport::KeyGenerator.new(secret, iterations: 1000)
        when "SHA256" then Sha256KeyGenerator.new(secret, iterations: 1000)
        else raise "unknown kdf #{kdf}"
        end
  ActiveSupport::CachingKeyGenerator.new(gen)
end

def rails_env(secret:, kdf:, serializer: :json, signed_digest: nil, metadata: true)
  {
    "action_dispatch.key_generator" => key_generator(secret, kdf),
    "action_dispatch.secret_key_base" => secret,
    "action_dispatch.signed_cookie_salt" => "signed cookie",
    "action_dispatch.encrypted_cookie_salt" => "encrypted cookie",
    "action_dispatch.encrypted_signed_cookie_salt" => "signed encrypted cookie",
    "action_dispatch.authenticated_encrypted_cookie_salt" => "authenticated encrypted cookie",
    "action_dispatch.use_authenticated_cookie_encryption" => true,
    "action_dispatch.encrypted_cookie_cipher" => "aes-256-gcm",
    "action_dispatch.signed_cookie_digest" => signed_digest,
    "action_dispatch.cookies_serializer" => serializer,
    "action_dispatch.cookies_rotations" => ActiveSupport::Messages::RotationConfiguration.new,
    "action_dispatch.use_cookies_with_metadata" => metadata,
  }
end

def new_jar(**opts)
  ActionDispatch::Request.new(Rack::MockRequest.env_for("/", rails_env(**opts))).cookie_jar
end

# What the browser sends back: the Set-Cookie value, Rack-escaped.
def escaped(value)
  Rack::Utils.escape(value)
end

# Writes cookie `name` = `value` through the jar and reads it back the way the
# app would, so every "ok" vector is checked by Rails itself.
def make_cookie(kind:, name:, value:, read_as: name, expires: nil, secret: SECRET, kdf:,
                signed_digest: nil, serializer: :json, metadata: true)
  opts = { secret: secret, kdf: kdf, serializer: serializer, signed_digest: signed_digest, metadata: metadata }
  jar = new_jar(**opts)
  cookie = { value: value }
  cookie[:expires] = expires if expires
  jar.public_send(kind)[name] = cookie
  raw = jar[name]

  reader = new_jar(**opts)
  reader[read_as] = raw
  read_back = begin
    reader.public_send(kind)[read_as]
  rescue StandardError => e
    "#{e.class}"
  end
  [raw, read_back]
end

def tamper_char(s, at)
  c = s[at]
  s.dup.tap { |t| t[at] = (c == "A" ? "B" : "A") }
end

cookies = []
profiles = [
  { profile: "rails61", kdf: "SHA1", signed_digest: nil },
  { profile: "rails70", kdf: "SHA256", signed_digest: nil },
  { profile: "rails70_signed_sha256", kdf: "SHA256", signed_digest: "SHA256" },
]

profiles.each do |p|
  %i[signed encrypted].each do |kind|
    base = { profile: p[:profile], kind: kind.to_s, kdf: p[:kdf],
             signed_digest: p[:signed_digest] || "SHA1", secret: "current" }
    add = lambda do |case_name, expect:, value:, name: "user_id", read_as: name, expected: value, **extra|
      raw, read_back = make_cookie(kind: kind, name: name, value: value, read_as: read_as,
                                   kdf: p[:kdf], signed_digest: p[:signed_digest], **extra)
      if expect == "ok" && read_back != expected
        raise "Rails did not read back #{case_name}: #{read_back.inspect}"
      end
      if expect != "ok" && !(read_back.nil? || read_back.is_a?(String) && read_back.end_with?("Error"))
        # Marshal cookies do load in Rails with the :marshal serializer; that
        # is exactly what we refuse, so only "invalid" must fail in Rails.
        raise "Rails read #{case_name}: #{read_back.inspect}" if expect == "invalid"
      end
      cookies << base.merge(case: case_name, cookie_name: name, read_as: read_as, expect: expect,
                            value: expect == "ok" ? expected : nil,
                            cookie_value: raw, cookie_header_value: escaped(raw))
                     .merge(extra.slice(:serializer, :metadata).transform_values(&:to_s))
                     .merge(extra.key?(:expires) ? { exp: extra[:expires].utc.iso8601(3) } : {})
                     .merge(extra[:secret] == OLD_SECRET ? { secret: "old" } : {})
      raw
    end

    add.call("integer", expect: "ok", value: 42)
    add.call("string", expect: "ok", value: "alice")
    add.call("object", expect: "ok", value: { "user_id" => 7, "roles" => ["admin"], "html" => "<b>&</b>" })
    add.call("unicode", expect: "ok", value: "Zoë ✓ 🚀")
    add.call("expires_future", expect: "ok", value: 42, expires: FUTURE)
    add.call("expired", expect: "invalid", value: 42, expires: PAST)
    add.call("wrong_purpose", expect: "invalid", value: 42, name: "other", read_as: "user_id")
    add.call("no_metadata", expect: "ok", value: 42, metadata: false)
    add.call("old_secret", expect: "ok", value: 42, secret: OLD_SECRET)
    add.call("marshal", expect: "marshal", value: 42, serializer: :marshal)
    add.call("marshal_object", expect: "marshal", value: { "user_id" => 7 }, serializer: :marshal)
    ok = add.call("hybrid_writes_json", expect: "ok", value: 42, serializer: :hybrid)

    # Tampering, made from a good cookie: one character of the data, and one
    # of the digest (signed) or of the IV / tag (encrypted).
    parts = ok.split("--")
    tampered = {
      "tampered_data" => [tamper_char(parts[0], 5), *parts[1..]].join("--"),
    }
    if kind == :signed
      tampered["tampered_digest"] = [parts[0], tamper_char(parts[1], 3)].join("--")
      tampered["truncated_digest"] = [parts[0], parts[1][0..-3]].join("--")
    else
      tampered["tampered_iv"] = [parts[0], tamper_char(parts[1], 2), parts[2]].join("--")
      tampered["tampered_tag"] = [parts[0], parts[1], tamper_char(parts[2], 2)].join("--")
      tampered["missing_tag"] = parts[0..1].join("--")
    end
    tampered.each do |case_name, raw|
      reader = new_jar(secret: SECRET, kdf: p[:kdf], signed_digest: p[:signed_digest])
      reader["user_id"] = raw
      raise "Rails accepted #{case_name}" unless reader.public_send(kind)["user_id"].nil?

      cookies << base.merge(case: case_name, cookie_name: "user_id", read_as: "user_id", expect: "invalid",
                            value: nil, cookie_value: raw, cookie_header_value: escaped(raw))
    end
  end
end

# --- Sessions: the real middleware stack -------------------------------------

def make_session(kdf:, data:, serializer: :json, expire_after: nil, key: "_my_app_session")
  app = lambda do |env|
    data.each { |k, v| env["rack.session"][k] = v }
    [200, { "Content-Type" => "text/plain" }, ["ok"]]
  end
  store_opts = { key: key }
  store_opts[:expire_after] = expire_after if expire_after
  stack = ActionDispatch::Cookies.new(ActionDispatch::Session::CookieStore.new(app, **store_opts))
  env = Rack::MockRequest.env_for("/", rails_env(secret: SECRET, kdf: kdf, serializer: serializer))
  _status, headers, _body = stack.call(env)
  set_cookie = Array(headers["Set-Cookie"]).join("\n").split("\n").find { |c| c.start_with?("#{key}=") }
  header_value = set_cookie[/\A#{key}=([^;]*)/, 1]
  raw = Rack::Utils.unescape(header_value)

  # Read it back through the store, as the next request of the app would.
  seen = nil
  reader = ActionDispatch::Cookies.new(ActionDispatch::Session::CookieStore.new(lambda { |e|
    seen = e["rack.session"].to_hash
    [200, {}, []]
  }, **store_opts))
  renv = Rack::MockRequest.env_for("/", rails_env(secret: SECRET, kdf: kdf, serializer: serializer)
                                         .merge("HTTP_COOKIE" => "#{key}=#{header_value}"))
  reader.call(renv)
  [raw, header_value, set_cookie, seen]
end

sessions = []
[
  ["user_id", "SHA1", { "user_id" => 1 }, :json, nil],
  ["warden", "SHA256", { "warden.user.user.key" => [[42], "$2a$12$abcdefghijklmnopqrstuv"] }, :json, nil],
  ["warden_admin_scope", "SHA256", { "warden.user.admin.key" => [[9], "$2a$12$zyxwvutsrqponmlkjihgfe"], "user_id" => "u-7" }, :json, nil],
  ["expire_after", "SHA256", { "user_id" => 5 }, :json, 20.years],
  ["marshal", "SHA1", { "user_id" => 1 }, :marshal, nil],
].each do |name, kdf, data, serializer, expire_after|
  raw, header_value, set_cookie, seen = make_session(kdf: kdf, data: data, serializer: serializer,
                                                     expire_after: expire_after)
  data.each { |k, v| raise "session #{name} lost #{k}: #{seen.inspect}" unless seen[k] == v }
  sessions << {
    case: name, kdf: kdf, secret: "current", cookie_name: "_my_app_session", serializer: serializer.to_s,
    expect: serializer == :marshal ? "marshal" : "ok",
    session: serializer == :marshal ? nil : seen,
    cookie_value: raw, cookie_header_value: header_value, set_cookie_header: set_cookie,
  }
end

# --- Turbo signed stream names -----------------------------------------------

GlobalID.app = "my-app"

class Model
  include GlobalID::Identification
  attr_reader :id

  def initialize(id)
    @id = id
  end

  def self.find(id)
    new(id)
  end
end

class Room < Model; end
class User < Model; end
module Admin
  class Note < Model; end
end

# turbo-rails' Turbo::Streams::StreamName#stream_name_from.
def turbo_stream_name_from(streamables)
  if streamables.is_a?(Array)
    streamables.map { |s| turbo_stream_name_from(s) }.join(":")
  else
    streamables.then { |s| s.try(:to_gid_param) || s.to_param }
  end
end

def turbo_verifier(key)
  ActiveSupport::MessageVerifier.new(key, digest: "SHA256", serializer: JSON)
end

turbo = []
streamables_cases = {
  "string" => "messages",
  "model_and_symbol" => [Room.new(1), :messages],
  "namespaced_model" => Admin::Note.new(12),
  "unicode" => ["Zoë", "<b>"],
}
[["SHA1", :derived], ["SHA256", :derived], [nil, :custom_key]].each do |kdf, how|
  key = how == :custom_key ? TURBO_CUSTOM_KEY : key_generator(SECRET, kdf).generate_key("turbo/signed_stream_verifier_key")
  verifier = turbo_verifier(key)
  streamables_cases.each do |case_name, streamables|
    name = turbo_stream_name_from(streamables)
    signed = verifier.generate(name)
    raise "turbo vector does not verify" unless verifier.verified(signed) == name

    turbo << { case: case_name, kdf: kdf, key: how.to_s, secret: "current", expect: "ok",
               stream_name: name, signed_stream_name: signed }
  end
end
# Forged and tampered ones (against the SHA256-derived key).
good = turbo.find { |t| t[:kdf] == "SHA256" && t[:case] == "model_and_symbol" }
other = turbo_verifier(key_generator(OLD_SECRET, "SHA256").generate_key("turbo/signed_stream_verifier_key"))
turbo << { case: "other_secret", kdf: "SHA256", key: "derived", secret: "current", expect: "invalid",
           stream_name: good[:stream_name], signed_stream_name: other.generate(good[:stream_name]) }
data, digest = good[:signed_stream_name].split("--")
forged_data = Base64.strict_encode64(JSON.dump("#{good[:stream_name]}:admin"))
turbo << { case: "forged_name", kdf: "SHA256", key: "derived", secret: "current", expect: "invalid",
           stream_name: nil, signed_stream_name: "#{forged_data}--#{digest}" }
turbo << { case: "tampered_digest", kdf: "SHA256", key: "derived", secret: "current", expect: "invalid",
           stream_name: nil, signed_stream_name: "#{data}--#{tamper_char(digest, 0)}" }
turbo << { case: "sha1_digest", kdf: "SHA256", key: "derived", secret: "current", expect: "invalid",
           stream_name: nil,
           signed_stream_name: ActiveSupport::MessageVerifier.new(
             key_generator(SECRET, "SHA256").generate_key("turbo/signed_stream_verifier_key"),
             digest: "SHA1", serializer: JSON
           ).generate(good[:stream_name]) }
turbo << { case: "no_separator", kdf: "SHA256", key: "derived", secret: "current", expect: "invalid",
           stream_name: nil, signed_stream_name: data }

# --- AnyCable signed streams ($pubsub) ---------------------------------------

def anycable_signed(name, secret, urlsafe: false)
  json = JSON.dump(name)
  encoded = urlsafe ? Base64.urlsafe_encode64(json) : Base64.strict_encode64(json)
  "#{encoded}--#{OpenSSL::HMAC.hexdigest("SHA256", secret, encoded)}"
end

pubsub = []
["chat/2024", "notifications/17", "ü?>>~"].each do |name|
  pubsub << { case: "strict_base64", secret: ANYCABLE_SECRET, expect: "ok", stream_name: name,
              signed_stream_name: anycable_signed(name, ANYCABLE_SECRET) }
  pubsub << { case: "urlsafe_base64", secret: ANYCABLE_SECRET, expect: "ok", stream_name: name,
              signed_stream_name: anycable_signed(name, ANYCABLE_SECRET, urlsafe: true) }
end
# secret_key_base used as the streams secret (anycable-rails' fallback).
pubsub << { case: "secret_key_base_as_secret", secret: SECRET, expect: "ok", stream_name: "chat/2024",
            signed_stream_name: anycable_signed("chat/2024", SECRET) }
pubsub << { case: "other_secret", secret: ANYCABLE_SECRET, expect: "invalid", stream_name: nil,
            signed_stream_name: anycable_signed("chat/2024", "not the secret") }
# A Rails MessageVerifier (SHA256) over the raw secret makes the very same token.
rails_made = ActiveSupport::MessageVerifier.new(ANYCABLE_SECRET, digest: "SHA256", serializer: JSON).generate("chat/2024")
raise "AnyCable format differs from MessageVerifier" unless rails_made == anycable_signed("chat/2024", ANYCABLE_SECRET)

# --- GlobalID and broadcasting names -----------------------------------------

class ChatChannel < ActionCable::Channel::Base; end
module Chat
  class RoomChannel < ActionCable::Channel::Base; end
end

gids = [
  [User.new(1), "User", "1"],
  [Room.new(42), "Room", "42"],
  [Admin::Note.new(12), "Admin::Note", "12"],
  [User.new("a b/ü+~*"), "User", "a b/ü+~*"],
  [User.new("550e8400-e29b-41d4-a716-446655440000"), "User", "550e8400-e29b-41d4-a716-446655440000"],
].map do |model, model_name, id|
  {
    app: GlobalID.app, model: model_name, id: id,
    gid: model.to_global_id.to_s, gid_param: model.to_gid_param,
    chat_broadcasting: ChatChannel.broadcasting_for(model),
    chat_messages_broadcasting: ChatChannel.broadcasting_for([model, :messages]),
    room_channel_broadcasting: Chat::RoomChannel.broadcasting_for(model),
  }
end

# --- Write --------------------------------------------------------------------

meta = {
  generated_by: "integrations/rails/tests/vectors/make-vectors.rb",
  ruby: RUBY_VERSION,
  activesupport: ActiveSupport::VERSION::STRING,
  actionpack: ActionPack::VERSION::STRING,
  openssl: OpenSSL::OPENSSL_LIBRARY_VERSION,
  secrets: { current: SECRET, old: OLD_SECRET },
}

def write(name, obj)
  File.write(File.join(OUT_DIR, name), JSON.pretty_generate(obj) + "\n")
  warn "wrote #{name}"
end

write("cookies.json", meta.merge(
  note: "cookies.signed / cookies.encrypted written by ActionDispatch 6.1's cookie jar; SHA256 profiles derive keys " \
        "as Rails 7.0 does. expect: ok (value is what Rails reads), invalid (Rails reads nil), marshal " \
        "(Marshal-serialised: to be refused). cookie_header_value is the Rack-escaped form a browser sends.",
  vectors: cookies
))
write("sessions.json", meta.merge(
  note: "Encrypted session cookies written by ActionDispatch::Session::CookieStore (key _my_app_session) " \
        "and read back by it; session is what Rails read.",
  vectors: sessions
))
write("streams.json", meta.merge(
  turbo_custom_key: TURBO_CUSTOM_KEY,
  note: "turbo: turbo-rails' verifier reproduced with ActiveSupport::MessageVerifier (SHA256, JSON) and its key " \
        "(generate_key(\"turbo/signed_stream_verifier_key\") with the kdf, or config.turbo.signed_stream_verifier_key " \
        "= turbo_custom_key). pubsub: AnyCable's signed streams with the secret as it is.",
  turbo: turbo,
  pubsub: pubsub
))
write("global_id.json", meta.merge(
  note: "globalid 0.6.0 (GlobalID.app = \"my-app\") and ActionCable 6.1's broadcasting_for.",
  vectors: gids
))
