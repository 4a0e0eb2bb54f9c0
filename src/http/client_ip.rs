//! The client's address: the socket peer, unless the peer is a trusted proxy, in which case the
//! one configured forwarding header (`client_ip_header`) is walked from the nearest hop outwards
//! and the first untrusted address wins. Addresses added by untrusted hops are never believed
//! (they are trivially forged).
//!
//! Only that one header is read. Load balancers differ in which header they maintain: most append
//! to `X-Forwarded-For` and pass any `Forwarded` header the client sent through untouched, so
//! believing a header the proxy does not write lets any client pick its own address.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use serde::Deserialize;

/// The request header that carries the client address chain (config `client_ip_header`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ClientIpHeader {
    /// RFC 7239 `Forwarded`: the `for=` parameter of each element.
    Forwarded,
    /// A comma-separated address list the proxies append to (`X-Forwarded-For`), or a header
    /// a proxy sets to one address (`X-Real-IP`, `CF-Connecting-IP`: a list of one).
    List(HeaderName),
}

impl Default for ClientIpHeader {
    fn default() -> Self {
        ClientIpHeader::List(HeaderName::from_static("x-forwarded-for"))
    }
}

impl TryFrom<String> for ClientIpHeader {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{name}` is not an HTTP header name"))?;
        Ok(if name == "forwarded" {
            ClientIpHeader::Forwarded
        } else {
            ClientIpHeader::List(name)
        })
    }
}

impl super::Gateway {
    /// The client IP of a request from `peer`, by this gateway's trusted proxies and header.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        client_ip(peer, headers, &self.trusted_proxies, &self.client_ip_header)
    }
}

/// Resolves the client IP for a request from `peer`, reading only the `source` header.
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
    source: &ClientIpHeader,
) -> Option<IpAddr> {
    let peer = peer?.ip();
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Hops in order from the client to the proxy nearest us.
    let hops = match source {
        ClientIpHeader::Forwarded => forwarded_hops(headers),
        ClientIpHeader::List(name) => list_hops(headers, name),
    };
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

fn list_hops(headers: &HeaderMap, name: &HeaderName) -> Vec<Option<IpAddr>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|s| parse_addr(s.trim()))
        .collect()
}

fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
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
    hops
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
    fn header(name: &str) -> ClientIpHeader {
        ClientIpHeader::try_from(name.to_owned()).unwrap()
    }
    /// The default: `X-Forwarded-For`.
    fn xff() -> ClientIpHeader {
        ClientIpHeader::default()
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let headers = h(&[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(
            client_ip(
                peer("203.0.113.9"),
                &headers,
                &nets(&["10.0.0.0/8"]),
                &xff()
            ),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &[], &xff()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged the first entry; the real client is the first untrusted from the right.
        let headers = h(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted, &xff()),
            ip("198.51.100.7")
        );
        // Several header lines count as one list.
        let headers = h(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted, &xff()),
            ip("198.51.100.7")
        );
        // All trusted: the leftmost.
        let headers = h(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted, &xff()),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the last good hop.
        let headers = h(&[("x-forwarded-for", "198.51.100.7, junk")]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted, &xff()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn a_spoofed_forwarded_header_is_ignored_by_default() {
        // The load balancer appended the real client to X-Forwarded-For and passed the client's
        // own `Forwarded` through.
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = h(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted, &xff()),
            ip("198.51.100.7")
        );
        // Forwarded alone is not read either: the peer (the proxy) is all we know.
        let headers = h(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted, &xff()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = h(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.7"),
            ("cf-connecting-ip", "198.51.100.7"),
            ("x-real-ip", "198.51.100.8"),
        ]);
        let from = |name: &str| client_ip(peer("10.0.0.2"), &headers, &trusted, &header(name));
        assert_eq!(from("CF-Connecting-IP"), ip("198.51.100.7"));
        assert_eq!(from("x-real-ip"), ip("198.51.100.8"));
        assert_eq!(from("Forwarded"), ip("6.6.6.7"));
        // A configured header that is absent: the peer.
        assert_eq!(from("x-client-ip"), ip("10.0.0.2"));
        // A single-value header sent twice (the client's own, then the proxy's): the proxy's.
        let headers = h(&[("x-real-ip", "6.6.6.6"), ("x-real-ip", "198.51.100.8")]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted, &header("x-real-ip")),
            ip("198.51.100.8")
        );
        assert!(ClientIpHeader::try_from("bad header".to_owned()).is_err());
        assert_eq!(header("forwarded"), ClientIpHeader::Forwarded);
    }

    #[test]
    fn rfc7239_forwarded() {
        let trusted = nets(&["10.0.0.0/8", "::1/128"]);
        let headers = h(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711""#,
        )]);
        let fwd = header("forwarded");
        assert_eq!(
            client_ip(peer("10.0.0.2"), &headers, &trusted, &fwd),
            ip("2001:db8:cafe::17")
        );
        let headers = h(&[
            ("forwarded", "for=192.0.2.60"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(
            client_ip(peer("::1"), &headers, &trusted, &fwd),
            ip("192.0.2.60")
        );
    }

    #[test]
    fn v4_mapped_peers_are_v4() {
        assert_eq!(
            client_ip(peer("::ffff:192.0.2.1"), &HeaderMap::new(), &[], &xff()),
            ip("192.0.2.1")
        );
    }
}
