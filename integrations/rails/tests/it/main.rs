//! cable-rails' integration tests: Ruby-made vectors and the end-to-end path.

mod e2e;
mod reference;
mod support;
mod vectors;
