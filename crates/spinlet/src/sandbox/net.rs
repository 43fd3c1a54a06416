//! Network isolation: each spinlet gets a network namespace with only a
//! loopback interface, so from inside it can reach nothing but itself (no
//! hub API, no other spinlet, no host loopback service, no metadata
//! address, no internet). The edge and the health probe reach the app by
//! creating their socket inside that namespace: a socket stays in the
//! namespace it was made in, wherever its descriptor is used afterwards.

use super::sys;
use nix::sched::{setns, unshare, CloneFlags};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

// Limitation: outbound internet cannot be enabled for a site yet (it is
// off for all); a per-site admin flag with a veth pair and NAT limited to
// public addresses would add it.

/// Makes a new network namespace with `lo` up and returns a descriptor
/// that keeps it alive. The namespace goes away with the last descriptor
/// and the last process in it.
pub(crate) fn new_namespace() -> io::Result<OwnedFd> {
    // Network namespaces belong to threads: a short-lived thread enters
    // the new one, so no thread of serve ever leaves the host's.
    std::thread::Builder::new()
        .name("spinlet-netns".into())
        .spawn(|| -> io::Result<OwnedFd> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            sys::loopback_up()?;
            let file = std::fs::File::open("/proc/thread-self/ns/net")?;
            Ok(OwnedFd::from(file))
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Connects to `addr` from inside the namespace `netns`.
pub(crate) async fn connect_in(
    netns: Arc<OwnedFd>,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own, which ends after the connect: it never has to
    // switch back, and no pooled thread is ever left in the wrong namespace.
    std::thread::Builder::new()
        .name("spinlet-dial".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let connected = setns(&*netns, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|()| std::net::TcpStream::connect_timeout(&addr, timeout));
            let _ = tx.send(connected);
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the dial thread ended without an answer"))??;
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    tokio::net::TcpStream::from_std(stream)
}
