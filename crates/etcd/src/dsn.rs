//! The etcd DSN grammar (spec §2.2):
//! `etcd://[user[:password]@]host[:port][,host[:port]...][/prefix][?param=value&...]`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::duration::parse_go_duration;

/// etcd's client port, used when a host has none.
pub const DEFAULT_ETCD_PORT: u16 = 2379;
const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS settings from the DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// CA bundle; without it the server certificate is not checked (reference behaviour).
    pub cacert: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify instead of the host.
    pub server_name: Option<String>,
}

impl TlsSettings {
    /// Whether the server certificate is verified.
    pub fn verifies_server(&self) -> bool {
        self.cacert.is_some()
    }
}

/// A parsed etcd DSN. The password never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdDsn {
    /// `host:port` for each member, in DSN order.
    pub endpoints: Vec<String>,
    /// Key prefix, percent-decoded, with its leading `/`.
    pub prefix: String,
    pub username: Option<String>,
    password: Option<String>,
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    /// `Some` when TLS is enabled.
    pub tls: Option<TlsSettings>,
    /// Parameters we did not recognise (each gets a WARN at startup).
    pub unknown_params: Vec<String>,
}

impl fmt::Debug for EtcdDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDsn")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dial_timeout", &self.dial_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl EtcdDsn {
    /// Parses a DSN; the error text is shown to the operator (exit 1).
    pub fn parse(text: &str) -> Result<EtcdDsn, String> {
        let rest = text
            .strip_prefix("etcd://")
            .ok_or_else(|| "etcd DSN must start with etcd://".to_owned())?;
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let mut username = None;
        let mut password = None;
        if let Some(info) = userinfo {
            let (u, p) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            username = Some(percent_decode(u)?).filter(|u| !u.is_empty());
            password = p.map(percent_decode).transpose()?;
        }
        let endpoints = hosts
            .split(',')
            .map(endpoint_with_port)
            .collect::<Result<Vec<_>, _>>()?;
        let prefix = match percent_decode(path)? {
            p if p.is_empty() => "/".to_owned(),
            p => p,
        };
        let mut dsn = EtcdDsn {
            endpoints,
            prefix,
            username,
            password,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tls: None,
            unknown_params: Vec::new(),
        };
        let mut tls_enabled = false;
        let mut tls = TlsSettings::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name)?;
            let value = percent_decode(value)?;
            match name.as_str() {
                "dial_timeout" => dsn.dial_timeout = dsn_duration(&name, &value)?,
                "request_timeout" => dsn.request_timeout = dsn_duration(&name, &value)?,
                "username" => dsn.username = Some(value).filter(|v| !v.is_empty()),
                "password" => dsn.password = Some(value),
                "tls" => {
                    tls_enabled = match value.to_ascii_lowercase().as_str() {
                        "enabled" | "enable" | "true" | "1" | "on" => true,
                        "disabled" | "disable" | "false" | "0" | "off" | "" => false,
                        other => return Err(format!("invalid tls value in etcd DSN: {other}")),
                    }
                }
                "cacert" => tls.cacert = Some(PathBuf::from(value)),
                "cert" => tls.cert = Some(PathBuf::from(value)),
                "key" => tls.key = Some(PathBuf::from(value)),
                "server_name" => tls.server_name = Some(value),
                _ => dsn.unknown_params.push(name),
            }
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return Err("etcd DSN: cert and key must be given together".to_owned());
        }
        if tls_enabled || tls.cacert.is_some() || tls.cert.is_some() {
            dsn.tls = Some(tls);
        }
        Ok(dsn)
    }

    /// The password, for the etcd client only.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Endpoints as Go prints a slice: `[h1:2379 h2:2380]`.
    pub fn endpoints_display(&self) -> String {
        format!("[{}]", self.endpoints.join(" "))
    }
}

fn dsn_duration(name: &str, value: &str) -> Result<Duration, String> {
    match parse_go_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("invalid {name} in etcd DSN: \"{value}\"")),
    }
}

fn endpoint_with_port(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("etcd DSN has an empty host".to_owned());
    }
    let has_port = if let Some(rest) = host.strip_prefix('[') {
        let close = rest
            .find(']')
            .ok_or_else(|| format!("invalid host in etcd DSN: {host}"))?;
        rest[close + 1..].starts_with(':')
    } else {
        host.contains(':')
    };
    if has_port {
        let port = host.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
        port.parse::<u16>()
            .map_err(|_| format!("invalid port in etcd DSN host {host}"))?;
        Ok(host.to_owned())
    } else {
        Ok(format!("{host}:{DEFAULT_ETCD_PORT}"))
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "invalid percent-encoding in etcd DSN".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "etcd DSN is not valid UTF-8 after decoding".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_18_full_dsn() {
        let d =
            EtcdDsn::parse("etcd://u:p@h1,h2:2380/config/?dial_timeout=2s&tls=enabled").unwrap();
        assert_eq!(d.endpoints, vec!["h1:2379", "h2:2380"]);
        assert_eq!(d.username.as_deref(), Some("u"));
        assert_eq!(d.password(), Some("p"));
        assert_eq!(d.prefix, "/config/");
        assert_eq!(d.dial_timeout, Duration::from_secs(2));
        assert_eq!(d.request_timeout, Duration::from_secs(30));
        let tls = d.tls.as_ref().unwrap();
        assert!(!tls.verifies_server());
        let debug = format!("{d:?}");
        assert!(!debug.contains("\"p\""), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn params_override_userinfo() {
        let d = EtcdDsn::parse("etcd://u:p@h/?username=other&password=s%40cret").unwrap();
        assert_eq!(d.username.as_deref(), Some("other"));
        assert_eq!(d.password(), Some("s@cret"));
    }

    #[test]
    fn prefix_defaults_and_decoding() {
        assert_eq!(EtcdDsn::parse("etcd://h").unwrap().prefix, "/");
        assert_eq!(EtcdDsn::parse("etcd://h/").unwrap().prefix, "/");
        assert_eq!(EtcdDsn::parse("etcd://h/config").unwrap().prefix, "/config");
        assert_eq!(EtcdDsn::parse("etcd://h/a%20b/").unwrap().prefix, "/a b/");
        assert_eq!(
            EtcdDsn::parse("etcd://[::1]:2380,[::2]/")
                .unwrap()
                .endpoints,
            vec!["[::1]:2380", "[::2]:2379"]
        );
    }

    #[test]
    fn bad_dsns_are_rejected() {
        assert_eq!(
            EtcdDsn::parse("http://h").unwrap_err(),
            "etcd DSN must start with etcd://"
        );
        assert!(EtcdDsn::parse("etcd://h/?dial_timeout=abc").is_err());
        assert!(EtcdDsn::parse("etcd://h/?request_timeout=0").is_err());
        assert!(EtcdDsn::parse("etcd://h:port/").is_err());
        assert!(EtcdDsn::parse("etcd://h/?cert=/a").is_err());
    }

    #[test]
    fn tls_certificates_and_unknown_params() {
        let d = EtcdDsn::parse("etcd://h/?cacert=/ca.pem&server_name=etcd&foo=1").unwrap();
        let tls = d.tls.unwrap();
        assert!(tls.verifies_server());
        assert_eq!(tls.server_name.as_deref(), Some("etcd"));
        assert_eq!(d.unknown_params, vec!["foo"]);
        assert!(EtcdDsn::parse("etcd://h/").unwrap().tls.is_none());
    }
}
