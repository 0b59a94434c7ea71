//! `Admission`: who may hold a connection. Two caps: `--max-connections-per-ip` open
//! connections from one client address (HTTP and WebSocket, counted from accept), and
//! `--max-connections` WebSockets in all, part of which only authenticated connections may
//! take. Behind a reverse proxy named by `--trusted-proxy`, the client address is the one the
//! proxy put in `X-Forwarded-For`.
//!
//! **Places for WebSockets.** A WebSocket that presented a valid token with its upgrade (or
//! any, when no token is required) is *authenticated*; one that did not is *waiting* until its
//! `connect` brings one. Waiting connections may hold all places but the reserved tenth
//! ([`Admission::reserved`]), so a flood of sockets that never authenticate cannot take the
//! last places from those that do. When the places waiting connections may hold are taken, a
//! new connection lets the oldest waiting one go (it is closed with 1013) rather than being
//! refused: a flood then only pushes out its own older sockets, while an honest client that
//! sends its token at once (the chat page sends it in `connect`, since a browser cannot set a
//! header on a WebSocket) is authenticated long before a flood could push it out. An
//! authenticated upgrade takes a free place, else lets the oldest waiting connection go; only
//! with every place held by authenticated connections is an upgrade refused (503).
//!
//! **Client addresses.** A connection's address is its peer's, unless the peer is a trusted
//! proxy: then it is the last address in the request's `X-Forwarded-For` that is not itself a
//! trusted proxy (the one the proxy saw), and the per-IP cap is taken for it once the request
//! head is read. From any other peer the header is ignored, since anyone can send it.
//!
//! Depends on: `common::config`, `common::metrics`, `net::http`, `net::outbound`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::common::config::Config;
use crate::common::metrics::Metrics;
use crate::net::http::RequestHead;
use crate::net::outbound::Outbound;

/// The connection caps of one server and what holds places under them.
///
/// Each lock is held for one update of its counts, never across IO (letting a connection go
/// only marks its `Outbound` and signals its thread).
pub struct Admission {
    max_connections: usize,
    /// Places of `max_connections` that only authenticated connections may hold.
    reserved: usize,
    max_per_ip: usize,
    per_ip_loopback: bool,
    trusted_proxies: Vec<IpAddr>,
    metrics: Arc<Metrics>,
    places: Mutex<Places>,
    /// Open connections per client address; an address leaves the map when its last
    /// connection closes.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// WebSocket threads alive, let-go ones that are still closing included.
    open: AtomicUsize,
}

#[derive(Default)]
struct Places {
    /// Authenticated WebSockets.
    authenticated: usize,
    /// WebSockets waiting to authenticate, by connection id (so oldest first), with the write
    /// side through which one is let go.
    waiting: BTreeMap<u64, Arc<Outbound>>,
}

impl Places {
    fn held(&self) -> usize {
        self.authenticated + self.waiting.len()
    }

    /// Lets the oldest waiting connection go; false when none waits.
    fn let_oldest_go(&mut self) -> bool {
        let Some((id, outbound)) = self.waiting.pop_first() else {
            return false;
        };
        log::debug!("connection {id}: let go unauthenticated, to make room for a newer one");
        outbound.evict();
        true
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("max_connections", &self.max_connections)
            .field("reserved", &self.reserved)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

/// One WebSocket's place under `--max-connections`; given back when dropped.
#[derive(Debug)]
pub struct Place<'a> {
    admission: &'a Admission,
    id: u64,
    authenticated: bool,
}

/// One connection's place under the per-IP cap; given back when dropped.
#[derive(Debug)]
pub struct IpPlace<'a> {
    admission: &'a Admission,
    /// `None` for an address the cap does not apply to.
    ip: Option<IpAddr>,
}

impl Admission {
    /// The caps `config` sets, counting on `metrics`.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let max_connections = config.max_connections.max(1);
        Admission {
            max_connections,
            reserved: Self::reserved(max_connections),
            max_per_ip: config.max_connections_per_ip,
            per_ip_loopback: config.per_ip_loopback,
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .map(IpAddr::to_canonical)
                .collect(),
            metrics,
            places: Mutex::default(),
            per_ip: Mutex::default(),
            open: AtomicUsize::new(0),
        }
    }

    /// How many of `max_connections` places only authenticated connections may hold: a tenth,
    /// and at least one once there are two places.
    pub fn reserved(max_connections: usize) -> usize {
        if max_connections < 2 {
            0
        } else {
            (max_connections / 10).max(1)
        }
    }

    /// True when `peer` is a proxy named by `--trusted-proxy`.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.contains(&peer.to_canonical())
    }

    /// The address of the client behind a request from `peer`: from `X-Forwarded-For` when
    /// `peer` is a trusted proxy and the header names one, else `peer`.
    pub fn client_address(&self, peer: IpAddr, head: &RequestHead) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        // Proxies append: the last address that is not a trusted proxy is the one the nearest
        // untrusted hop was seen from. Several header lines read as one list, in order.
        let hops: Vec<&str> = head
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
            .flat_map(|(_, value)| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(address) = parse_hop(hop) else {
                log::debug!("server: an X-Forwarded-For entry from {peer} is no address; ignored");
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }

    /// Takes a place under the per-IP cap for a connection from `client`, or `None` when that
    /// address has as many connections open as it may. Loopback is exempt unless
    /// `--per-ip-loopback`; a trusted proxy is too (its clients are counted by their own
    /// addresses once their requests are read).
    pub fn ip_place(&self, client: IpAddr) -> Option<IpPlace<'_>> {
        let client = client.to_canonical();
        let exempt = (client.is_loopback() && !self.per_ip_loopback) || self.trusts(client);
        if self.max_per_ip == 0 || exempt {
            return Some(IpPlace {
                admission: self,
                ip: None,
            });
        }
        let mut per_ip = self.per_ip.lock();
        let count = per_ip.entry(client).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(IpPlace {
            admission: self,
            ip: Some(client),
        })
    }

    /// Takes a place for WebSocket `id`, `authenticated` or not (see the module's notes),
    /// letting the oldest waiting connection go when that makes room; `None` when the server
    /// is full. `outbound` is how this connection is let go in its turn while it waits.
    pub fn place(
        &self,
        id: u64,
        authenticated: bool,
        outbound: &Arc<Outbound>,
    ) -> Option<Place<'_>> {
        {
            let mut places = self.places.lock();
            let full = places.held() >= self.max_connections;
            let waiting_full = places.waiting.len() >= self.max_connections - self.reserved;
            if (full || (!authenticated && waiting_full)) && !places.let_oldest_go() {
                return None;
            }
            if authenticated {
                places.authenticated += 1;
            } else {
                places.waiting.insert(id, outbound.clone());
            }
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        Metrics::bump(&self.metrics.connections_open);
        Metrics::bump(&self.metrics.connections_total);
        Some(Place {
            admission: self,
            id,
            authenticated,
        })
    }

    /// WebSockets open now, let-go ones that are still closing included.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Place<'_> {
    /// True once the connection counts as authenticated.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Counts the connection as authenticated from now on (its `connect` brought a valid
    /// token). False when it was let go meanwhile to make room: it is closing.
    pub fn authenticate(&mut self) -> bool {
        if self.authenticated {
            return true;
        }
        let mut places = self.admission.places.lock();
        if places.waiting.remove(&self.id).is_none() {
            return false;
        }
        places.authenticated += 1;
        self.authenticated = true;
        true
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        {
            let mut places = self.admission.places.lock();
            if self.authenticated {
                places.authenticated -= 1;
            } else {
                // Gone already when it was let go.
                places.waiting.remove(&self.id);
            }
        }
        self.admission.open.fetch_sub(1, Ordering::SeqCst);
        Metrics::drop_one(&self.admission.metrics.connections_open);
    }
}

impl Drop for IpPlace<'_> {
    fn drop(&mut self) {
        let Some(ip) = self.ip else {
            return;
        };
        let mut per_ip = self.admission.per_ip.lock();
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// One `X-Forwarded-For` entry as an address: `192.0.2.1`, `2001:db8::1`, and the forms with
/// a port some proxies write (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map(|address| address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_with(forwarded: &[&str]) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: forwarded
                .iter()
                .map(|value| ("x-forwarded-for".to_owned(), (*value).to_owned()))
                .collect(),
            rest: Vec::new(),
        }
    }

    fn admission(trusted: &[&str]) -> Admission {
        let config = Config {
            trusted_proxies: trusted.iter().map(|a| a.parse().unwrap()).collect(),
            ..Config::default()
        };
        Admission::new(&config, Arc::new(Metrics::default()))
    }

    #[test]
    fn forwarded_addresses_are_read_only_from_trusted_proxies() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let head = head_with(&["203.0.113.9, 192.0.2.1"]);
        let untrusting = admission(&[]);
        assert_eq!(untrusting.client_address(loopback, &head), loopback);
        let trusting = admission(&["127.0.0.1", "10.0.0.2"]);
        // The last hop, which the proxy added; what the client wrote before it is not used.
        assert_eq!(
            trusting.client_address(loopback, &head),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(trusting.client_address(stranger, &head), stranger);
        // A chain of trusted proxies is walked back; several header lines are one list.
        let chained = head_with(&["203.0.113.9", "192.0.2.1, 10.0.0.2"]);
        assert_eq!(
            trusting.client_address(loopback, &chained),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        // Ports and brackets; garbage leaves the proxy's own address; no header is the peer.
        for (value, wanted) in [
            ("192.0.2.1:4711", "192.0.2.1"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("unknown", "127.0.0.1"),
        ] {
            let address = trusting.client_address(loopback, &head_with(&[value]));
            assert_eq!(address, wanted.parse::<IpAddr>().unwrap(), "{value}");
        }
        assert_eq!(trusting.client_address(loopback, &head_with(&[])), loopback);
    }

    #[test]
    fn a_tenth_is_reserved_from_two_places_on() {
        assert_eq!(Admission::reserved(1), 0);
        assert_eq!(Admission::reserved(2), 1);
        assert_eq!(Admission::reserved(20), 2);
        assert_eq!(Admission::reserved(20_000), 2_000);
    }
}
