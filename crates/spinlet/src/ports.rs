//! Loopback port allocation for spinlets: never hands out a port that is
//! in use by another spinlet or bound by anything else on the host.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::sync::Mutex;

#[derive(Debug)]
pub struct Ports {
    range: RangeInclusive<u16>,
    state: Mutex<PortState>,
}

#[derive(Debug)]
struct PortState {
    taken: HashSet<u16>,
    /// Where the next search starts, so a freed port is not reused at once
    /// (a late connection to the old app would reach the new one).
    cursor: u16,
}

impl Ports {
    pub fn new(range: RangeInclusive<u16>) -> Ports {
        // The search starts at a random place: every `serve` on a host
        // starting at the bottom of the range would hand out the same
        // ports, and the bind probe cannot see a port another `serve` has
        // handed out but its app has not bound yet.
        // Limitation: two `serve`s on one host can still pick the same port
        // in that moment, and a health check cannot tell whose app answered
        // (passing the app a socket we bound would rule it out).
        let size = u64::from(range.end().saturating_sub(*range.start())) + 1;
        let offset = RandomState::new().build_hasher().finish() % size;
        let cursor = *range.start() + offset as u16;
        Ports {
            range,
            state: Mutex::new(PortState {
                taken: HashSet::new(),
                cursor,
            }),
        }
    }

    /// A free port, or `None` when the whole range is busy.
    pub fn allocate(&self) -> Option<u16> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, end) = (*self.range.start(), *self.range.end());
        let size = u32::from(end - start) + 1;
        for step in 0..size {
            let offset = (u32::from(state.cursor - start) + step) % size;
            let port = start + offset as u16;
            if state.taken.contains(&port) {
                continue;
            }
            // Bound by something else on the host: skip it.
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            state.taken.insert(port);
            state.cursor = if port == end { start } else { port + 1 };
            return Some(port);
        }
        None
    }

    pub fn release(&self, port: u16) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .taken
            .remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_and_skip_ports_bound_elsewhere() {
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let busy_port = busy.local_addr().expect("addr").port();
        let ports = Ports::new(busy_port..=busy_port.saturating_add(3));
        let mut got = Vec::new();
        while let Some(port) = ports.allocate() {
            got.push(port);
            if got.len() > 4 {
                break;
            }
        }
        assert!(!got.contains(&busy_port));
        let unique: HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), got.len());
        assert!(got.len() <= 3);
    }

    #[test]
    fn fresh_allocators_start_their_search_at_different_ports() {
        let cursors: HashSet<u16> = (0..8)
            .map(|_| Ports::new(20000..=29999).state.lock().expect("lock").cursor)
            .collect();
        assert!(cursors.len() > 1, "{cursors:?}");
        assert!(cursors.iter().all(|c| (20000..=29999).contains(c)));
    }

    #[test]
    fn a_released_port_can_be_allocated_again() {
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = probe.local_addr().expect("addr").port();
        drop(probe);
        let ports = Ports::new(port..=port);
        assert_eq!(ports.allocate(), Some(port));
        assert_eq!(ports.allocate(), None);
        ports.release(port);
        assert_eq!(ports.allocate(), Some(port));
    }
}
