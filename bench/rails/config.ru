# Rack entry point for the Rails ActionCable baseline (see README.md).
require_relative "application"

run Rails.application
