//! Who the client is: IP allow/deny lists, and the client address behind trusted proxies.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The IP rules of the client-facing listeners.
#[derive(Debug, Clone, Default)]
pub struct IpFilter {
    /// If not empty, only these networks may connect.
    allow: Vec<IpNet>,
    /// These networks may not connect.
    deny: Vec<IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<IpNet>,
}

impl IpFilter {
    /// Build the filter from the configured lists.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>, trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            allow,
            deny,
            trusted_proxies,
        }
    }

    /// Whether a client at `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
            && !self.deny.iter().any(|n| n.contains(&ip))
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the TCP peer, or, when the peer is a trusted proxy, the
    /// right-most address in `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else { continue };
            for hop in text.rsplit(',') {
                match hop.trim().parse::<IpAddr>().map(canonical) {
                    Ok(ip) if self.is_trusted_proxy(ip) => client = ip,
                    Ok(ip) => return ip,
                    Err(_) => return client,
                }
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn allow_deny_and_forwarded_for() {
        let f = IpFilter::new(
            vec![net("10.0.0.0/8"), net("127.0.0.0/8")],
            vec![net("10.9.0.0/16")],
            vec![net("127.0.0.1/32")],
        );
        assert!(f.allows("10.1.2.3".parse().unwrap()));
        assert!(!f.allows("10.9.2.3".parse().unwrap()));
        assert!(!f.allows("8.8.8.8".parse().unwrap()));
        assert!(f.allows("::ffff:10.1.1.1".parse().unwrap()));
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, 5.6.7.8, 127.0.0.1".parse().unwrap(),
        );
        let local = "127.0.0.1".parse().unwrap();
        assert_eq!(f.client_ip(local, &h), "5.6.7.8".parse::<IpAddr>().unwrap());
        // An untrusted peer's header is ignored.
        assert_eq!(
            f.client_ip("9.9.9.9".parse().unwrap(), &h),
            "9.9.9.9".parse::<IpAddr>().unwrap()
        );
    }
}
