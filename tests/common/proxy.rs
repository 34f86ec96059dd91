//! A TCP proxy on loopback that can be taken down: while down it resets every connection, open
//! or new, as a crashed service or a failing load balancer does. Put in front of a real service
//! (PostgreSQL, an S3 server) it gives a connector a transient outage without touching the
//! service other tests share.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    down: watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    /// Forwards a free loopback port to `back`.
    pub fn start(back: SocketAddr) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("building the proxy's runtime");
        let (down, _) = watch::channel(false);
        let watching = down.clone();
        let port = runtime.block_on(async {
            let front = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
            let port = front.local_addr().expect("proxy address").port();
            tokio::spawn(forward(front, back, watching));
            port
        });
        Proxy { port, down, _runtime: runtime }
    }

    /// Takes the service down (resetting open connections) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

async fn forward(front: TcpListener, back: SocketAddr, down: watch::Sender<bool>) {
    loop {
        let Ok((mut client, _)) = front.accept().await else { continue };
        let mut state = down.subscribe();
        tokio::spawn(async move {
            if *state.borrow() {
                reset(client);
                return;
            }
            let Ok(mut server) = TcpStream::connect(back).await else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = state.wait_for(|d| *d) => reset(client),
            }
        });
    }
}

/// Closes a connection with a TCP RST rather than a FIN.
pub fn reset(stream: TcpStream) {
    // A zero linger makes close send RST at once; it cannot block (the deprecation warns about
    // non-zero lingers).
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}
