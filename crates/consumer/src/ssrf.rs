//! The SSRF guard (SPEC §3, JFrog's rule in seed 003): webhook targets are chosen by API users, so
//! without a guard anyone who can create a policy can make regrelay POST into its own network
//! (databases' HTTP ports, the cloud metadata service, admin endpoints on loopback).
//!
//! Design constraints:
//! - The check is on the *resolved* address, inside the HTTP client's resolver ([`GuardedResolver`]):
//!   the addresses checked are the addresses connected to. Checking a name first and letting the
//!   client resolve it again would leave a DNS-rebinding gap (a name that answers public, then
//!   private).
//! - IP-literal URLs never reach a resolver (the connector parses them itself), so
//!   [`check_url`] checks those before the request is made; `localhost` is refused there too.
//! - Forbidden addresses are dropped, not the whole answer: a name with one public and one private
//!   address connects to the public one only. Only when nothing is left does resolution fail, with
//!   [`BlockedAddress`], which callers find by walking the error's source chain ([`is_blocked`]).
//! - The list errs on refusing: every range that is not ordinary public unicast is forbidden,
//!   including IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4) when the embedded
//!   address is forbidden.
//! - Redirects are never followed by the client, so a public receiver cannot bounce us inward.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The target's address is loopback, private, link-local, multicast or otherwise not public, and
/// private targets are not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the address of {host} is not a public address (loopback, private, link-local, multicast or \
     reserved); private targets are not allowed"
)]
pub(crate) struct BlockedAddress {
    /// The host as written in the target's URL (no user info, path or query).
    pub host: String,
}

/// Cloud instance metadata services. Each also lies in a range forbidden anyway (link-local,
/// CGNAT, IETF protocol assignments, ULA); they are listed so that stays true if the ranges are
/// ever relaxed.
pub(crate) const METADATA_ADDRESSES: [IpAddr; 4] = [
    // AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Oracle Cloud (legacy).
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    // AWS over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Whether regrelay must not connect to `ip` when private targets are not allowed.
pub(crate) fn is_forbidden(ip: IpAddr) -> bool {
    if METADATA_ADDRESSES.contains(&ip) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

/// Refuses a URL whose host is an IP literal that [`is_forbidden`], or `localhost`. Names are
/// checked later, on their resolved addresses, by [`GuardedResolver`].
pub(crate) fn check_url(url: &reqwest::Url) -> Result<(), BlockedAddress> {
    let Some(host) = url.host_str() else {
        // No host at all (not an http URL): nothing to connect to; the request fails elsewhere.
        return Ok(());
    };
    // The URL parser has already normalised IPv4 spellings (`2130706433`, `0x7f.1`) to dotted
    // quads, and writes IPv6 literals in brackets.
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let forbidden = match literal.parse::<IpAddr>() {
        Ok(ip) => is_forbidden(ip),
        Err(_) => is_localhost(host),
    };
    if forbidden {
        Err(BlockedAddress {
            host: host.to_owned(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
/// Whether an error, or any error in its source chain, is a [`BlockedAddress`] (reqwest wraps the
/// resolver's error several layers deep).
pub(crate) fn is_blocked(error: &(dyn StdError + 'static)) -> bool {
    blocked_address(error).is_some()
}

/// The [`BlockedAddress`] in an error's source chain, if any.
pub(crate) fn blocked_address<'a>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a BlockedAddress> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(blocked) = error.downcast_ref::<BlockedAddress>() {
            return Some(blocked);
        }
        current = error.source();
    }
    None
}

/// A `reqwest` resolver that resolves with the system resolver (`tokio::net::lookup_host`) and
/// keeps only addresses that are not [`is_forbidden`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port (or the scheme's default) in afterwards.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            match keep_allowed(&host, resolved) {
                Ok(allowed) => {
                    let addrs: Addrs = Box::new(allowed.into_iter());
                    Ok(addrs)
                }
                Err(blocked) => {
                    tracing::warn!(
                        message = "Target address refused: it resolves to no public address.",
                        host = %host,
                    );
                    Err(blocked.into())
                }
            }
        })
    }
}

/// The resolved addresses that may be connected to; [`BlockedAddress`] when none may.
pub(crate) fn keep_allowed(
    host: &str,
    resolved: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, BlockedAddress> {
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|address| !is_forbidden(address.ip()))
        .collect();
    if allowed.is_empty() {
        Err(BlockedAddress {
            host: host.to_owned(),
        })
    } else {
        Ok(allowed)
    }
}

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        // 0.0.0.0/8 "this network": connecting to 0.x reaches the local host on Linux.
        || a == 0
        || ip.is_loopback() // 127.0.0.0/8
        || ip.is_private() // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local() // 169.254/16, the metadata address among them
        // 100.64.0.0/10 carrier-grade NAT (shared address space; cloud-internal services).
        || (a == 100 && (b & 0xc0) == 64)
        // 192.0.0.0/24 IETF protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        || ip.is_documentation() // 192.0.2/24, 198.51.100/24, 203.0.113/24
        // 198.18.0.0/15 benchmarking.
        || (a == 198 && (b & 0xfe) == 18)
        // 192.88.99.0/24 6to4 relay anycast (deprecated).
        || (a == 192 && b == 88 && c == 99)
        || ip.is_multicast() // 224/4
        || ip.is_broadcast() // 255.255.255.255
        // 240.0.0.0/4 reserved.
        || a >= 240
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let segments = ip.segments();
    // The IPv4 address in the low 32 bits, for the forms that embed one there.
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let in_prefix = |prefix: u128, len: u32| (bits >> (128 - len)) == (prefix >> (128 - len));

    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast() // ff00::/8
        // ::ffff:0:0/96 IPv4-mapped: as forbidden as the IPv4 address it maps.
        || (in_prefix(0xffff_0000_0000, 96) && is_forbidden_v4(low_v4))
        // ::/96 IPv4-compatible (deprecated by RFC 4291, nothing legitimate lives there).
        || in_prefix(0, 96)
        // 64:ff9b::/96 NAT64 well-known prefix: the embedded IPv4 address is where it goes.
        || (in_prefix(0x0064_ff9b << 96, 96) && is_forbidden_v4(low_v4))
        // 64:ff9b:1::/48 local-use NAT64 (RFC 8215).
        || in_prefix(0x0064_ff9b_0001 << 80, 48)
        // 100::/64 discard-only.
        || in_prefix(0x0100 << 112, 64)
        // 2001::/32 Teredo: the client address is obfuscated and may be anything.
        || in_prefix(0x2001_0000 << 96, 32)
        // 2001:2::/48 benchmarking.
        || in_prefix(0x2001_0002 << 96, 48)
        // 2001:db8::/32 and 3fff::/20 documentation.
        || in_prefix(0x2001_0db8 << 96, 32)
        || in_prefix(0x3fff << 112, 20)
        // 2002::/16 6to4: the IPv4 address in bits 16..48 is where it goes.
        || (segments[0] == 0x2002
            && is_forbidden_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32)))
        // fc00::/7 unique local (private).
        || in_prefix(0xfc << 120, 7)
        // fe80::/10 link-local and fec0::/10 site-local (deprecated).
        || in_prefix(0xfe80 << 112, 10)
        || in_prefix(0xfec0 << 112, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(address: &str, forbidden: bool) {
        let ip: IpAddr = address.parse().unwrap();
        assert_eq!(is_forbidden(ip), forbidden, "{address}");
    }

    #[test]
    fn forbidden_addresses() {
        let table = [
            // IPv4.
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("10.0.0.1", true),
            ("10.255.255.255", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.15.255.255", false),
            ("172.32.0.0", false),
            ("192.168.1.1", true),
            ("169.254.0.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("100.100.100.200", true),
            ("100.63.255.255", false),
            ("100.128.0.0", false),
            ("192.0.0.192", true),
            ("192.0.2.1", true),
            ("198.51.100.7", true),
            ("203.0.113.9", true),
            ("198.18.0.1", true),
            ("198.19.255.255", true),
            ("198.20.0.0", false),
            ("192.88.99.1", true),
            ("224.0.0.1", true),
            ("239.255.255.250", true),
            ("240.0.0.1", true),
            ("255.255.255.255", true),
            ("8.8.8.8", false),
            ("1.1.1.1", false),
            ("93.184.216.34", false),
            ("192.0.1.1", false),
            ("192.169.0.1", false),
            // IPv6.
            ("::", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:10.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:8.8.8.8", false),
            ("::127.0.0.1", true),
            ("::8.8.8.8", true),
            ("64:ff9b::127.0.0.1", true),
            ("64:ff9b::8.8.8.8", false),
            ("64:ff9b:1::1", true),
            ("100::1", true),
            ("2001::1", true),
            ("2001:2::1", true),
            ("2001:db8::1", true),
            ("3fff::1", true),
            ("2002:7f00:0001::1", true),
            ("2002:c0a8:0101::1", true),
            ("2002:0808:0808::1", false),
            ("fc00::1", true),
            ("fd12:3456::1", true),
            ("fd00:ec2::254", true),
            ("fe80::1", true),
            ("febf::1", true),
            ("fec0::1", true),
            ("ff02::1", true),
            ("ff05::2", true),
            ("2606:4700:4700::1111", false),
            ("2a00:1450:4001:80b::200e", false),
            ("2001:4860:4860::8888", false),
        ];
        for (address, forbidden) in table {
            check(address, forbidden);
        }
        for ip in METADATA_ADDRESSES {
            assert!(is_forbidden(ip), "{ip}");
        }
    }

    #[test]
    fn literal_urls_are_checked() {
        let table = [
            ("http://127.0.0.1:8080/hook", true),
            ("http://[::1]/", true),
            ("http://[::ffff:7f00:1]/", true),
            ("http://169.254.169.254/latest/meta-data/", true),
            // The URL parser normalises these spellings of 127.0.0.1 to the IPv4 literal.
            ("http://2130706433/", true),
            ("http://0x7f.1/", true),
            ("http://localhost:9000/", true),
            ("http://LOCALHOST./", true),
            ("http://api.localhost/", true),
            ("http://10.1.2.3/", true),
            ("https://8.8.8.8/", false),
            ("https://[2606:4700:4700::1111]/", false),
            // Names are left to the resolver.
            ("https://hooks.slack.com/services/x", false),
            ("https://example.com/", false),
        ];
        for (url, blocked) in table {
            let parsed = reqwest::Url::parse(url).unwrap();
            assert_eq!(check_url(&parsed).is_err(), blocked, "{url}");
        }
        let err = check_url(&reqwest::Url::parse("http://user:pw@127.0.0.1/?token=x").unwrap())
            .unwrap_err();
        assert_eq!(err.host, "127.0.0.1");
        assert!(!err.to_string().contains("pw") && !err.to_string().contains("token"));
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let sock = |a: &str| SocketAddr::new(a.parse().unwrap(), 0);
        assert_eq!(
            keep_allowed(
                "mixed.example",
                [sock("10.0.0.1"), sock("8.8.8.8"), sock("::1")]
            ),
            Ok(vec![sock("8.8.8.8")])
        );
        assert_eq!(
            keep_allowed("inner.example", [sock("127.0.0.1"), sock("fd00::1")]),
            Err(BlockedAddress {
                host: "inner.example".into()
            })
        );
        assert!(keep_allowed("nothing.example", []).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_of_loopback_addresses() {
        // `localhost` resolves (from /etc/hosts, no network) to loopback only.
        let name: Name = "localhost".parse().unwrap();
        let error = GuardedResolver.resolve(name).await.err().unwrap();
        assert!(is_blocked(&*error), "{error}");
        assert_eq!(blocked_address(&*error).unwrap().host, "localhost");
    }

    #[test]
    fn blocked_is_found_in_a_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Box<dyn StdError + Send + Sync>);
        let inner: Box<dyn StdError + Send + Sync> = Box::new(BlockedAddress {
            host: "example.com".into(),
        });
        let outer = Outer(inner);
        assert!(is_blocked(&outer));
        assert_eq!(blocked_address(&outer).unwrap().host, "example.com");
        let unrelated = std::io::Error::other("nope");
        assert!(!is_blocked(&unrelated));
    }
}
