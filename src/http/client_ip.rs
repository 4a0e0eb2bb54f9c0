//! The client's address: the socket peer, unless the peer is a trusted proxy, in which case the
//! forwarding headers are walked from the nearest hop outwards and the first untrusted address
//! wins. Addresses added by untrusted hops are never believed (they are trivially forged).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Resolves the client IP for a request from `peer`.
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Hops in order from the client to the proxy nearest us. `Forwarded` (RFC 7239) wins when
    // present, else `X-Forwarded-For`.
    let hops = forwarded_hops(headers).unwrap_or_else(|| x_forwarded_for_hops(headers));
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = canonical(*ip);
                if !is_trusted(&client) {
                    return Some(client);
                }
            }
            // An unparsable hop (obfuscated identifier, garbage): stop believing the chain here.
            None => return Some(client),
        }
    }
    Some(client)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn x_forwarded_for_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|s| parse_addr(s.trim()))
        .collect()
}

fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut hops = Vec::new();
    for value in headers.get_all("forwarded") {
        for element in value.to_str().unwrap_or("").split(',') {
            let for_value = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| v.trim().trim_matches('"'))
            });
            hops.push(for_value.and_then(parse_addr));
        }
    }
    (!hops.is_empty()).then_some(hops)
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = s.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }
    fn peer(s: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(s.parse().unwrap(), 1234))
    }
    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }
    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let headers = h(&[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(
            client_ip(peer("203.0.113.9"), &headers, &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(peer("10.0.0.2"), &headers, &[]), ip("10.0.0.2"));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged the first entry; the real client is the first untrusted from the right.
        let headers = h(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted),
            ip("198.51.100.7")
        );
        // Several header lines count as one list.
        let headers = h(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted),
            ip("198.51.100.7")
        );
        // All trusted: the leftmost.
        let headers = h(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the last good hop.
        let headers = h(&[("x-forwarded-for", "198.51.100.7, junk")]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn rfc7239_forwarded() {
        let trusted = nets(&["10.0.0.0/8", "::1/128"]);
        let headers = h(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711""#,
        )]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted),
            ip("2001:db8:cafe::17")
        );
        let headers = h(&[
            ("forwarded", "for=192.0.2.60"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(client_ip(peer("::1"), &headers, &trusted), ip("192.0.2.60"));
    }

    #[test]
    fn v4_mapped_peers_are_v4() {
        assert_eq!(
            client_ip(peer("::ffff:192.0.2.1"), &HeaderMap::new(), &[]),
            ip("192.0.2.1")
        );
    }
}
