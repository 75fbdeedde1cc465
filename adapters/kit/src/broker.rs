//! The connection side of a broker (`cable_core::broker::Broker`): one
//! connection shared by every call, opened on first use, replaced after a
//! connection failure, every call bounded in time.
//!
//! The [`LazyPublisher`](crate::LazyPublisher)'s connection slot, with the
//! broker's error type and any request instead of one publish.

use std::future::Future;
use std::time::Duration;

use crate::slot::{ConnSlot, Failure, Late};
use async_trait::async_trait;
use cable_core::broker::{BrokerError, HistoryPolicy};

/// How long one broker call may take, connecting included, before it fails
/// with [`BrokerError::Unavailable`].
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(2);

/// A failed call: the error for the caller, and whether the connection must
/// be replaced (an I/O error) or is still good (the backend refused this one
/// request).
pub type CallFailure = Failure<BrokerError>;

/// How a broker opens its connection.
#[async_trait]
pub trait Connect: Send + Sync + 'static {
    /// A connection, cheap to clone (a multiplexed client, an `Arc`).
    type Conn: Clone + Send + Sync + 'static;
    /// The backend's name for messages ("redis", "postgres").
    const NAME: &'static str;
    /// Opens a connection (and prepares whatever the calls need on it).
    async fn connect(&self) -> Result<Self::Conn, BrokerError>;
    /// Whether `conn` is known to be closed (checked before reuse).
    fn is_closed(_conn: &Self::Conn) -> bool {
        false
    }
}

/// A lazily opened, self-repairing connection: a call connects if needed,
/// fails within its timeout all told ([`BROKER_TIMEOUT`] by default), never
/// panics, and a broken connection is replaced by the next call. After a
/// failed connect, no new attempt is made for
/// [`RETRY_HOLDOFF`](crate::RETRY_HOLDOFF), so that a burst of calls
/// during an outage is not a burst of connection attempts: a call in that
/// window waits for its end and then gets a fresh answer (a newer failure,
/// or the connection), so a call right after the backend is back does not
/// fail on a failure from just before.
pub struct LazyConnection<C: Connect> {
    backend: C,
    slot: ConnSlot<C::Conn, BrokerError>,
}

impl<C: Connect> std::fmt::Debug for LazyConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.slot.fmt_as(f, "LazyConnection")
    }
}

impl<C: Connect> LazyConnection<C> {
    /// A connection opened on the first [`call`](Self::call), each call
    /// bounded by [`BROKER_TIMEOUT`].
    pub fn new(backend: C) -> Self {
        Self::with_timeout(backend, BROKER_TIMEOUT)
    }

    /// As [`new`](Self::new), each call bounded by `timeout`.
    pub fn with_timeout(backend: C, timeout: Duration) -> Self {
        LazyConnection {
            backend,
            slot: ConnSlot::new((C::NAME, "broker"), timeout, C::is_closed).waiting_out_holdoff(),
        }
    }

    /// The backend, for what the calls need of it (names, settings).
    pub fn backend(&self) -> &C {
        &self.backend
    }

    /// Runs `f` on the connection (opened first if needed) within the
    /// timeout, connecting included. `what` names the request in the
    /// timeout's error. A connection that died while idle is found out by
    /// its first use: `f` then runs once more on a fresh one (see
    /// [`LazyPublisher::publish`](crate::LazyPublisher::publish)).
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, BrokerError>
    where
        F: Fn(C::Conn) -> Fut + Send,
        Fut: Future<Output = Result<T, CallFailure>> + Send,
    {
        let timeout = self.slot.timeout();
        self.slot
            .request(
                || self.backend.connect(),
                f,
                |late| {
                    BrokerError::Unavailable(match late {
                        Late::Connecting => {
                            format!("could not connect to {} within {timeout:?}", C::NAME)
                        }
                        Late::Replying => {
                            format!("no reply to {what} from {} within {timeout:?}", C::NAME)
                        }
                    })
                },
            )
            .await
    }
}

/// A history mark's value as the key-value brokers keep it:
/// `<limit> <ttl_ms>`, read back by [`parse_mark`].
pub fn mark_text(policy: HistoryPolicy, ttl_ms: u64) -> String {
    format!("{} {ttl_ms}", policy.limit)
}

/// The policy of a history mark written by [`mark_text`]; an error naming
/// `backend` and the stream when it is not one.
pub fn parse_mark(backend: &str, stream: &str, value: &str) -> Result<HistoryPolicy, BrokerError> {
    let parsed = value
        .split_once(' ')
        .and_then(|(limit, ttl)| Some((limit.parse().ok()?, ttl.parse().ok()?)));
    match parsed {
        Some((limit, ttl)) => Ok(HistoryPolicy {
            limit,
            ttl: Duration::from_millis(ttl),
        }),
        None => Err(BrokerError::Backend(format!(
            "{backend}: history mark of {stream:?} is not `<limit> <ttl_ms>`: {value:?}"
        ))),
    }
}

/// A new epoch name: 16 lowercase hex characters from the process's random
/// hasher keys, the clock and a counter, so that two epochs of one stream
/// (made by any node, before or after a restart) differ.
pub fn new_epoch() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(now.as_nanos());
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RETRY_HOLDOFF;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Flaky {
        connects: Arc<AtomicU32>,
        up: Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait]
    impl Connect for Flaky {
        type Conn = u32;
        const NAME: &'static str = "flaky";
        async fn connect(&self) -> Result<u32, BrokerError> {
            if self.up.load(Ordering::SeqCst) {
                Ok(self.connects.fetch_add(1, Ordering::SeqCst) + 1)
            } else {
                Err(BrokerError::Unavailable("down".into()))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connects_once_replaces_broken_and_bounds_calls() {
        let connects = Arc::new(AtomicU32::new(0));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let lazy = LazyConnection::new(Flaky {
            connects: connects.clone(),
            up: up.clone(),
        });
        assert_eq!(lazy.call("x", |c| async move { Ok(c) }).await, Ok(1));
        assert_eq!(lazy.call("x", |c| async move { Ok(c) }).await, Ok(1));
        // A refused request keeps the connection; a broken one replaces it.
        let refused = lazy
            .call("x", |_| async {
                Err::<(), _>(CallFailure {
                    error: BrokerError::Backend("no".into()),
                    broken: false,
                })
            })
            .await;
        assert_eq!(refused, Err(BrokerError::Backend("no".into())));
        assert_eq!(lazy.call("x", |c| async move { Ok(c) }).await, Ok(1));
        let reset = || CallFailure {
            error: BrokerError::Unavailable("reset".into()),
            broken: true,
        };
        // Broken on the reused connection: replaced, and the call made once
        // more on the new one (a connection that died while idle).
        let healed = lazy
            .call("x", |c| async move {
                if c == 1 {
                    Err(reset())
                } else {
                    Ok(c)
                }
            })
            .await;
        assert_eq!(healed, Ok(2));
        // Broken on the fresh one too: the failure comes back, after one
        // more try at most.
        let broken = lazy.call("x", |_| async { Err::<(), _>(reset()) }).await;
        assert_eq!(broken, Err(BrokerError::Unavailable("reset".into())));
        assert_eq!(connects.load(Ordering::SeqCst), 3);
        assert_eq!(lazy.call("x", |c| async move { Ok(c) }).await, Ok(4));
        // A call that hangs fails within the bound and drops the connection.
        let hung = lazy
            .call("HANG", |_| {
                std::future::pending::<Result<(), CallFailure>>()
            })
            .await;
        assert!(
            matches!(&hung, Err(BrokerError::Unavailable(m)) if m.contains("HANG")),
            "{hung:?}"
        );
        // Down: the failure is returned. A call during the hold-off makes no
        // attempt before it ends: back by then, it gets the connection.
        up.store(false, Ordering::SeqCst);
        assert!(matches!(
            lazy.call("x", |c| async move { Ok(c) }).await,
            Err(BrokerError::Unavailable(_))
        ));
        assert_eq!(connects.load(Ordering::SeqCst), 4);
        up.store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        assert_eq!(lazy.call("x", |c| async move { Ok(c) }).await, Ok(5));
        assert!(
            started.elapsed() >= RETRY_HOLDOFF / 2,
            "waited out the hold-off"
        );
        assert_eq!(connects.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn epochs_differ() {
        let a = new_epoch();
        assert_eq!(a.len(), 16);
        assert_ne!(a, new_epoch());
    }
}
