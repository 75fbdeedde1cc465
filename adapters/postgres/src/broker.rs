//! The PostgreSQL history broker: positions assigned by one
//! `INSERT … ON CONFLICT … DO UPDATE … RETURNING` per append, history,
//! sessions and history marks in tables, expired rows swept periodically;
//! presence in two tables changed by single statements under row locks.
//! See the crate docs ("History broker", "Presence") for the tables.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use cable_adapter_kit::broker::{new_epoch, CallFailure, Connect, LazyConnection, BROKER_TIMEOUT};
use cable_core::broker::{
    Broker, BrokerError, Entry, History, HistoryPolicy, Join, Position, PresenceInfo, PresenceLeft,
    PresenceRecord,
};
use cable_core::redact_url;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::error::{describe, is_connection_error};
use crate::naming::MAX_IDENTIFIER;
use crate::publisher::Endpoint;
use crate::{PostgresConfig, PostgresConfigError};

/// Default of [`PostgresBrokerConfig::cleanup_interval`].
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of a [`PostgresBroker`].
///
/// ```
/// use cable_postgres::PostgresBrokerConfig;
/// let config = PostgresBrokerConfig::new("postgres://app@127.0.0.1/app").schema("cable");
/// assert_eq!(config.table("history"), r#""cable"."cable_history""#);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresBrokerConfig {
    /// As [`PostgresConfig::url`] (TLS is not supported).
    pub url: String,
    /// The schema of the broker's tables, created if missing. Default
    /// `public`.
    pub schema: String,
    /// Put in front of each table's name (`<prefix>streams`,
    /// `<prefix>history`, `<prefix>sessions`, `<prefix>history_marks`,
    /// `<prefix>presence`, `<prefix>presence_members`).
    /// Default `cable_`.
    pub table_prefix: String,
    /// `application_name` of the broker's connection. Default
    /// `cable-broker-PID-<pid>`.
    pub application_name: String,
    /// How often expired history, streams, sessions and marks are deleted
    /// (reads never return them, whenever they are deleted). Default
    /// [`DEFAULT_CLEANUP_INTERVAL`]; `None` never sweeps (appends still trim
    /// their own stream).
    pub cleanup_interval: Option<Duration>,
    /// Bound on each call, connecting included; past it the call fails with
    /// `BrokerError::Unavailable`. Default [`BROKER_TIMEOUT`] (2 s).
    pub timeout: Duration,
}

impl PostgresBrokerConfig {
    /// Settings for `url` with the default schema, tables and name.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresBrokerConfig {
            url: url.into(),
            schema: "public".to_owned(),
            table_prefix: "cable_".to_owned(),
            application_name: format!("cable-broker-PID-{}", std::process::id()),
            cleanup_interval: Some(DEFAULT_CLEANUP_INTERVAL),
            timeout: BROKER_TIMEOUT,
        }
    }

    cable_adapter_kit::setters! {
        /// Sets the schema.
        schema(schema: impl Into<String>) => schema = schema.into();
        /// Sets the table prefix.
        table_prefix(prefix: impl Into<String>) => table_prefix = prefix.into();
        /// Sets the connection's application name.
        application_name(name: impl Into<String>) => application_name = name.into();
        /// Sets (or, with `None`, turns off) the periodic cleanup.
        cleanup_interval(every: Option<Duration>) => cleanup_interval = every;
        /// Sets the bound on each call.
        timeout(timeout: Duration) => timeout = timeout;
    }

    /// Checks the URL, the application name and the schema and table
    /// names, as [`PostgresBroker::new`] does, without connecting.
    pub fn validate(&self) -> Result<(), PostgresConfigError> {
        self.connection_config().map(drop)
    }

    /// The quoted, schema-qualified name of table `<prefix><name>`, as the
    /// broker's SQL writes it.
    pub fn table(&self, name: &str) -> String {
        format!(
            "{}.{}",
            quote(&self.schema),
            quote(&format!("{}{name}", self.table_prefix))
        )
    }

    fn connection_config(&self) -> Result<tokio_postgres::Config, PostgresConfigError> {
        let longest = format!("{}presence_members", self.table_prefix);
        for (what, name) in [("schema", &self.schema), ("table", &longest)] {
            if name.is_empty() || name.len() > MAX_IDENTIFIER || name.contains('\0') {
                return Err(PostgresConfigError::InvalidName {
                    what,
                    name: name.clone(),
                });
            }
        }
        let (config, _) = PostgresConfig::new(self.url.clone())
            .application_name(self.application_name.clone())
            .connection_configs()?;
        Ok(config)
    }
}

cable_adapter_kit::debug_redacting_url!(
    PostgresBrokerConfig,
    schema,
    table_prefix,
    application_name,
    cleanup_interval,
    timeout
);

/// `name` as a quoted identifier (`"` doubled).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL of every statement, for one schema and table prefix.
struct Sql {
    schema: String,
    streams: String,
    history: String,
    sessions: String,
    marks: String,
    presence: String,
    members: String,
    /// The indexes' names, unqualified (an index lives in its table's schema).
    presence_sid_index: String,
    presence_expiry_index: String,
}

impl Sql {
    fn new(c: &PostgresBrokerConfig) -> Self {
        Sql {
            schema: c.schema.clone(),
            streams: c.table("streams"),
            history: c.table("history"),
            sessions: c.table("sessions"),
            marks: c.table("history_marks"),
            presence: c.table("presence"),
            members: c.table("presence_members"),
            presence_sid_index: quote(&format!("{}presence_sid", c.table_prefix)),
            presence_expiry_index: quote(&format!("{}presence_expiry", c.table_prefix)),
        }
    }

    fn create(&self) -> String {
        let Sql {
            streams,
            history,
            sessions,
            marks,
            presence,
            members,
            presence_sid_index,
            presence_expiry_index,
            ..
        } = self;
        format!(
            "CREATE TABLE IF NOT EXISTS {streams} (
                stream text PRIMARY KEY,
                epoch text NOT NULL,
                last_offset bigint NOT NULL,
                history_limit bigint NOT NULL,
                ttl_ms bigint NOT NULL,
                expires_at timestamptz NOT NULL);
            CREATE TABLE IF NOT EXISTS {history} (
                stream text NOT NULL,
                epoch text NOT NULL,
                \"offset\" bigint NOT NULL,
                at timestamptz NOT NULL,
                payload text NOT NULL,
                PRIMARY KEY (stream, epoch, \"offset\"));
            CREATE TABLE IF NOT EXISTS {sessions} (
                sid text PRIMARY KEY,
                state text NOT NULL,
                expires_at timestamptz NOT NULL);
            CREATE TABLE IF NOT EXISTS {marks} (
                stream text PRIMARY KEY,
                history_limit bigint NOT NULL,
                ttl_ms bigint NOT NULL,
                expires_at timestamptz NOT NULL);
            CREATE TABLE IF NOT EXISTS {presence} (
                stream text NOT NULL,
                sid text NOT NULL,
                id text NOT NULL,
                expires_at timestamptz NOT NULL,
                PRIMARY KEY (stream, sid));
            CREATE INDEX IF NOT EXISTS {presence_sid_index} ON {presence} (sid);
            CREATE INDEX IF NOT EXISTS {presence_expiry_index} ON {presence} (expires_at);
            CREATE TABLE IF NOT EXISTS {members} (
                stream text NOT NULL,
                id text NOT NULL,
                info text NOT NULL,
                sessions bigint NOT NULL,
                seq bigserial NOT NULL,
                PRIMARY KEY (stream, id));"
        )
    }

    /// One statement: the stream's row gets the next offset (or, when it is
    /// missing or expired, a new epoch at 1) under its row lock, so appends
    /// of every node are serialized per stream; the entry is inserted and
    /// the stream trimmed to its limit (older epochs included).
    /// $1 stream, $2 payload, $3 limit, $4 ttl_ms, $5 new epoch.
    fn append(&self) -> String {
        let Sql {
            streams, history, ..
        } = self;
        format!(
            "WITH s AS (
                INSERT INTO {streams} AS t
                    (stream, epoch, last_offset, history_limit, ttl_ms, expires_at)
                VALUES ($1::text, $5::text, 1, $3::bigint, $4::bigint,
                        clock_timestamp() + $4::bigint * interval '1 millisecond')
                ON CONFLICT (stream) DO UPDATE SET
                    epoch = CASE WHEN t.expires_at <= clock_timestamp()
                                 THEN EXCLUDED.epoch ELSE t.epoch END,
                    last_offset = CASE WHEN t.expires_at <= clock_timestamp()
                                       THEN 1 ELSE t.last_offset + 1 END,
                    history_limit = EXCLUDED.history_limit,
                    ttl_ms = EXCLUDED.ttl_ms,
                    expires_at = EXCLUDED.expires_at
                RETURNING t.epoch, t.last_offset
            ), inserted AS (
                INSERT INTO {history} (stream, epoch, \"offset\", at, payload)
                SELECT $1::text, s.epoch, s.last_offset, clock_timestamp(), $2::text FROM s
            ), trimmed AS (
                DELETE FROM {history} h USING s
                WHERE h.stream = $1::text
                  AND (h.epoch <> s.epoch OR h.\"offset\" <= s.last_offset - $3::bigint)
            )
            SELECT epoch, last_offset FROM s"
        )
    }

    /// The stream's row and its kept entries from offset $2 on (the entry
    /// at the offset itself included, to check it is still there), oldest
    /// first; `fresh` tells whether an entry is within the TTL.
    fn from(&self) -> String {
        let Sql {
            streams, history, ..
        } = self;
        format!(
            "SELECT s.epoch, s.last_offset, h.\"offset\",
                    floor(extract(epoch FROM h.at))::bigint AS ts, h.payload,
                    h.at >= clock_timestamp() - s.ttl_ms * interval '1 millisecond' AS fresh
             FROM {streams} s
             LEFT JOIN {history} h ON h.stream = s.stream AND h.epoch = s.epoch
                  AND h.\"offset\" >= $2::bigint
                  AND h.\"offset\" > s.last_offset - s.history_limit
             WHERE s.stream = $1::text AND s.expires_at > clock_timestamp()
             ORDER BY h.\"offset\""
        )
    }

    /// The stream's row and its kept entries at or after Unix second $2.
    fn since(&self) -> String {
        let Sql {
            streams, history, ..
        } = self;
        format!(
            "SELECT s.epoch, h.\"offset\", floor(extract(epoch FROM h.at))::bigint AS ts, h.payload
             FROM {streams} s
             LEFT JOIN {history} h ON h.stream = s.stream AND h.epoch = s.epoch
                  AND h.\"offset\" > s.last_offset - s.history_limit
                  AND h.at >= clock_timestamp() - s.ttl_ms * interval '1 millisecond'
                  AND h.at >= to_timestamp($2::bigint)
             WHERE s.stream = $1::text AND s.expires_at > clock_timestamp()
             ORDER BY h.\"offset\""
        )
    }

    fn enable(&self) -> String {
        let marks = &self.marks;
        format!(
            "INSERT INTO {marks} (stream, history_limit, ttl_ms, expires_at)
             VALUES ($1::text, $2::bigint, $3::bigint,
                     clock_timestamp() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (stream) DO UPDATE SET history_limit = EXCLUDED.history_limit,
                 ttl_ms = EXCLUDED.ttl_ms, expires_at = EXCLUDED.expires_at"
        )
    }

    fn policy(&self) -> String {
        let marks = &self.marks;
        format!(
            "SELECT history_limit, ttl_ms FROM {marks}
             WHERE stream = $1::text AND expires_at > clock_timestamp()"
        )
    }

    fn store(&self) -> String {
        let sessions = &self.sessions;
        format!(
            "INSERT INTO {sessions} (sid, state, expires_at)
             VALUES ($1::text, $2::text, clock_timestamp() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (sid) DO UPDATE SET state = EXCLUDED.state,
                 expires_at = EXCLUDED.expires_at"
        )
    }

    fn fetch(&self) -> String {
        let sessions = &self.sessions;
        format!(
            "SELECT state FROM {sessions} WHERE sid = $1::text AND expires_at > clock_timestamp()"
        )
    }

    fn remove(&self) -> String {
        format!("DELETE FROM {} WHERE sid = $1::text", self.sessions)
    }

    /// Session $2 joins stream $1 as member $3 with info $4 for $5 ms. The
    /// session's row is inserted, or renewed when it is there as the same
    /// id (`xmax = 0` tells an insert from an update); no row comes back
    /// when it is there as another id (the mismatch). The member's row
    /// counts its sessions under its row lock, so that of two sessions
    /// joining at once on two nodes exactly one is the first; a member at 0
    /// (left, not yet deleted by the cleanup) that comes back takes a new
    /// place in the join order.
    /// Returns (session rows: 0 on a mismatch, added, the member's sessions).
    fn presence_join(&self) -> String {
        let Sql {
            presence, members, ..
        } = self;
        format!(
            "WITH s AS (
                INSERT INTO {presence} AS p (stream, sid, id, expires_at)
                VALUES ($1::text, $2::text, $3::text,
                        clock_timestamp() + $5::bigint * interval '1 millisecond')
                ON CONFLICT (stream, sid) DO UPDATE SET expires_at = EXCLUDED.expires_at
                    WHERE p.id = EXCLUDED.id
                RETURNING (p.xmax = 0) AS added
            ), m AS (
                INSERT INTO {members} AS m (stream, id, info, sessions)
                SELECT $1::text, $3::text, $4::text, 1 FROM s
                ON CONFLICT (stream, id) DO UPDATE SET
                    info = EXCLUDED.info,
                    sessions = GREATEST(m.sessions, 0)
                        + CASE WHEN (SELECT added FROM s) THEN 1 ELSE 0 END,
                    seq = CASE WHEN m.sessions <= 0 THEN EXCLUDED.seq ELSE m.seq END
                RETURNING m.sessions
            )
            SELECT (SELECT count(*) FROM s), coalesce((SELECT added FROM s), false),
                   coalesce((SELECT sessions FROM m), 0::bigint)"
        )
    }

    /// Session $2 leaves stream $1: its row is deleted and its member's
    /// count lowered under the member's row lock. Returns the member's id
    /// and its sessions left, no row when the session was not there.
    fn presence_leave(&self) -> String {
        let Sql {
            presence, members, ..
        } = self;
        format!(
            "WITH gone AS (
                DELETE FROM {presence} WHERE stream = $1::text AND sid = $2::text RETURNING id
            )
            UPDATE {members} m SET sessions = GREATEST(m.sessions - 1, 0)
            FROM gone WHERE m.stream = $1::text AND m.id = gone.id
            RETURNING m.id, m.sessions"
        )
    }

    /// The members of stream $1, oldest first.
    fn presence_info(&self) -> String {
        format!(
            "SELECT id, info FROM {} WHERE stream = $1::text AND sessions > 0 ORDER BY seq",
            self.members
        )
    }

    /// Renews the sessions $1 (an array) for $2 ms.
    fn presence_touch(&self) -> String {
        format!(
            "UPDATE {} SET expires_at = clock_timestamp() + $2::bigint * interval '1 millisecond'
             WHERE sid = ANY($1::text[])",
            self.presence
        )
    }

    /// Deletes up to [`SWEEP_BATCH`] sessions that ran out, skipping rows
    /// another node's sweep (or a join, a leave, a touch) holds, so that
    /// each is deleted by one node; their members' counts are lowered
    /// under the members' row locks, so that a member whose last sessions
    /// two nodes delete at once reaches 0 in exactly one of them. Returns
    /// one row with the sessions deleted, and the stream and id of each
    /// member that reached 0 (NULL when none did).
    fn presence_expire(&self) -> String {
        let Sql {
            presence, members, ..
        } = self;
        format!(
            "WITH gone AS (
                DELETE FROM {presence} WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM {presence} WHERE expires_at <= clock_timestamp()
                    LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED))
                RETURNING stream, id
            ), counts AS (
                SELECT stream, id, count(*) AS n FROM gone GROUP BY stream, id
            ), lowered AS (
                UPDATE {members} m SET sessions = GREATEST(m.sessions - c.n, 0)
                FROM counts c WHERE m.stream = c.stream AND m.id = c.id
                RETURNING m.stream, m.id, m.sessions
            )
            SELECT (SELECT count(*) FROM gone), l.stream, l.id
            FROM (SELECT 1) one LEFT JOIN lowered l ON l.sessions = 0"
        )
    }

    /// Separate statements (each its own transaction), so that no lock is
    /// held from one to the next, each deleting at most [`SWEEP_BATCH`] rows
    /// (run again while they fill it), so that none runs long. Rows locked by
    /// an append are skipped (the append trims its stream itself, or the
    /// next sweep does), so the sweep never waits for an append and cannot
    /// deadlock with one.
    fn cleanup(&self) -> [String; 5] {
        let Sql {
            streams, history, ..
        } = self;
        let expired = |table: &str| {
            format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM {table} WHERE expires_at <= clock_timestamp()
                    LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED))"
            )
        };
        [
            format!(
                "DELETE FROM {history} WHERE ctid = ANY(ARRAY(
                    SELECT h.ctid FROM {history} h
                    LEFT JOIN {streams} s ON s.stream = h.stream
                    WHERE s.stream IS NULL OR s.expires_at <= clock_timestamp()
                       OR h.epoch <> s.epoch
                       OR h.\"offset\" <= s.last_offset - s.history_limit
                       OR h.at < clock_timestamp() - s.ttl_ms * interval '1 millisecond'
                    LIMIT {SWEEP_BATCH} FOR UPDATE OF h SKIP LOCKED))"
            ),
            expired(streams),
            expired(&self.sessions),
            expired(&self.marks),
            // Members that left (their sessions are the presence sweep's,
            // which reports the leaves).
            format!(
                "DELETE FROM {members} WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM {members} WHERE sessions <= 0
                    LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED))",
                members = self.members
            ),
        ]
    }
}

/// Most rows one cleanup statement deletes.
const SWEEP_BATCH: u64 = 1000;

/// Most sessions one presence touch renews.
const PRESENCE_BATCH: usize = 1000;

/// A connection and its prepared statements.
struct Conn {
    client: Client,
    append: Statement,
    from: Statement,
    since: Statement,
    enable: Statement,
    policy: Statement,
    store: Statement,
    fetch: Statement,
    remove: Statement,
    presence_join: Statement,
    presence_leave: Statement,
    presence_info: Statement,
    presence_touch: Statement,
    presence_expire: Statement,
}

struct Backend {
    endpoint: Endpoint,
    sql: Sql,
}

#[async_trait]
impl Connect for Backend {
    type Conn = Arc<Conn>;
    const NAME: &'static str = "postgres";

    async fn connect(&self) -> Result<Arc<Conn>, BrokerError> {
        let mut client = self
            .endpoint
            .connect("postgres broker")
            .await
            .map_err(|e| to_broker_error(&e))?;
        self.create_tables(&mut client)
            .await
            .map_err(|e| to_broker_error(&e))?;
        let sql = &self.sql;
        let prepare = |text: String| {
            let client = &client;
            async move { client.prepare(&text).await.map_err(|e| to_broker_error(&e)) }
        };
        Ok(Arc::new(Conn {
            append: prepare(sql.append()).await?,
            from: prepare(sql.from()).await?,
            since: prepare(sql.since()).await?,
            enable: prepare(sql.enable()).await?,
            policy: prepare(sql.policy()).await?,
            store: prepare(sql.store()).await?,
            fetch: prepare(sql.fetch()).await?,
            remove: prepare(sql.remove()).await?,
            presence_join: prepare(sql.presence_join()).await?,
            presence_leave: prepare(sql.presence_leave()).await?,
            presence_info: prepare(sql.presence_info()).await?,
            presence_touch: prepare(sql.presence_touch()).await?,
            presence_expire: prepare(sql.presence_expire()).await?,
            client,
        }))
    }

    fn is_closed(conn: &Arc<Conn>) -> bool {
        conn.client.is_closed()
    }
}

impl Backend {
    /// Creates the schema and the tables that are missing, under an advisory
    /// lock so that nodes starting together do not race (concurrent
    /// `CREATE TABLE IF NOT EXISTS` can fail on the catalog's unique index).
    /// Nothing is created when everything is there, so a role without
    /// `CREATE` works on tables made beforehand.
    async fn create_tables(&self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        let sql = &self.sql;
        let check = "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1::text),
                            to_regclass($2::text) IS NOT NULL AND to_regclass($3::text) IS NOT NULL
                        AND to_regclass($4::text) IS NOT NULL AND to_regclass($5::text) IS NOT NULL
                        AND to_regclass($6::text) IS NOT NULL AND to_regclass($7::text) IS NOT NULL";
        let params: [&(dyn ToSql + Sync); 7] = [
            &sql.schema,
            &sql.streams,
            &sql.history,
            &sql.sessions,
            &sql.marks,
            &sql.presence,
            &sql.members,
        ];
        let present = |row: Row| -> Result<(bool, bool), tokio_postgres::Error> {
            Ok((row.try_get::<_, i64>(0)? > 0, row.try_get::<_, bool>(1)?))
        };
        if present(client.query_one(check, &params).await?)? == (true, true) {
            return Ok(());
        }
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('cable broker tables ' || $1::text))",
            &[&sql.schema],
        )
        .await?;
        let (schema, tables) = present(tx.query_one(check, &params).await?)?;
        if !schema {
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote(&sql.schema)
            ))
            .await?;
        }
        if !tables {
            tx.batch_execute(&sql.create()).await?;
        }
        tx.commit().await
    }
}

struct Inner {
    conn: LazyConnection<Backend>,
    config: PostgresBrokerConfig,
}

/// The PostgreSQL broker: history and sessions of reliable streams, shared
/// by every node on the same database and tables. See the crate docs
/// ("History broker").
pub struct PostgresBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBroker")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl PostgresBroker {
    /// Validates `config` and starts the cleanup task (if any) on the
    /// current tokio runtime. Connects nothing yet: the connection (and the
    /// tables, if missing) is made by the first call, and again after it is
    /// lost.
    pub fn new(config: PostgresBrokerConfig) -> Result<Self, PostgresConfigError> {
        let pg = config.connection_config()?;
        let backend = Backend {
            endpoint: Endpoint {
                config: pg,
                url: redact_url(&config.url),
            },
            sql: Sql::new(&config),
        };
        let runtime = match config.cleanup_interval {
            Some(_) => Some(
                tokio::runtime::Handle::try_current()
                    .map_err(|_| PostgresConfigError::NoRuntime)?,
            ),
            None => None,
        };
        let inner = Arc::new(Inner {
            conn: LazyConnection::with_timeout(backend, config.timeout),
            config,
        });
        if let (Some(runtime), Some(every)) = (runtime, inner.config.cleanup_interval) {
            runtime.spawn(sweep(Arc::downgrade(&inner), every));
        }
        Ok(PostgresBroker { inner })
    }

    /// The settings this broker was built with.
    pub fn config(&self) -> &PostgresBrokerConfig {
        &self.inner.config
    }

    /// Deletes expired history, streams, sessions and marks now (the
    /// periodic cleanup does the same); returns how many rows went.
    pub async fn cleanup(&self) -> Result<u64, BrokerError> {
        self.inner.cleanup().await
    }
}

impl Inner {
    /// Runs `f` on the connection. A statement on a table that is gone
    /// (dropped with its schema while we were connected) drops the
    /// connection and is tried once more on a new one, which creates the
    /// tables again.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, BrokerError>
    where
        T: Send,
        F: Fn(Arc<Conn>) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        let gone = std::sync::atomic::AtomicBool::new(false);
        let attempt = || {
            self.conn.call(what, |conn| async {
                f(conn).await.map_err(|e| {
                    let missing = is_missing_table(&e);
                    if missing {
                        gone.store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(error = %describe(&e), "postgres broker tables are gone; creating them again");
                    }
                    CallFailure {
                        error: to_broker_error(&e),
                        broken: missing || is_connection_error(&e),
                    }
                })
            })
        };
        match attempt().await {
            Err(_) if gone.swap(false, std::sync::atomic::Ordering::Relaxed) => attempt().await,
            other => other,
        }
    }

    /// Runs the connection's prepared statement `stmt` with `params`; its
    /// rows (none for most writes, at most one for a read by a table's key).
    async fn query(
        &self,
        what: &str,
        stmt: fn(&Conn) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, BrokerError> {
        self.call(what, |conn| async move {
            conn.client.query(stmt(&conn), params).await
        })
        .await
    }

    /// As [`Inner::query`], run again (up to 3 times) when PostgreSQL
    /// aborted it for a deadlock or a serialization failure: the presence
    /// statements lock member rows in no fixed order, so two sweeps may
    /// deadlock, and the aborted one changed nothing.
    async fn query_retrying(
        &self,
        what: &str,
        stmt: fn(&Conn) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, BrokerError> {
        self.call(what, |conn| async move {
            let mut tries = 0;
            loop {
                match conn.client.query(stmt(&conn), params).await {
                    Err(e) if tries < 3 && is_retryable(&e) => {
                        tries += 1;
                        tracing::debug!(error = %describe(&e), "presence statement aborted; running it again");
                    }
                    other => return other,
                }
            }
        })
        .await
    }

    async fn cleanup(&self) -> Result<u64, BrokerError> {
        let mut n = 0;
        for sql in self.conn.backend().sql.cleanup() {
            loop {
                let deleted = self
                    .call("the cleanup", |conn| {
                        let sql = sql.clone();
                        async move { conn.client.execute(&sql, &[]).await }
                    })
                    .await?;
                n += deleted;
                if deleted < SWEEP_BATCH {
                    break;
                }
            }
        }
        Ok(n)
    }
}

fn is_retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            || *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
    })
}

fn is_missing_table(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE
            || *c == tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME
    })
}

async fn sweep(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        match inner.cleanup().await {
            Ok(n) => tracing::debug!(rows = n, "postgres broker cleanup"),
            Err(e) => {
                tracing::debug!(error = %e, "postgres broker cleanup failed; trying again later")
            }
        }
    }
}

/// `d` in ms, at least 1, at most 100 years (PostgreSQL's timestamps end
/// in 294276 AD, and adding `i64::MAX` ms to now would overflow).
fn millis(d: Duration) -> i64 {
    const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    i64::try_from(d.min(MAX).as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

fn limit(policy: HistoryPolicy) -> i64 {
    i64::try_from(policy.limit).unwrap_or(i64::MAX).max(1)
}

fn bad_row(e: tokio_postgres::Error) -> BrokerError {
    BrokerError::Backend(format!("postgres: unexpected row: {}", describe(&e)))
}

fn unsigned(n: i64, what: &str) -> Result<u64, BrokerError> {
    u64::try_from(n).map_err(|_| BrokerError::Backend(format!("postgres: negative {what}: {n}")))
}

fn entry(row: &Row, offset_col: usize) -> Result<Option<Entry>, BrokerError> {
    let Some(offset) = row.try_get::<_, Option<i64>>(offset_col).map_err(bad_row)? else {
        return Ok(None);
    };
    let ts: i64 = row.try_get(offset_col + 1).map_err(bad_row)?;
    Ok(Some(Entry {
        offset: unsigned(offset, "offset")?,
        timestamp: unsigned(ts, "timestamp")?,
        payload: row.try_get(offset_col + 2).map_err(bad_row)?,
    }))
}

#[async_trait]
impl Broker for PostgresBroker {
    async fn append(
        &self,
        stream: &str,
        payload: &str,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError> {
        let (limit, ttl, epoch) = (limit(policy), millis(policy.ttl), new_epoch());
        let row = self
            .inner
            .call("the append", |conn| {
                let epoch = epoch.clone();
                async move {
                    let params: [&(dyn ToSql + Sync); 5] =
                        [&stream, &payload, &limit, &ttl, &epoch];
                    conn.client.query_one(&conn.append, &params).await
                }
            })
            .await?;
        Ok(Position {
            epoch: row.try_get(0).map_err(bad_row)?,
            offset: unsigned(row.try_get(1).map_err(bad_row)?, "offset")?,
        })
    }

    async fn history_from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<History, BrokerError> {
        let refuse = |why: &str| {
            Err(BrokerError::not_found(
                stream,
                format!("{why} (asked for {epoch}/{offset})"),
            ))
        };
        let Ok(from) = i64::try_from(offset) else {
            return refuse("offset above the latest");
        };
        let rows = self
            .inner
            .query("a history read", |c| &c.from, &[&stream, &from])
            .await?;
        let Some(first) = rows.first() else {
            return refuse("unknown stream");
        };
        let current: String = first.try_get(0).map_err(bad_row)?;
        let last = unsigned(first.try_get(1).map_err(bad_row)?, "offset")?;
        if current != epoch {
            return refuse("another epoch");
        }
        if offset > last {
            return refuse("offset above the latest");
        }
        let history = |entries| History {
            epoch: current.clone(),
            entries,
        };
        if offset == last {
            return Ok(history(Vec::new()));
        }
        // The entry at `offset` must still be kept (and fresh): otherwise
        // what follows it may have a gap.
        let at_offset = entry(first, 2)?;
        let fresh: Option<bool> = first.try_get(5).map_err(bad_row)?;
        if at_offset.map(|e| e.offset) != Some(offset) || fresh != Some(true) {
            return refuse("offset evicted or expired");
        }
        let mut entries = Vec::with_capacity(rows.len() - 1);
        for row in &rows[1..] {
            if row.try_get::<_, Option<bool>>(5).map_err(bad_row)? == Some(true) {
                entries.extend(entry(row, 2)?);
            }
        }
        Ok(history(entries))
    }

    async fn history_since(&self, stream: &str, since: u64) -> Result<History, BrokerError> {
        // Past year 5000 nothing can match, and `to_timestamp` would
        // overflow on larger values.
        let since = i64::try_from(since.min(100_000_000_000)).unwrap_or(i64::MAX);
        let rows = self
            .inner
            .query("a history read", |c| &c.since, &[&stream, &since])
            .await?;
        let Some(first) = rows.first() else {
            return Ok(History::default());
        };
        let mut history = History {
            epoch: first.try_get(0).map_err(bad_row)?,
            entries: Vec::with_capacity(rows.len()),
        };
        for row in &rows {
            history.entries.extend(entry(row, 1)?);
        }
        Ok(history)
    }

    async fn enable_history(&self, stream: &str, policy: HistoryPolicy) -> Result<(), BrokerError> {
        let (limit, ttl) = (limit(policy), millis(policy.ttl));
        self.inner
            .query("the history mark", |c| &c.enable, &[&stream, &limit, &ttl])
            .await
            .map(drop)
    }

    async fn history_policy(&self, stream: &str) -> Result<Option<HistoryPolicy>, BrokerError> {
        let rows = self
            .inner
            .query("the history mark", |c| &c.policy, &[&stream])
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let limit: i64 = row.try_get(0).map_err(bad_row)?;
        let ttl: i64 = row.try_get(1).map_err(bad_row)?;
        Ok(Some(HistoryPolicy {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            ttl: Duration::from_millis(unsigned(ttl, "ttl")?),
        }))
    }

    async fn store_session(
        &self,
        sid: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let ttl = millis(ttl);
        self.inner
            .query("the session", |c| &c.store, &[&sid, &state, &ttl])
            .await
            .map(drop)
    }

    async fn fetch_session(&self, sid: &str) -> Result<Option<String>, BrokerError> {
        let rows = self
            .inner
            .query("the session", |c| &c.fetch, &[&sid])
            .await?;
        rows.first()
            .map(|r| r.try_get(0).map_err(bad_row))
            .transpose()
    }

    async fn remove_session(&self, sid: &str) -> Result<(), BrokerError> {
        self.inner
            .query("the session", |c| &c.remove, &[&sid])
            .await
            .map(drop)
    }

    async fn presence_join(&self, join: Join<'_>) -> Result<bool, BrokerError> {
        let (stream, sid, id, info, ttl) = (join.stream, join.sid, join.id, join.info, join.ttl);
        let ttl = millis(ttl);
        let rows = self
            .inner
            .query_retrying(
                "the presence join",
                |c| &c.presence_join,
                &[&stream, &sid, &id, &info, &ttl],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| BrokerError::Backend("postgres: no row from a presence join".into()))?;
        let matched: i64 = row.try_get(0).map_err(bad_row)?;
        if matched == 0 {
            return Err(BrokerError::PresenceIdMismatch);
        }
        let added: bool = row.try_get(1).map_err(bad_row)?;
        let sessions: i64 = row.try_get(2).map_err(bad_row)?;
        Ok(added && sessions == 1)
    }

    async fn presence_leave(&self, stream: &str, sid: &str) -> Result<Option<String>, BrokerError> {
        let rows = self
            .inner
            .query_retrying(
                "the presence leave",
                |c| &c.presence_leave,
                &[&stream, &sid],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let id: String = row.try_get(0).map_err(bad_row)?;
        let sessions: i64 = row.try_get(1).map_err(bad_row)?;
        Ok((sessions == 0).then_some(id))
    }

    async fn presence_info(&self, stream: &str) -> Result<PresenceInfo, BrokerError> {
        let rows = self
            .inner
            .query("the presence info", |c| &c.presence_info, &[&stream])
            .await?;
        let records = rows
            .iter()
            .map(|r| {
                Ok(PresenceRecord {
                    id: r.try_get(0).map_err(bad_row)?,
                    info: r.try_get(1).map_err(bad_row)?,
                })
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        Ok(PresenceInfo {
            total: records.len(),
            records,
        })
    }

    async fn presence_touch(&self, sids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        let ttl = millis(ttl);
        for batch in sids.chunks(PRESENCE_BATCH) {
            self.inner
                .query_retrying("the presence touch", |c| &c.presence_touch, &[&batch, &ttl])
                .await?;
        }
        Ok(())
    }

    async fn presence_expire(&self) -> Result<Vec<PresenceLeft>, BrokerError> {
        let mut left = Vec::new();
        loop {
            let rows = self
                .inner
                .query_retrying("the presence sweep", |c| &c.presence_expire, &[])
                .await?;
            let mut deleted = 0;
            for row in &rows {
                deleted = row.try_get::<_, i64>(0).map_err(bad_row)?;
                let stream: Option<String> = row.try_get(1).map_err(bad_row)?;
                let id: Option<String> = row.try_get(2).map_err(bad_row)?;
                if let (Some(stream), Some(id)) = (stream, id) {
                    left.push(PresenceLeft { stream, id });
                }
            }
            if deleted < SWEEP_BATCH as i64 {
                return Ok(left);
            }
        }
    }

    fn supports_presence(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// As the pub/sub side classifies errors: connection problems and
/// transient server conditions are `Unavailable`, anything else `Backend`.
fn to_broker_error(e: &tokio_postgres::Error) -> BrokerError {
    if crate::error::is_transient(e) {
        BrokerError::Unavailable(format!("postgres: {}", describe(e)))
    } else {
        BrokerError::Backend(format!("postgres: {}", describe(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_checked() {
        let c = PostgresBrokerConfig::new("postgres://u:hunter2@h/db");
        assert_eq!(c.table("streams"), r#""public"."cable_streams""#);
        assert!(!format!("{c:?}").contains("hunter2"));
        let odd = c.clone().schema(r#"my"schema"#).table_prefix("");
        assert_eq!(odd.table("history"), r#""my""schema"."history""#);
        assert!(odd.validate().is_ok());
        for bad in [
            c.clone().schema(""),
            c.clone().schema("a\0b"),
            c.clone().table_prefix("x".repeat(51)),
        ] {
            assert!(
                matches!(bad.validate(), Err(PostgresConfigError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            PostgresBrokerConfig::new("postgres://h/db?sslmode=require").validate(),
            Err(PostgresConfigError::TlsNotSupported { .. })
        ));
    }

    #[test]
    fn needs_a_runtime_only_to_sweep() {
        let c = PostgresBrokerConfig::new("postgres://h/db");
        assert!(matches!(
            PostgresBroker::new(c.clone()),
            Err(PostgresConfigError::NoRuntime)
        ));
        assert!(PostgresBroker::new(c.cleanup_interval(None)).is_ok());
    }
}
