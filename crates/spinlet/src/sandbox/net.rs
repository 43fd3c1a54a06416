//! Network isolation: each spinlet gets a network namespace with only a
//! loopback interface, so from inside it can reach nothing but itself (no
//! hub API, no other spinlet, no host loopback service, no metadata
//! address, no internet unless an admin turned it on for the site). The
//! edge and the health probe reach the app through the instance's
//! [`Dialer`], which creates their sockets inside that namespace: a socket
//! stays in the namespace it was made in, wherever its descriptor is used
//! afterwards.
//!
//! Outbound internet, per site and only when an admin turned it on: the
//! namespace gets a veth pair to the host with a /30 from [`POOL`], a
//! default route through the host, and the host masquerades it. The
//! host's nftables tables `spinforge_outbound` (filter) and
//! `spinforge_nat` keep even such an app away from the host itself
//! (every packet a spinlet's veth delivers to the host is dropped: hub
//! API, host services, whatever address it aims at), from loopback,
//! link-local and metadata addresses (169.254.0.0/16; IPv6 is not routed
//! at all, so fd00:ec2::254 and fc00::/7 are unreachable too), from other
//! spinlets (the whole pool), from private LAN ranges ([`LAN`]) except
//! those an admin allowlisted for the site (set `lan_allowed`, one entry
//! per link and range), and lets nothing from outside open a connection
//! into a spinlet. Rules live in the host's (serve's) network namespace,
//! out of the app's reach: the app has no capability to change its own.

use super::sys;
use ipnet::Ipv4Net;
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// Makes a new network namespace with `lo` up. Returns a descriptor
/// that keeps it alive (the namespace goes away with the last descriptor
/// and the last process or thread in it) and the [`Dialer`] whose thread
/// lives in it.
pub(crate) fn new_namespace() -> io::Result<(OwnedFd, Dialer)> {
    new_namespace_with(None)
}

/// As [`new_namespace`], plus a link to the host for outbound traffic
/// when `outbound` is given.
pub(crate) fn new_namespace_with(outbound: Option<&Link>) -> io::Result<(OwnedFd, Dialer)> {
    let outbound = outbound.cloned();
    let (made_tx, made_rx) = std::sync::mpsc::sync_channel(1);
    let (requests, queue) = std::sync::mpsc::channel::<Job>();
    let spare = std::sync::Arc::new(Spare::default());
    let stock = std::sync::Arc::clone(&spare);
    // Network namespaces belong to threads. This thread unshares into the
    // new one and stays there for the instance's lifetime as its dialer,
    // so no thread of serve ever leaves the host's, and no connection to
    // the app has to start a thread of its own.
    std::thread::Builder::new()
        .name("spinlet-dialer".into())
        .stack_size(DIALER_STACK)
        .spawn(move || {
            let made = (|| -> io::Result<OwnedFd> {
                unshare(CloneFlags::CLONE_NEWNET)?;
                sys::loopback_up()?;
                if let Some(link) = &outbound {
                    // A program started from this thread runs in the new
                    // namespace; `netns PID` names serve's (the host's).
                    link.set_up_inside()?;
                }
                let file = std::fs::File::open("/proc/thread-self/ns/net")?;
                Ok(OwnedFd::from(file))
            })();
            let ok = made.is_ok();
            if made_tx.send(made).is_err() || !ok {
                return;
            }
            stock.refill();
            serve_dials(&queue, &stock);
        })?;
    let netns = made_rx
        .recv()
        .map_err(|_| io::Error::other("the namespace thread ended without an answer"))??;
    Ok((
        netns,
        Dialer {
            requests: std::sync::Mutex::new(Some(requests)),
            spare,
        },
    ))
}

/// The dialer thread does little besides `socket(2)`; glibc's default of
/// 8 MiB of (mostly untouched) stack would be pure address space.
const DIALER_STACK: usize = 128 * 1024;

/// Work for the dialer thread.
enum Job {
    /// A TCP socket of the address family of the address, and where to
    /// send it.
    Dial(
        SocketAddr,
        tokio::sync::oneshot::Sender<io::Result<OwnedFd>>,
    ),
    /// Top the stock of spare IPv4 sockets up.
    Refill,
}

/// How many unconnected IPv4 sockets a dialer keeps made ahead. Measured:
/// the examples close every connection, so the edge dials once per
/// request, and a round trip to the dialer thread per dial (two
/// cross-thread wakes and a context switch each way) was a share of the
/// edge's CPU per request. With a stock, a dial takes a ready socket and
/// the thread wakes once per [`SPARE_SOCKETS`]` / 2` dials, off the
/// request's path. Each spare is one descriptor of serve's.
const SPARE_SOCKETS: usize = 16;

/// Sockets made inside the namespace ahead of their use.
#[derive(Default)]
struct Spare {
    sockets: std::sync::Mutex<Vec<OwnedFd>>,
    /// A refill is asked for and not yet done.
    refilling: std::sync::atomic::AtomicBool,
    /// Set (under the `sockets` lock) when the dialer stops: a socket
    /// holds its namespace, so none may be kept after that.
    stopped: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spare").finish_non_exhaustive()
    }
}

impl Spare {
    /// Runs on the dialer thread (the namespace's sockets are made there).
    fn refill(&self) {
        let have = self.lock().len();
        let mut made = Vec::with_capacity(SPARE_SOCKETS.saturating_sub(have));
        for _ in have..SPARE_SOCKETS {
            match tcp_socket(AddressFamily::Inet) {
                Ok(fd) => made.push(fd),
                // The dial path makes its own and reports the error.
                Err(_) => break,
            }
        }
        let mut sockets = self.lock();
        if !self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            sockets.extend(made);
        }
        drop(sockets);
        self.refilling
            .store(false, std::sync::atomic::Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OwnedFd>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn tcp_socket(family: AddressFamily) -> io::Result<OwnedFd> {
    socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

/// The dialer thread's loop: it ends when the [`Dialer`] is stopped or
/// dropped, and with it the thread's hold on the namespace.
fn serve_dials(queue: &std::sync::mpsc::Receiver<Job>, spare: &Spare) {
    while let Ok(job) = queue.recv() {
        match job {
            Job::Dial(addr, reply) => {
                let family = if addr.is_ipv6() {
                    AddressFamily::Inet6
                } else {
                    AddressFamily::Inet
                };
                let _ = reply.send(tcp_socket(family));
            }
            Job::Refill => spare.refill(),
        }
    }
}

/// Opens connections inside one instance's network namespace.
///
/// A socket belongs to the namespace it was created in, wherever its
/// descriptor is used afterwards. So one long-lived thread that entered
/// the namespace once only creates sockets, on request over a channel,
/// and the caller connects them on its own (async) thread: a connection
/// costs no thread start and no `setns`, and usually no round trip to
/// that thread either (it keeps a stock of IPv4 sockets, see
/// [`SPARE_SOCKETS`]).
#[derive(Debug)]
pub struct Dialer {
    /// `None` once stopped: the thread has then ended or is ending.
    requests: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    spare: std::sync::Arc<Spare>,
}

impl Dialer {
    /// Connects to `addr` inside the namespace.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<tokio::net::TcpStream> {
        let fd = match self.take_spare(addr)? {
            Some(fd) => fd,
            None => {
                let (reply, made) = tokio::sync::oneshot::channel();
                self.send(Job::Dial(addr, reply))?;
                made.await
                    .map_err(|_| io::Error::other("the dialer thread ended without an answer"))??
            }
        };
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        let stream = tokio::time::timeout(timeout, socket.connect(addr))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A spare socket for an IPv4 `addr`, if one is in stock; asks for a
    /// refill when the stock runs low. Fails once the dialer is stopped.
    fn take_spare(&self, addr: SocketAddr) -> io::Result<Option<OwnedFd>> {
        if addr.is_ipv6() {
            return Ok(None);
        }
        let (fd, left) = {
            let mut sockets = self.spare.lock();
            let fd = sockets.pop();
            (fd, sockets.len())
        };
        if left < SPARE_SOCKETS / 2
            && !self
                .spare
                .refilling
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.send(Job::Refill)?;
        }
        Ok(fd)
    }

    fn send(&self, job: Job) -> io::Result<()> {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let stopped = || io::Error::new(io::ErrorKind::NotConnected, "the instance has stopped");
        requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }

    /// Ends the thread and closes the spare sockets; later connects fail.
    /// Idempotent.
    pub(crate) fn stop(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut sockets = self.spare.lock();
        self.spare
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        sockets.clear();
    }
}

/// Spinlet links take their /30s from here (shared address space, RFC
/// 6598, which hosts rarely use for anything else).
// Limitation: the pool is fixed, and one serve per host may have sites
// with outbound internet (a `sandbox.outbound_pool` setting and
// per-serve interface prefixes would lift both).
pub(crate) const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 88, 0, 0), 16);

/// [`POOL`] as a network.
pub(crate) fn pool() -> Ipv4Net {
    Ipv4Net::new_assert(POOL.0, POOL.1)
}

/// Private ranges outbound internet refuses, unless an admin allowlisted
/// a part of one for the site (`SiteSandbox::outbound_allow`): the LAN
/// (RFC 1918) and shared address space (RFC 6598, the pool's own range).
/// IPv6, and with it fc00::/7, is not routed for spinlets at all.
pub(crate) const LAN: [Ipv4Net; 4] = [
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
];
/// Host-side interface names: `sfo` and the slot number.
const PREFIX: &str = "sfo";

/// One spinlet's link to the host.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub slot: u32,
    /// LAN ranges this link may reach (checked by
    /// `check_outbound_allow`).
    pub allow: Vec<Ipv4Net>,
}

impl Link {
    fn host_name(&self) -> String {
        format!("{PREFIX}{}", self.slot)
    }

    fn address(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(POOL.0) + self.slot * 4 + n)
    }

    /// Run in the new namespace: makes the pair (its host end moved to
    /// serve's namespace), addresses the app's end and routes through
    /// the host.
    fn set_up_inside(&self) -> io::Result<()> {
        let (host, app) = (self.address(1), self.address(2));
        ip_batch(&format!(
            "link add eth0 type veth peer name {} netns {}\n\
             addr add {app}/30 dev eth0\n\
             link set eth0 up\n\
             route add default via {host}\n",
            self.host_name(),
            std::process::id()
        ))
    }

    /// Run in serve's namespace, after [`Link::set_up_inside`].
    pub(crate) fn set_up_host(&self) -> io::Result<()> {
        ip_batch(&format!(
            "addr add {}/30 dev {name}\nlink set {name} up\n",
            self.address(1),
            name = self.host_name()
        ))?;
        if self.allow.is_empty() {
            return Ok(());
        }
        run_with_input("nft", &["-f", "-"], &self.allow_elements("add"))
    }

    /// `add`/`delete element` of this link's LAN allowlist.
    fn allow_elements(&self, verb: &str) -> String {
        let elements: Vec<String> = self
            .allow
            .iter()
            .map(|net| format!("\"{}\" . {net}", self.host_name()))
            .collect();
        format!(
            "{verb} element inet spinforge_outbound lan_allowed {{ {} }}\n",
            elements.join(", ")
        )
    }

    /// Deletes the pair (both ends; quiet if the namespace took it) and
    /// the link's allowlist entries. False if the entries may remain: the
    /// slot must then not be handed out again, or the next site on it
    /// would inherit them.
    pub(crate) fn remove(&self) -> bool {
        let _ = ip_batch(&format!("link del {}\n", self.host_name()));
        if self.allow.is_empty() {
            return true;
        }
        match run_with_input("nft", &["-f", "-"], &self.allow_elements("delete")) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(link = %self.host_name(), error = %e,
                    "outbound LAN allowlist entries not removed; the link slot is retired");
                false
            }
        }
    }
}

fn tool(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn run_with_input(program: &str, args: &[&str], input: &str) -> io::Result<()> {
    use std::io::Write;
    let path =
        tool(program).ok_or_else(|| io::Error::other(format!("`{program}` is not installed")))?;
    let mut child = std::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip_batch(commands: &str) -> io::Result<()> {
    run_with_input("ip", &["-batch", "-"], commands)
}

/// Whether this host can give spinlets outbound internet.
pub(crate) fn outbound_supported() -> Result<(), String> {
    for name in ["ip", "nft"] {
        if tool(name).is_none() {
            return Err(format!(
                "`{name}` is not installed (Debian: iproute2, nftables)"
            ));
        }
    }
    Ok(())
}

/// Turns on forwarding and (re)loads the host's rules; idempotent.
pub(crate) fn prepare_host() -> io::Result<()> {
    let pool = pool();
    let lan = LAN.map(|n| n.to_string()).join(", ");
    let rules = format!(
        "table inet spinforge_outbound\n\
         delete table inet spinforge_outbound\n\
         table inet spinforge_outbound {{\n\
           set lan_allowed {{\n\
             type ifname . ipv4_addr; flags interval;\n\
           }}\n\
           chain input {{\n\
             type filter hook input priority filter; policy accept;\n\
             iifname \"{PREFIX}*\" drop\n\
           }}\n\
           chain forward {{\n\
             type filter hook forward priority filter; policy accept;\n\
             iifname \"{PREFIX}*\" meta nfproto ipv6 drop\n\
             iifname \"{PREFIX}*\" ip daddr {{ 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, \
               224.0.0.0/3, {pool} }} drop\n\
             iifname . ip daddr @lan_allowed accept\n\
             iifname \"{PREFIX}*\" ip daddr {{ {lan} }} drop\n\
             oifname \"{PREFIX}*\" ct state established,related accept\n\
             oifname \"{PREFIX}*\" drop\n\
           }}\n\
         }}\n\
         table ip spinforge_nat\n\
         delete table ip spinforge_nat\n\
         table ip spinforge_nat {{\n\
           chain postrouting {{\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             ip saddr {pool} oifname != \"{PREFIX}*\" masquerade\n\
           }}\n\
         }}\n"
    );
    run_with_input("nft", &["-f", "-"], &rules)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
}

/// Hands out link slots (a /30 each) from the pool.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    taken: std::sync::Mutex<std::collections::BTreeSet<u32>>,
}

impl Slots {
    pub(crate) fn take(&self) -> io::Result<Link> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let count = 1u32 << (32 - u32::from(POOL.1) - 2);
        let slot = (0..count)
            .find(|s| !taken.contains(s))
            .ok_or_else(|| io::Error::other("no free outbound link left in the pool"))?;
        taken.insert(slot);
        Ok(Link {
            slot,
            allow: Vec::new(),
        })
    }

    pub(crate) fn give_back(&self, link: &Link) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        taken.remove(&link.slot);
    }
}
