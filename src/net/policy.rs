//! Who may ask: the `Host` check every request passes first (the server's own names and
//! addresses and `--allowed-host` names, else `421`), and the `Origin` check of a WebSocket
//! upgrade (the server's own origin and `--allowed-origin`s, else `403`).
//!
//! Depends on: `net::http`.

use std::net::{IpAddr, SocketAddr};

use tungstenite::http::Uri;
use tungstenite::http::uri::Authority;

use crate::net::http::{RequestHead, Response};

/// The `Host` values a server answers to (PROTOCOL.md section 10): loopback names and addresses
/// with any port, the address it is bound to, and the names the operator allowed. Checking it on
/// every request is what stops DNS rebinding: a page whose name was made to point at loopback
/// still sends its own name as `Host`.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    /// The address the listener is bound to.
    bound: IpAddr,
    /// Names (lowercase, without a port) allowed with `--allowed-host`.
    names: Vec<String>,
}

impl HostPolicy {
    /// The policy of a server bound to `bound` that also answers to `allowed` names (a port
    /// given with a name is ignored: any port is allowed).
    pub fn new(bound: SocketAddr, allowed: &[String]) -> Self {
        let names = allowed
            .iter()
            .filter_map(|name| {
                let host = split_authority(name.trim()).map(|(host, _)| host);
                if host.is_none() {
                    log::warn!("server: --allowed-host {name:?} is not a host name; ignored");
                }
                host
            })
            .collect();
        HostPolicy {
            bound: bound.ip(),
            names,
        }
    }

    /// Checks the request's `Host`.
    ///
    /// # Errors
    ///
    /// The answer to send instead: `400` when there is no `Host` or more than one, `421` when
    /// it names a host the server does not answer to (including malformed values such as
    /// `null` or `localhost.`).
    pub fn check(&self, head: &RequestHead) -> Result<(), Response> {
        let mut hosts = head
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("host"));
        let (Some((_, value)), None) = (hosts.next(), hosts.next()) else {
            return Err(Response::text(
                400,
                "Bad Request",
                "a request needs exactly one Host header\n",
            ));
        };
        match split_authority(value.trim()) {
            Some((host, _)) if self.allows(&host) => Ok(()),
            _ => Err(Response::text(
                421,
                "Misdirected Request",
                "this server does not answer to that Host; see --allowed-host\n",
            )),
        }
    }

    /// True for a host (lowercase, without port) the server answers to.
    fn allows(&self, host: &str) -> bool {
        if host == "localhost" || self.names.iter().any(|name| name == host) {
            return true;
        }
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            // An address literal cannot be rebound, so any address of this machine is fine:
            // with an unspecified bind address that is any address at all.
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip.is_loopback() || ip == self.bound.to_canonical() || self.bound.is_unspecified()
            }
            Err(_) => false,
        }
    }
}

/// Cross-site WebSocket hijacking guard: a browser always sends `Origin` on a WebSocket
/// upgrade, so a page from elsewhere is refused unless its origin is the server's own (scheme
/// `http`, and the host and port of the `Host` header) or listed in `allowed` (scheme, host and
/// port compared, default ports filled in). Clients that send no `Origin` (terminal clients,
/// other servers) are not browsers and pass.
pub fn origin_allowed(head: &RequestHead, allowed: &[String]) -> bool {
    let Some(origin) = head.header("origin") else {
        return true;
    };
    let Some(origin) = parse_origin(origin.trim()) else {
        return false;
    };
    if allowed
        .iter()
        .filter_map(|entry| parse_origin(entry.trim().trim_end_matches('/')))
        .any(|entry| entry == origin)
    {
        return true;
    }
    // The server speaks plain HTTP: its own pages have an `http` origin. Behind a TLS proxy the
    // page's `https` origin is listed with `--allowed-origin`.
    let own = head
        .header("host")
        .and_then(|host| split_authority(host.trim()))
        .map(|(host, port)| Origin {
            scheme: "http".into(),
            host,
            port: port.unwrap_or(80),
        });
    own.is_some_and(|own| own == origin)
}

/// True when `text` is an origin `origin_allowed` can compare: `http` or `https`, a host, and
/// at most a port.
pub fn is_origin(text: &str) -> bool {
    parse_origin(text.trim().trim_end_matches('/')).is_some()
}

/// An origin: scheme, host and port, lowercase, the port filled in from the scheme.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

/// Parses `scheme://host[:port]`; `None` for anything else (`null`, a path, an unknown scheme).
fn parse_origin(text: &str) -> Option<Origin> {
    let uri: Uri = text.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return None;
    }
    let (host, port) = split_authority(uri.authority()?.as_str())?;
    Some(Origin {
        scheme,
        host,
        port: port.unwrap_or(default_port),
    })
}

/// Splits `host[:port]` (an IPv6 host in brackets) into the lowercase host and the port.
/// `None` when it is not a valid authority, carries user information, or has a port that is
/// not a number.
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    let authority: Authority = text.parse().ok()?;
    let whole = authority.as_str();
    let host = authority.host();
    if whole.contains('@') || host.is_empty() || !whole.starts_with(host) {
        return None;
    }
    let port = match &whole[host.len()..] {
        "" => None,
        rest => Some(rest.strip_prefix(':')?.parse::<u16>().ok()?),
    };
    Some((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> RequestHead {
        RequestHead::parse(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
    }

    #[test]
    fn the_host_check_allows_loopback_the_bound_address_and_named_hosts_only() {
        let policy = HostPolicy::new(
            "192.168.1.5:8000".parse().unwrap(),
            &["Chat.Example.com".into(), "app.localhost:443".into()],
        );
        for host in [
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1:1",
            "127.8.9.10",
            "[::1]:8000",
            "[::ffff:127.0.0.1]",
            "192.168.1.5",
            "192.168.1.5:8000",
            "chat.example.com:8443",
            "app.localhost",
        ] {
            assert!(policy.check(&with_host(host)).is_ok(), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8000",
            "null",
            "localhost.",
            "localhost.:8000",
            "sub.localhost",
            "localhost:http",
            "localhost:",
            "user@localhost",
            "127.1",
            "192.168.1.6",
            "[::2]",
            "",
        ] {
            assert_eq!(
                policy.check(&with_host(host)).map_err(|r| r.status),
                Err(421),
                "{host}"
            );
        }
        let none = RequestHead::parse(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(policy.check(&none).map_err(|r| r.status), Err(400));
        let two =
            RequestHead::parse(b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n");
        assert_eq!(policy.check(&two).map_err(|r| r.status), Err(400));
        let anywhere = HostPolicy::new("0.0.0.0:8000".parse().unwrap(), &[]);
        assert!(anywhere.check(&with_host("10.1.2.3:8000")).is_ok());
        assert!(anywhere.check(&with_host("example.org")).is_err());
    }

    #[test]
    fn the_origin_check_compares_scheme_host_and_port() {
        let upgrade = |host: &str, origin: &str| {
            RequestHead::parse(
                format!("GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\r\n").as_bytes(),
            )
        };
        let allowed = ["https://chat.example.com/".to_owned()];
        let cases = [
            ("localhost:8000", "http://localhost:8000", true),
            ("localhost:8000", "http://LOCALHOST:8000", true),
            ("localhost", "http://localhost:80", true),
            ("localhost:8000", "http://localhost:8001", false),
            ("localhost:8000", "https://localhost:8000", false),
            ("localhost:8000", "http://127.0.0.1:8000", false),
            ("localhost:8000", "null", false),
            ("localhost:8000", "http://localhost:8000/path", false),
            ("localhost:8000", "https://chat.example.com", true),
            ("localhost:8000", "https://chat.example.com:443", true),
            ("localhost:8000", "http://chat.example.com", false),
            ("localhost:8000", "https://chat.example.com:8443", false),
        ];
        for (host, origin, expected) in cases {
            assert_eq!(
                origin_allowed(&upgrade(host, origin), &allowed),
                expected,
                "{host} {origin}"
            );
        }
        let no_origin = with_host("localhost");
        assert!(origin_allowed(&no_origin, &[]));
        assert!(is_origin("https://chat.example.com/") && !is_origin("chat.example.com"));
    }
}
