//! Raw access to PostgreSQL for tests, without the adapter. Shared by this
//! crate's tests and the workspace's multinode tests (`#[path]`).

use std::time::Duration;

use tokio_postgres::NoTls;

/// A plain session for raw SQL, or None if PostgreSQL is unreachable.
pub async fn try_plain(url: &str) -> Option<tokio_postgres::Client> {
    let connect = tokio_postgres::connect(url, NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.ok()?;
    Some(client)
}
