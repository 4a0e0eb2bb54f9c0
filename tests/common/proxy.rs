//! A TCP proxy in front of the broker, to cut it off the network without touching its process.
//! The broker advertises the proxy's address, so every client connection goes through here.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
}

impl Proxy {
    /// Forwards `addr` (a free local port) to `upstream`.
    pub async fn start(addr: SocketAddr, upstream: SocketAddr) -> Proxy {
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let proxy = Proxy {
            addr,
            cut: cut.clone(),
        };
        tokio::spawn(async move {
            loop {
                // While cut, nothing listens: connections are refused.
                let mut rx = cut.subscribe();
                while *rx.borrow_and_update() {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                let listener = match TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            let mut rx = cut.subscribe();
                            tokio::spawn(async move {
                                let Ok(server) = TcpStream::connect(upstream).await else { return };
                                let (mut client, mut server) = (client, server);
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                    _ = rx.wait_for(|cut| *cut) => {}
                                }
                            });
                        }
                        _ = rx.wait_for(|c| *c) => break,
                    }
                }
            }
        });
        proxy
    }

    /// Drops every connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}
