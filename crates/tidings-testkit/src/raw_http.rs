//! Hand-written HTTP/1.1 over a plain TCP socket, for what an HTTP client
//! library hides: abandoning a request once it is on the wire, or knowing
//! that a request was fully written before the next one starts.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A response read to the end of the connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it was chunked.
    pub body: String,
}

impl RawResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Connects to `addr` and writes a complete request with `Connection:
/// close`, returning the socket so the caller can read the response or drop
/// it unread.
///
/// # Errors
///
/// Fails when the connection or the write fails or times out.
pub async fn start_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<TcpStream> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    let limit = crate::DEFAULT_WAIT;
    let mut stream = timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("timed out connecting to {addr}"))?
        .with_context(|| format!("connecting to {addr}"))?;
    timeout(limit, stream.write_all(text.as_bytes()))
        .await
        .map_err(|_| anyhow!("timed out writing {method} {path}"))?
        .with_context(|| format!("writing {method} {path}"))?;
    Ok(stream)
}

/// Reads a whole response (the server closes after it) within `limit`.
///
/// # Errors
///
/// Fails on timeout or when the bytes are not an HTTP response.
pub async fn read_response(mut stream: TcpStream, limit: Duration) -> anyhow::Result<RawResponse> {
    let mut bytes = Vec::new();
    timeout(limit, stream.read_to_end(&mut bytes))
        .await
        .map_err(|_| anyhow!("timed out reading a response"))?
        .context("reading a response")?;
    parse_response(&bytes)
}

/// Sends a request and reads its response.
///
/// # Errors
///
/// As [`start_request`] and [`read_response`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<RawResponse> {
    let stream = start_request(addr, method, path, headers, body).await?;
    read_response(stream, crate::DEFAULT_WAIT).await
}

fn parse_response(bytes: &[u8]) -> anyhow::Result<RawResponse> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("truncated chunked body"))?;
        let size_text = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        if after.len() < size {
            bail!("truncated chunk");
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn parses_sized_and_chunked_bodies() {
        let sized =
            parse_response(b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\nX-A: b\r\n\r\nno")
                .unwrap();
        assert_eq!(sized.status, 409);
        assert_eq!(sized.header("x-a"), Some("b"));
        assert_eq!(sized.body, "no");
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, "abcde");
    }
}
