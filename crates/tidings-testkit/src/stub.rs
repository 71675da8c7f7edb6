//! A tiny HTTP server on `127.0.0.1:0` that answers every GET with a JSON body the
//! test can change, and counts the requests it got. Used as a JWKS endpoint, and as
//! a trap that must never be called (a URL planted in a token's `jku`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Longest request head read; anything longer is answered and dropped.
const MAX_HEAD: usize = 16 * 1024;

/// See the module docs. Stops when dropped.
pub struct JsonStub {
    url: String,
    /// The body served. A `std::sync::Mutex`: nothing awaits while it is held.
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl JsonStub {
    /// Starts serving `body` at `http://127.0.0.1:<port>/`.
    ///
    /// # Errors
    /// Fails when no loopback port can be bound.
    pub async fn start(body: &Value) -> anyhow::Result<JsonStub> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let body = Arc::new(Mutex::new(body.to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (body.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let served = served.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    // A deadline, so a client that never finishes its request cannot
                    // keep the task forever.
                    let read = tokio::time::timeout(Duration::from_secs(5), async {
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return false,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        true
                    })
                    .await;
                    if !matches!(read, Ok(true)) {
                        return;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().map(|b| b.clone()).unwrap_or_default();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok(JsonStub {
            url,
            body,
            hits,
            task,
        })
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Serves `body` from now on.
    pub fn set_body(&self, body: &Value) {
        if let Ok(mut b) = self.body.lock() {
            *b = body.to_string();
        }
    }
}

impl Drop for JsonStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}
