//! The one guard every outbound HTTP client goes through: `http` sinks and sources, OAuth 2.0
//! token endpoints, the schema registry.
//!
//! A flow definition must not be a way into the network behind sluice (a cloud metadata
//! service, an admin port on loopback, a database on the LAN). So by default a client reaches
//! only globally routable addresses; a connection that really does talk to a service inside
//! the network says so with `allow_private_addresses: true`.
//!
//! What counts as not global follows the IANA special-purpose address registries for IPv4 and
//! IPv6 (entries whose "globally reachable" is false), plus multicast. IPv6 forms that carry an
//! IPv4 address — IPv4-mapped and -compatible, NAT64 (`64:ff9b::/96`), 6to4 (`2002::/16`),
//! Teredo (`2001::/32`) and ISATAP interface ids — are judged by the IPv4 address they carry,
//! since that is where a packet to them may end up.
//!
//! The check applies where an address is known: to literal addresses in a URL before a request
//! (and when the config is validated), to every address a name resolves to (the client's
//! resolver drops those refused, so a name cannot pass the check and then resolve elsewhere),
//! and to every redirect hop (redirects are followed only through [`redirect_policy`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use sluice_engine::error::Invalid;

/// Whether `ip` is one a connection may reach only with `allow_private_addresses: true`.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => private_v4(a),
        IpAddr::V6(a) => private_v6(a),
    }
}

/// IANA IPv4 special-purpose registry, "globally reachable: false" entries, and multicast.
fn private_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    let in_net = |net: [u8; 4], bits: u32| {
        let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
        u32::from(a) & mask == u32::from(Ipv4Addr::from(net)) & mask
    };
    // 192.0.0.0/24 is not global, except two anycast services registered as global.
    let ietf_assignment = in_net([192, 0, 0, 0], 24) && !matches!(o[3], 9 | 10);
    in_net([0, 0, 0, 0], 8)             // "this network"
        || in_net([10, 0, 0, 0], 8)        // private
        || in_net([100, 64, 0, 0], 10)     // shared address space (carrier-grade NAT)
        || in_net([127, 0, 0, 0], 8)       // loopback
        || in_net([169, 254, 0, 0], 16)    // link-local (cloud metadata services live here)
        || in_net([172, 16, 0, 0], 12)     // private
        || ietf_assignment                 // IETF protocol assignments, DS-Lite, NAT64 discovery
        || in_net([192, 0, 2, 0], 24)      // documentation (TEST-NET-1)
        || in_net([192, 88, 99, 0], 24)    // deprecated 6to4 relay anycast
        || in_net([192, 168, 0, 0], 16)    // private
        || in_net([198, 18, 0, 0], 15)     // benchmarking
        || in_net([198, 51, 100, 0], 24)   // documentation (TEST-NET-2)
        || in_net([203, 0, 113, 0], 24)    // documentation (TEST-NET-3)
        || in_net([224, 0, 0, 0], 4)       // multicast
        || in_net([240, 0, 0, 0], 4) // reserved, and 255.255.255.255 (limited broadcast)
}

/// IANA IPv6 special-purpose registry, "globally reachable: false" entries, multicast, and the
/// forms that embed an IPv4 address (judged by that address).
fn private_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(a) {
        return private_v4(v4);
    }
    let s = a.segments();
    let bits = u128::from(a);
    let in_net = |net: u128, len: u32| {
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
        bits & mask == net & mask
    };
    let net = |segments: [u16; 8]| u128::from(Ipv6Addr::from(segments));
    // 2001::/23 is not global, except the entries registered as global inside it.
    let ietf_global = in_net(net([0x2001, 1, 0, 0, 0, 0, 0, 1]), 128)
        || in_net(net([0x2001, 1, 0, 0, 0, 0, 0, 2]), 128)
        || in_net(net([0x2001, 1, 0, 0, 0, 0, 0, 3]), 128)
        || in_net(net([0x2001, 3, 0, 0, 0, 0, 0, 0]), 32)
        || in_net(net([0x2001, 4, 0x112, 0, 0, 0, 0, 0]), 48)
        || in_net(net([0x2001, 0x20, 0, 0, 0, 0, 0, 0]), 28)
        || in_net(net([0x2001, 0x30, 0, 0, 0, 0, 0, 0]), 28);
    a.is_loopback()
        || a.is_unspecified()
        || in_net(net([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]), 48) // local-use IPv4/IPv6 translation
        || in_net(net([0x100, 0, 0, 0, 0, 0, 0, 0]), 64) // discard-only
        || in_net(net([0x100, 0, 0, 1, 0, 0, 0, 0]), 64) // dummy prefix
        || (in_net(net([0x2001, 0, 0, 0, 0, 0, 0, 0]), 23) && !ietf_global)
        || in_net(net([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]), 32) // documentation
        || in_net(net([0x3fff, 0, 0, 0, 0, 0, 0, 0]), 20) // documentation
        || in_net(net([0x5f00, 0, 0, 0, 0, 0, 0, 0]), 16) // segment routing SIDs
        || (s[0] & 0xfe00) == 0xfc00 // unique-local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
}

/// The IPv4 address an IPv6 address carries, for the forms that carry one.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let low32 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // IPv4-mapped ::ffff:a.b.c.d
    if let Some(v4) = a.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated), leaving :: and ::1 to the checks of their own.
    if s[..6].iter().all(|x| *x == 0) && !(s[6] == 0 && s[7] <= 1) {
        return Some(low32);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low32);
    }
    // 6to4 2002:aabb:ccdd::/48 carries a.b.c.d in its second and third groups.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    // Teredo 2001:0000::/32: the server's address in groups 2–3, the client's (inverted) in
    // the last two; either being inside the network is enough to refuse.
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::new((s[2] >> 8) as u8, s[2] as u8, (s[3] >> 8) as u8, s[3] as u8);
        let client = Ipv4Addr::from(!u32::from(low32));
        return Some(if private_v4(server) { server } else { client });
    }
    // ISATAP interface id ::0:5efe:a.b.c.d (or ::200:5efe:…) under any prefix.
    if (s[4] == 0 || s[4] == 0x200) && s[5] == 0x5efe {
        return Some(low32);
    }
    None
}

/// What a refused address is called in messages.
const REFUSED: &str = "a loopback, private, link-local or otherwise non-public address";

/// Parses a URL for an outbound client: http or https only, and no literal address the
/// connection may not reach.
pub fn checked_url(text: &str, allow_private: bool) -> Result<reqwest::Url, Invalid> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("url `{text}`: {e}"))?;
    check_url(&url, allow_private)?;
    Ok(url)
}

/// Refuses a URL that is not http(s) or names a literal address the connection may not reach.
pub fn check_url(url: &reqwest::Url, allow_private: bool) -> Result<(), Invalid> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url `{}`: only http and https are supported", shown(url)).into());
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
        Some(url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
        Some(url::Host::Domain(_)) => None,
        None => return Err(format!("url `{}` has no host", shown(url)).into()),
    };
    match literal.filter(|ip| !allow_private && is_private(*ip)) {
        Some(ip) => {
            Err(format!("{ip} is {REFUSED}; set `allow_private_addresses: true` on the connection to send there")
                .into())
        }
        None => Ok(()),
    }
}

/// A URL as shown in messages: without user info or query, either of which may hold a
/// credential.
pub fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// A client builder with the guard in place: names resolve only to addresses the connection may
/// reach, and redirects (at most `max_redirects`; none with 0) are checked hop by hop.
pub fn client_builder(allow_private: bool, max_redirects: usize) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .redirect(redirect_policy(allow_private, max_redirects))
}

/// Follows at most `max` redirects, each to a URL [`check_url`] accepts.
pub fn redirect_policy(allow_private: bool, max: usize) -> reqwest::redirect::Policy {
    if max == 0 {
        return reqwest::redirect::Policy::none();
    }
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= max {
            return attempt.error(format!("more than {max} redirects"));
        }
        match check_url(attempt.url(), allow_private) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(format!("redirected to a refused address: {e}")),
        }
    })
}

/// The addresses `host` resolves to that a connection may reach; an error naming the host when
/// it resolves only to refused ones.
async fn resolve(host: &str, allow_private: bool) -> std::io::Result<Vec<SocketAddr>> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let usable: Vec<SocketAddr> = found.iter().copied().filter(|a| allow_private || !is_private(a.ip())).collect();
    if usable.is_empty() && !found.is_empty() {
        return Err(std::io::Error::other(format!(
            "`{host}` resolves only to {REFUSED}; set `allow_private_addresses: true` on the connection to send there"
        )));
    }
    Ok(usable)
}

/// The guard as the AWS SDK's DNS resolver (the `s3` sink's client).
#[derive(Debug, Clone)]
pub struct S3Resolver {
    allow_private: bool,
}

impl S3Resolver {
    /// A resolver refusing non-public addresses unless `allow_private`.
    pub fn new(allow_private: bool) -> S3Resolver {
        S3Resolver { allow_private }
    }
}

impl aws_smithy_runtime_api::client::dns::ResolveDns for S3Resolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        let allow_private = self.allow_private;
        aws_smithy_runtime_api::client::dns::DnsFuture::new(async move {
            resolve(name, allow_private)
                .await
                .map(|addrs| addrs.into_iter().map(|a| a.ip()).collect())
                .map_err(aws_smithy_runtime_api::client::dns::ResolveDnsError::new)
        })
    }
}

/// Resolves names with the system resolver and keeps only the addresses the connection may
/// reach.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let usable = resolve(&host, allow_private).await?;
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_addresses_are_refused_and_public_ones_pass() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.2.7",
            "192.88.99.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.1",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "5f00::1",
            "64:ff9b:1::1",
            "2001:2::1",
            "2001:10::1",
            // IPv6 carrying a private IPv4 address
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::127.0.0.1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "2001:0:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
            "2001:db9::5efe:10.0.0.1",
            "2600::200:5efe:192.168.0.1",
        ] {
            assert!(is_private(a.parse().unwrap()), "{a} should be refused");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "192.0.0.9",
            "192.0.0.10",
            "192.31.196.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:1::1",
            "2001:3::1",
            "2001:4:112::1",
            "2001:20::1",
        ] {
            assert!(!is_private(a.parse().unwrap()), "{a} should pass");
        }
    }

    #[tokio::test]
    async fn names_are_checked_as_they_resolve() {
        let e = resolve("localhost", false).await.unwrap_err().to_string();
        assert!(e.contains("`localhost` resolves only to") && e.contains("allow_private_addresses"), "{e}");
        assert!(!resolve("localhost", true).await.unwrap().is_empty());
    }

    #[test]
    fn literal_urls_and_redirect_targets_are_checked() {
        for u in [
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::]/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
        ] {
            let e = checked_url(u, false).unwrap_err();
            assert!(e.0.contains("allow_private_addresses"), "{u}: {e}");
            assert!(checked_url(u, true).is_ok(), "{u} with allow_private_addresses");
        }
        assert!(checked_url("https://hooks.example.com/x", false).is_ok());
        assert!(checked_url("ftp://example.com/x", false).unwrap_err().0.contains("only http and https"));
        assert!(checked_url("file:///etc/passwd", true).is_err());
    }
}
