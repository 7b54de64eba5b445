//! A TCP proxy a test can cut, to fail a backend's connections mid-call.
//!
//! [`CuttableProxy`] listens on 127.0.0.1 and forwards every connection to a
//! target address, bytes unchanged (HTTP/2, TLS, anything). On command it:
//! - holds back what the target sends ([`CuttableProxy::hold_replies`]), so a
//!   call is caught after its request reached the backend and before the
//!   answer came back; [`CuttableProxy::wait_until_sent`] tells when a
//!   request has gone through (by bytes it must contain);
//! - cuts every live connection, with a reset or an orderly close, and
//!   refuses new ones, its port closed ([`CuttableProxy::cut`]);
//! - listens again on the same port ([`CuttableProxy::restore`]).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// How [`CuttableProxy::cut`] ends the live connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A TCP reset on both sides, as a crashed host or a dropped route gives.
    Reset,
    /// An orderly close (FIN) on both sides, as a process that exits gives.
    Close,
}

/// What the proxy does now; every task watches it.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// Bumped by every cut: a connection accepted in an earlier round ends.
    round: u64,
    /// How the connections of earlier rounds end.
    how: Cut,
    /// The port is closed: new connections are refused.
    refusing: bool,
    /// What the target sends waits in its socket.
    holding: bool,
}

/// The most recent client bytes kept for [`CuttableProxy::wait_until_sent`].
const SEEN_BYTES: usize = 1 << 20;

/// A TCP proxy in front of one target address that a test can cut (see the
/// module docs). Dropping it closes its port and ends every connection.
pub struct CuttableProxy {
    /// Where it listens (the same port for its whole life).
    addr: SocketAddr,
    /// The mode every task follows.
    mode: watch::Sender<Mode>,
    /// The most recent bytes clients sent through it since the last
    /// [`hold_replies`](Self::hold_replies), up to [`SEEN_BYTES`].
    seen: watch::Sender<Vec<u8>>,
    /// The accept loop.
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    pub async fn start(target: SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, watching) = watch::channel(Mode { round: 0, how: Cut::Reset, refusing: false, holding: false });
        let (seen, _) = watch::channel(Vec::new());
        let accept = tokio::spawn(accept_loop(listener, target, watching, seen.clone()));
        CuttableProxy { addr, mode, seen, accept }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, a backend URL for a client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, what the target sends waits (in the target's socket)
    /// until [`cut`](Self::cut) or [`restore`](Self::restore): calls sent
    /// now reach the backend and get no answer. Forgets the bytes sent so far.
    pub fn hold_replies(&self) {
        self.seen.send_modify(Vec::clear);
        self.mode.send_modify(|m| m.holding = true);
    }

    /// Waits until the bytes clients sent through the proxy since
    /// [`hold_replies`](Self::hold_replies) contain `marker` (a unique value
    /// in a request's message, say); panics after `timeout`.
    pub async fn wait_until_sent(&self, marker: &[u8], timeout: Duration) {
        let mut seen = self.seen.subscribe();
        let found = seen.wait_for(|bytes| bytes.windows(marker.len()).any(|w| w == marker));
        match tokio::time::timeout(timeout, found).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => panic!("the proxy stopped before the marker went through"),
            Err(_) => panic!("the marker did not go through the proxy within {timeout:?}"),
        }
    }

    /// Ends every live connection as `how` says, on both sides, and refuses
    /// new ones (the port closed) until [`restore`](Self::restore).
    pub fn cut(&self, how: Cut) {
        self.mode.send_modify(|m| {
            m.round += 1;
            m.how = how;
            m.refusing = true;
            m.holding = false;
        });
    }

    /// Listens again on the same port; replies pass again.
    pub fn restore(&self) {
        self.mode.send_modify(|m| {
            m.refusing = false;
            m.holding = false;
        });
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // The connections see the mode's sender go and end.
    }
}

/// Accepts connections while the mode allows, closing the port while it refuses.
async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    record: watch::Sender<Vec<u8>>,
) {
    let addr = listener.local_addr().expect("the proxy's address");
    let mut listener = Some(listener);
    loop {
        if mode.borrow_and_update().refusing {
            drop(listener.take());
            if mode.wait_for(|m| !m.refusing).await.is_err() {
                return;
            }
            continue;
        }
        let open = match listener.take() {
            Some(open) => open,
            None => rebind(addr).await,
        };
        tokio::select! {
            accepted = open.accept() => {
                if let Ok((client, _)) = accepted {
                    let round = mode.borrow().round;
                    tokio::spawn(forward(client, target, round, mode.clone(), record.clone()));
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        listener = Some(open);
    }
}

/// Listens on `addr` again (a port the proxy closed is briefly free for
/// anyone; a few tries cover a clash).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the proxy could not listen on {addr} again: {e}"),
        }
    }
}

/// Forwards one connection, accepted in `round`, both ways until either
/// side ends it or a cut.
async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    round: u64,
    mode: watch::Receiver<Mode>,
    record: watch::Sender<Vec<u8>>,
) {
    let Ok(mut backend) = TcpStream::connect(target).await else {
        // The target is down: the client sees its connection reset.
        let _ = client.set_zero_linger();
        return;
    };
    let _ = (client.set_nodelay(true), backend.set_nodelay(true));
    let how = {
        let (mut from_client, mut to_client) = client.split();
        let (mut from_backend, mut to_backend) = backend.split();
        let up = async {
            let mut buf = vec![0_u8; 16 * 1024];
            while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                record.send_modify(|seen| {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.len() > SEEN_BYTES {
                        seen.drain(..seen.len() - SEEN_BYTES / 2);
                    }
                });
                if to_backend.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = to_backend.shutdown().await;
        };
        let mut held = mode.clone();
        let down = async {
            let mut buf = vec![0_u8; 16 * 1024];
            while let Ok(n @ 1..) = from_backend.read(&mut buf).await {
                // Held bytes wait here; a cut (a new round) ends the connection
                // in the select below, so nothing more is passed on then.
                let cut = held.wait_for(|m| !m.holding || m.round != round).await.map_or(true, |m| m.round != round);
                if cut {
                    std::future::pending::<()>().await;
                }
                if to_client.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = to_client.shutdown().await;
        };
        let mut cuts = mode.clone();
        let cut = async move {
            match cuts.wait_for(|m| m.round != round).await {
                Ok(m) => m.how,
                Err(_) => Cut::Close,
            }
        };
        tokio::select! {
            ((), ()) = async { tokio::join!(up, down) } => None,
            how = cut => Some(how),
        }
    };
    match how {
        Some(Cut::Reset) => {
            let _ = (client.set_zero_linger(), backend.set_zero_linger());
        }
        Some(Cut::Close) => {
            let _ = tokio::join!(client.shutdown(), backend.shutdown());
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(bytes).await?;
        let mut back = vec![0_u8; bytes.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn the_proxy_forwards_cuts_refuses_and_restores() {
        let proxy = CuttableProxy::start(echo().await).await;
        let mut live = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut live, b"hello").await.expect("echoed"), b"hello");

        proxy.hold_replies();
        live.write_all(b"marker-1").await.expect("write");
        proxy.wait_until_sent(b"marker-1", Duration::from_secs(5)).await;
        let mut back = [0_u8; 8];
        let held = tokio::time::timeout(Duration::from_millis(200), live.read_exact(&mut back)).await;
        assert!(held.is_err(), "a held reply came through");

        proxy.cut(Cut::Reset);
        let read = live.read(&mut back).await;
        assert!(read.is_err(), "a reset connection reads an error, got {read:?}");
        let refused = TcpStream::connect(proxy.addr()).await.expect_err("the port is closed");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        proxy.restore();
        let mut again = loop {
            if let Ok(stream) = TcpStream::connect(proxy.addr()).await {
                break stream;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(round_trip(&mut again, b"again").await.expect("echoed"), b"again");
        proxy.cut(Cut::Close);
        assert_eq!(again.read(&mut back).await.expect("an orderly close"), 0);
    }
}
