use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// A bare HTTP/1.1 request with `Connection: close` (and a JSON body when
/// `body` is given, plus any `headers`); returns the status and the body.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let addr: std::net::SocketAddr = "127.0.0.1:3000".parse().unwrap();
/// let (status, body) = cable_test::http(addr, "GET", "/health", &[], None).await;
/// assert_eq!(status, 200);
/// # }
/// ```
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes())
        .await
        .expect("write the request");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("no HTTP response within {WAIT:?}: {method} {path}"))
        .expect("read the response");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}
