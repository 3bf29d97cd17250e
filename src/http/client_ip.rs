//! The client address that the diagnostics rate limit is keyed by.
//!
//! The connection's peer address is the client, unless the peer is one of
//! `channels.http.trusted_proxies`. Then `X-Forwarded-For` is read from right to left, skipping
//! trusted proxies, and the first other address is the client. Entries left of it were written by
//! the client itself and could be anything, so they are never used. Any other peer could forge the
//! header, so it is ignored for them.
//!
//! IPv6 clients are keyed by their /64 network, because one host usually has a whole /64 and
//! could otherwise take a fresh address for every request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

const FORWARDED_FOR: &str = "x-forwarded-for";

/// Returns the client's address: the peer, or the address a trusted proxy forwarded.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all(FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(address) = parse_hop(hop) else {
            // A malformed entry ends the chain: what lies left of it cannot be trusted either.
            break;
        };
        client = address;
        if !is_trusted(address, trusted) {
            break;
        }
    }
    client
}

/// Returns the rate-limit key of an address: IPv4 as is, IPv6 by its /64 network.
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(network))
        }
        v4 => v4,
    }
}

/// Returns the peer address of a request, or the unspecified address when the router runs
/// without a socket (as in tests that call it directly).
pub fn peer_ip(peer: Option<SocketAddr>) -> IpAddr {
    peer.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |addr| {
        addr.ip()
    })
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Converts an IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) to IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses one `X-Forwarded-For` entry: an address, optionally `[v6]:port` or `v4:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|addr| canonical(addr.ip()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_ignores_the_header() {
        let found = client_ip(ip("198.51.100.7"), &headers(&["203.0.113.9"]), &[]);
        assert_eq!(found, ip("198.51.100.7"));
    }

    #[test]
    fn trusted_proxy_forwards_the_rightmost_untrusted_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        let chain = headers(&["1.2.3.4, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &chain, &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxy_without_header_is_the_client() {
        let trusted = nets(&["10.0.0.1/32"]);
        let found = client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted);
        assert_eq!(found, ip("10.0.0.1"));
    }

    #[test]
    fn malformed_entry_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        let chain = headers(&["203.0.113.9, garbage, 10.0.0.3"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &chain, &trusted), ip("10.0.0.3"));
    }

    #[test]
    fn entries_with_ports_are_accepted() {
        let trusted = nets(&["127.0.0.1/32"]);
        let chain = headers(&["[2001:db8::1]:4711"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &chain, &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn ipv6_clients_share_a_key_per_64() {
        assert_eq!(
            rate_key(ip("2001:db8:1:2:aaaa::1")),
            rate_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            rate_key(ip("2001:db8:1:2::1")),
            rate_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn ipv4_mapped_addresses_key_as_ipv4() {
        assert_eq!(rate_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
