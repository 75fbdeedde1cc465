//! Classifying tokio-postgres errors.

use cable_core::PubSubError;

/// Whether `e` means the connection is unusable (as opposed to the server
/// refusing one statement on a healthy connection).
pub(crate) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No server error: I/O, protocol, timeouts, connect failures.
        None => true,
        // 08: connection exception; 57P01..05: admin or crash shutdown,
        // cannot connect now, database dropped, idle session timeout.
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57P")
        }
    }
}

/// Connection problems and transient server conditions (class 08:
/// connection exception; 53: insufficient resources, such as too many
/// connections; 57: operator intervention): retrying later may work.
/// Anything else the server refused (authentication, permissions, invalid
/// values) is not.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    e.code().is_none_or(|code| {
        let code = code.code();
        code.starts_with("08") || code.starts_with("53") || code.starts_with("57")
    })
}

/// [`is_transient`] errors are `Unavailable`, anything else `Backend`.
pub(crate) fn to_pubsub_error(e: &tokio_postgres::Error) -> PubSubError {
    if is_transient(e) {
        PubSubError::Unavailable(format!("postgres: {}", describe(e)))
    } else {
        PubSubError::Backend(format!("postgres: {}", describe(e)))
    }
}

/// `e` with its causes: tokio-postgres' own message is only the kind of
/// failure ("error connecting to server", "db error"); the cause says what
/// happened ("Connection refused", "FATAL: terminating connection due to
/// administrator command").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
