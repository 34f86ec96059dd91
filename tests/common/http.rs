//! A real HTTP destination on loopback, with faults on demand.
//!
//! An axum server receives JSON-array POSTs and keeps the rows; in front of it a small TCP
//! proxy (the address flows are given) can reset connections, the way a load balancer or a
//! crashing service does. The test switches the destination between [`Mode`]s while a flow
//! runs, and reads back what was accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::proxy::reset;

/// How the destination behaves now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accepts every request (unless a row is refused by the reject rule).
    Healthy,
    /// Answers `500` with `Retry-After: 1`.
    Error500,
    /// Holds each request for [`Options::hang`] (past the sink's timeout), then answers `503`.
    Hang,
    /// Resets every connection, open or new, without an answer.
    Reset,
}

/// Decides whether a row is refused (with the reason the destination gives).
pub type RejectRule = fn(&Value) -> Option<String>;

/// How to build a destination.
#[derive(Clone)]
pub struct Options {
    /// The mode it starts in.
    pub mode: Mode,
    /// How long each accepted request takes.
    pub delay: Duration,
    /// How long a request hangs in [`Mode::Hang`].
    pub hang: Duration,
    /// Rows refused with `400`: any request holding one is refused whole.
    pub reject: Option<RejectRule>,
}

impl Default for Options {
    fn default() -> Self {
        Options { mode: Mode::Healthy, delay: Duration::ZERO, hang: Duration::from_secs(5), reject: None }
    }
}

struct Shared {
    mode: watch::Sender<Mode>,
    reject: Mutex<Option<RejectRule>>,
    options: Options,
    rows: Mutex<Vec<Value>>,
    keys: Mutex<Vec<String>>,
    requests: AtomicUsize,
    refused: AtomicUsize,
    resets: AtomicUsize,
}

/// A running destination; stops when dropped.
pub struct Destination {
    /// `http://127.0.0.1:PORT` (the proxy in front of the server).
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl Destination {
    /// Starts the server and its proxy on free loopback ports.
    pub fn start(options: Options) -> Destination {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("building the destination's runtime");
        let (mode, _) = watch::channel(options.mode);
        let shared = Arc::new(Shared {
            mode,
            reject: Mutex::new(options.reject),
            options,
            rows: Mutex::new(Vec::new()),
            keys: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            resets: AtomicUsize::new(0),
        });
        let front = runtime.block_on(async {
            let back = TcpListener::bind("127.0.0.1:0").await.expect("binding the destination");
            let back_addr = back.local_addr().expect("destination address");
            let app = Router::new().fallback(receive).with_state(shared.clone());
            tokio::spawn(async move { axum::serve(back, app).await });
            let front = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
            let front_addr = front.local_addr().expect("proxy address");
            tokio::spawn(proxy(front, back_addr, shared.clone()));
            front_addr
        });
        Destination { url: format!("http://{front}"), shared, _runtime: runtime }
    }

    /// Switches behaviour; open connections are reset at once when switching to `Reset`.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Changes which rows are refused (`None`: none), as a fixed destination would.
    pub fn set_reject(&self, rule: Option<RejectRule>) {
        *self.shared.reject.lock().expect("reject lock") = rule;
    }

    /// The rows accepted so far, in arrival order.
    pub fn rows(&self) -> Vec<Value> {
        self.shared.rows.lock().expect("rows lock").clone()
    }

    /// The idempotency keys of accepted requests.
    pub fn keys(&self) -> Vec<String> {
        self.shared.keys.lock().expect("keys lock").clone()
    }

    /// Requests that reached the server (not those the proxy reset).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Connections the proxy reset.
    pub fn resets(&self) -> usize {
        self.shared.resets.load(Ordering::Relaxed)
    }

    /// Requests refused with `400`.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

async fn receive(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.requests.fetch_add(1, Ordering::Relaxed);
    let mode = *s.mode.borrow();
    match mode {
        Mode::Error500 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, [("retry-after", "1")], "down for maintenance").into_response();
        }
        Mode::Hang | Mode::Reset => {
            tokio::time::sleep(s.options.hang).await;
            return (StatusCode::SERVICE_UNAVAILABLE, "too late").into_response();
        }
        Mode::Healthy => {}
    }
    let rows: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("body is not a JSON array: {e}")).into_response(),
    };
    let reject = *s.reject.lock().expect("reject lock");
    if let Some(why) = reject.and_then(|reject| rows.iter().find_map(reject)) {
        s.refused.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_REQUEST, format!("{{\"error\": \"{why}\"}}")).into_response();
    }
    if !s.options.delay.is_zero() {
        tokio::time::sleep(s.options.delay).await;
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    s.rows.lock().expect("rows lock").extend(rows);
    s.keys.lock().expect("keys lock").push(key);
    StatusCode::OK.into_response()
}

/// Pipes connections to the server, resetting them while the mode is `Reset`.
async fn proxy(front: TcpListener, back: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((mut client, _)) = front.accept().await else { continue };
        let shared = shared.clone();
        let mut mode = shared.mode.subscribe();
        tokio::spawn(async move {
            if *mode.borrow() == Mode::Reset {
                shared.resets.fetch_add(1, Ordering::Relaxed);
                reset(client);
                return;
            }
            let Ok(mut server) = TcpStream::connect(back).await else { return };
            let reset_now = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                _ = mode.wait_for(|m| *m == Mode::Reset) => true,
            };
            if reset_now {
                shared.resets.fetch_add(1, Ordering::Relaxed);
                reset(client);
            }
        });
    }
}

/// Serves `app` on a loopback port from its own runtime; returns the base URL and the runtime
/// (the server stops when the runtime drops).
pub fn serve(app: Router) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("test runtime");
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a test server");
        let addr = l.local_addr().expect("test server address");
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    });
    (format!("http://{addr}"), rt)
}
