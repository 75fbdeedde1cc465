//! Log hygiene for what peers send: payloads are cut and escaped before they
//! reach a log line, and one connection's repeated errors are rate-limited,
//! so a client can neither forge log lines nor flood the log.

use std::fmt;
use std::time::{Duration, Instant};

/// Most bytes of a peer's payload that a log line shows.
pub(crate) const SNIP_BYTES: usize = 300;

/// Displays a peer-supplied string escaped (`{:?}`, so newlines and control
/// characters cannot start a fake log line) and cut to [`SNIP_BYTES`].
pub(crate) struct Snip<'a>(pub(crate) &'a str);

impl fmt::Display for Snip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s.len() <= SNIP_BYTES {
            return write!(f, "{s:?}");
        }
        let mut end = SNIP_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}… ({} bytes)", &s[..end], s.len())
    }
}

/// Lines one connection may log per window for errors it causes.
const LINES_PER_WINDOW: u32 = 20;
const WINDOW: Duration = Duration::from_secs(10);

/// A per-connection budget of error lines: [`LINES_PER_WINDOW`] every
/// [`WINDOW`]; what is over is counted and reported once the window ends.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window_start: Option<Instant>,
    lines: u32,
    suppressed: u32,
}

impl LogLimiter {
    pub(crate) const fn new() -> Self {
        LogLimiter {
            window_start: None,
            lines: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be logged now. `who` names the connection
    /// in the line that reports suppressed lines.
    pub(crate) fn allow(&mut self, who: &str) -> bool {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < WINDOW => {}
            _ => {
                if self.suppressed > 0 {
                    tracing::warn!(
                        "{} more error lines from connection ({who}) were not logged in the last {}s",
                        self.suppressed,
                        WINDOW.as_secs()
                    );
                }
                self.window_start = Some(now);
                self.lines = 0;
                self.suppressed = 0;
            }
        }
        if self.lines < LINES_PER_WINDOW {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snips_escape_and_cut() {
        assert_eq!(Snip("a\nb").to_string(), r#""a\nb""#);
        let long = "é".repeat(400);
        let shown = Snip(&long).to_string();
        assert!(shown.len() < SNIP_BYTES + 40, "{}", shown.len());
        assert!(shown.ends_with("… (800 bytes)"), "{shown}");
    }

    #[test]
    fn limiter_allows_a_budget_per_window() {
        let mut l = LogLimiter::new();
        let allowed = (0..100).filter(|_| l.allow("x")).count();
        assert_eq!(allowed, LINES_PER_WINDOW as usize);
        assert_eq!(l.suppressed, 100 - LINES_PER_WINDOW);
    }
}
