//! libpq connection strings: `key=value` and `postgres[ql]://` URI forms, the
//! host/port list rules, `PG*` environment fallbacks and built-in defaults, all
//! without I/O so they can be tested against libpq's documented behaviour.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Every keyword libpq 18 accepts (`PQconndefaults`), in libpq's order.
pub const KEYWORDS: &[&str] = &[
    "service",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "dbname",
    "host",
    "hostaddr",
    "port",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslcertmode",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "require_auth",
    "min_protocol_version",
    "max_protocol_version",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "replication",
    "target_session_attrs",
    "load_balance_hosts",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
    "sslkeylogfile",
];

/// Keywords whose values are secrets: never printed by `Debug` or [`ConnInfo::redacted`].
const SECRET_KEYWORDS: &[&str] = &[
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
];

/// Environment variables libpq consults for unset keywords (`PQconndefaults`).
pub const ENV_FALLBACKS: &[(&str, &str)] = &[
    ("service", "PGSERVICE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("dbname", "PGDATABASE"),
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("client_encoding", "PGCLIENTENCODING"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
    ("sslmode", "PGSSLMODE"),
    ("sslnegotiation", "PGSSLNEGOTIATION"),
    ("sslcompression", "PGSSLCOMPRESSION"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslcertmode", "PGSSLCERTMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcrl", "PGSSLCRL"),
    ("sslcrldir", "PGSSLCRLDIR"),
    ("sslsni", "PGSSLSNI"),
    ("requirepeer", "PGREQUIREPEER"),
    ("require_auth", "PGREQUIREAUTH"),
    ("min_protocol_version", "PGMINPROTOCOLVERSION"),
    ("max_protocol_version", "PGMAXPROTOCOLVERSION"),
    ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"),
    ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
    ("gssencmode", "PGGSSENCMODE"),
    ("krbsrvname", "PGKRBSRVNAME"),
    ("gsslib", "PGGSSLIB"),
    ("gssdelegation", "PGGSSDELEGATION"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
];

/// Unix socket directory of Debian's PostgreSQL packages (libpq's `DEFAULT_PGSOCKET_DIR`).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// libpq's default port.
pub const DEFAULT_PORT: u16 = 5432;

const REDACTED: &str = "********";

/// A parsed connection string: keyword/value pairs in the order they were given.
///
/// `Display` and `Debug` hide secrets; use [`ConnInfo::to_conninfo_string`] to get
/// the full string for a client library.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    params: Vec<(String, String)>,
}

/// Where one candidate server lives, after libpq's host/hostaddr/port list rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostSpec {
    /// Host name or socket directory.
    pub host: Host,
    /// Numeric address from `hostaddr`, used instead of resolving `host`.
    pub hostaddr: Option<String>,
    /// TCP port, or the number in the socket file name `.s.PGSQL.<port>`.
    pub port: u16,
}

/// A TCP host name/address or a Unix-domain socket directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// Host name or IP address.
    Tcp(String),
    /// Directory holding the socket (or an `@` abstract-namespace name).
    Unix(PathBuf),
}

impl HostSpec {
    /// Full socket file path for Unix hosts (`<dir>/.s.PGSQL.<port>`).
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }

    /// The host string as libpq's `.pgpass` lookup sees it.
    pub fn host_str(&self) -> String {
        match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(dir) => dir.to_string_lossy().into_owned(),
        }
    }
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port),
            Host::Tcp(h) => write!(f, "{h}:{}", self.port),
            Host::Unix(dir) => write!(f, "{}:{}", dir.display(), self.port),
        }
    }
}

impl ConnInfo {
    /// An empty connection string (everything from defaults).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses either form; URIs start with `postgresql://` or `postgres://`.
    pub fn parse(s: &str) -> Result<Self> {
        match uri_body(s) {
            Some(body) => parse_uri(s, body),
            None => parse_key_value(s),
        }
    }

    /// Value of a keyword, if set (an explicit empty value is `Some("")`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a keyword, keeping its position if already present; unknown keywords fail like libpq.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<()> {
        check_keyword(key)
            .map_err(|_| Error::config(format!("invalid connection option \"{key}\"")))?;
        self.set_known(key, value.into());
        Ok(())
    }

    /// Removes a keyword, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self.params.iter().position(|(k, _)| k == key)?;
        Some(self.params.remove(pos).1)
    }

    /// Keyword/value pairs in order, secrets included (for building a client config).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `user`, if set.
    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// `dbname`, if set.
    pub fn dbname(&self) -> Option<&str> {
        self.get("dbname")
    }

    /// `password`, if set. Never log it.
    pub fn password(&self) -> Option<&str> {
        self.get("password")
    }

    /// `application_name`, if set.
    pub fn application_name(&self) -> Option<&str> {
        self.get("application_name")
    }

    /// The candidate servers, combining the comma-separated `host`, `hostaddr` and
    /// `port` lists the way libpq does: one port applies to every host, otherwise the
    /// counts must match; empty entries mean the default socket directory / port.
    pub fn hosts(&self) -> Result<Vec<HostSpec>> {
        let non_empty = |k: &str| self.get(k).filter(|v| !v.is_empty());
        let hostaddrs: Option<Vec<&str>> = non_empty("hostaddr").map(|v| v.split(',').collect());
        let hosts: Option<Vec<&str>> = non_empty("host").map(|v| v.split(',').collect());
        let count = match (&hostaddrs, &hosts) {
            (Some(a), Some(h)) if a.len() != h.len() => {
                return Err(Error::config(format!(
                    "could not match {} host names to {} hostaddr values",
                    h.len(),
                    a.len()
                )));
            }
            (Some(a), _) => a.len(),
            (None, Some(h)) => h.len(),
            (None, None) => 1,
        };
        let ports = self.ports(count)?;
        let mut out = Vec::with_capacity(count);
        for (i, port) in ports.into_iter().enumerate() {
            let name = hosts.as_ref().map_or("", |h| h[i]);
            let addr = hostaddrs
                .as_ref()
                .map(|a| a[i])
                .filter(|a| !a.is_empty())
                .map(str::to_owned);
            let host = if let Some(addr) = addr.as_ref().filter(|_| name.is_empty()) {
                Host::Tcp(addr.clone())
            } else if name.is_empty() {
                Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))
            } else if addr.is_none() && is_unix_socket_path(name) {
                Host::Unix(PathBuf::from(name))
            } else {
                Host::Tcp(name.to_owned())
            };
            out.push(HostSpec {
                host,
                hostaddr: addr,
                port,
            });
        }
        Ok(out)
    }

    fn ports(&self, count: usize) -> Result<Vec<u16>> {
        let Some(raw) = self.get("port").filter(|p| !p.is_empty()) else {
            return Ok(vec![DEFAULT_PORT; count]);
        };
        let ports = raw.split(',').map(parse_port).collect::<Result<Vec<_>>>()?;
        match ports.len() {
            1 => Ok(vec![ports[0]; count]),
            n if n == count => Ok(ports),
            n => Err(Error::config(format!(
                "could not match {n} port numbers to {count} hosts"
            ))),
        }
    }

    /// Fills keywords that are not set from libpq's `PG*` variables (see
    /// [`ENV_FALLBACKS`]); `env` is injected so callers decide what the environment is.
    pub fn with_env_defaults(&self, env: &dyn Fn(&str) -> Option<String>) -> ConnInfo {
        let mut out = self.clone();
        for (key, var) in ENV_FALLBACKS {
            if out.get(key).is_none()
                && let Some(value) = env(var)
            {
                out.set_known(key, value);
            }
        }
        out
    }

    /// Applies libpq's built-in defaults to unset or empty keywords: `port` 5432,
    /// `user` = the OS user, `dbname` = user, and the default socket directory
    /// when neither `host` nor `hostaddr` is given.
    pub fn with_builtin_defaults(&self, os_user: &str) -> ConnInfo {
        let mut out = self.clone();
        let unset = |c: &ConnInfo, k: &str| c.get(k).is_none_or(str::is_empty);
        if unset(&out, "port") {
            out.set_known("port", DEFAULT_PORT.to_string());
        }
        if unset(&out, "user") {
            out.set_known("user", os_user.to_owned());
        }
        if unset(&out, "dbname") {
            let user = out.get("user").unwrap_or(os_user).to_owned();
            out.set_known("dbname", user);
        }
        if unset(&out, "host") && unset(&out, "hostaddr") {
            out.set_known("host", DEFAULT_SOCKET_DIR.to_owned());
        }
        out
    }

    /// Environment fallbacks, then built-in defaults: what libpq would connect with.
    pub fn resolved(&self, env: &dyn Fn(&str) -> Option<String>, os_user: &str) -> ConnInfo {
        self.with_env_defaults(env).with_builtin_defaults(os_user)
    }

    /// `key=value` string accepted by libpq and tokio-postgres, secrets included.
    pub fn to_conninfo_string(&self) -> String {
        self.render(false)
    }

    /// Same as [`ConnInfo::to_conninfo_string`] with secret values replaced by `********`.
    pub fn redacted(&self) -> String {
        self.render(true)
    }

    fn render(&self, redact: bool) -> String {
        let mut out = String::new();
        for (k, v) in &self.params {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            if redact && SECRET_KEYWORDS.contains(&k.as_str()) {
                out.push_str(REDACTED);
            } else {
                push_quoted_value(&mut out, v);
            }
        }
        out
    }

    fn set_known(&mut self, key: &str, value: String) {
        match self.params.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.params.push((key.to_owned(), value)),
        }
    }
}

/// libpq's `is_unixsock_path`: absolute path, or `@` for Linux abstract sockets.
fn is_unix_socket_path(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@')
}

fn parse_port(p: &str) -> Result<u16> {
    if p.is_empty() {
        return Ok(DEFAULT_PORT);
    }
    let n: i64 = p.trim().parse().map_err(|_| {
        Error::config(format!(
            "invalid integer value \"{p}\" for connection option \"port\""
        ))
    })?;
    u16::try_from(n)
        .ok()
        .filter(|&n| n != 0)
        .ok_or_else(|| Error::config(format!("invalid port number: \"{p}\"")))
}

fn check_keyword(key: &str) -> std::result::Result<(), ()> {
    if KEYWORDS.contains(&key) {
        Ok(())
    } else {
        Err(())
    }
}

/// C `isspace` in the C locale, which libpq uses to split `key=value` strings.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Quotes when libpq or tokio-postgres would otherwise split or unescape the value.
fn push_quoted_value(out: &mut String, v: &str) {
    let needs_quotes = v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || is_c_space(c) || c == '\'' || c == '\\');
    if !needs_quotes {
        out.push_str(v);
        return;
    }
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
}

/// The part after the scheme if `s` is a libpq URI (the prefixes are case-sensitive).
fn uri_body(s: &str) -> Option<&str> {
    s.strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
}

/// libpq's `conninfo_parse`.
fn parse_key_value(s: &str) -> Result<ConnInfo> {
    let mut info = ConnInfo::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|&c| is_c_space(c)).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| !is_c_space(c) && c != '=') {
            key.push(c);
        }
        while chars.next_if(|&c| is_c_space(c)).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::config(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        while chars.next_if(|&c| is_c_space(c)).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(Error::config(
                            "unterminated quoted string in connection info string",
                        ));
                    }
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| !is_c_space(c)) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if check_keyword(&key).is_err() {
            return Err(Error::config(format!(
                "invalid connection option \"{key}\""
            )));
        }
        info.set_known(&key, value);
    }
    Ok(info)
}

/// libpq's `conninfo_uri_parse_options`: `scheme://[user[:password]@][netloc][,...][/dbname][?params]`.
fn parse_uri(uri: &str, body: &str) -> Result<ConnInfo> {
    let mut info = ConnInfo::new();
    let mut rest = body;

    // Credentials: an '@' before the first '/'.
    let cred_end = rest.find(['@', '/']).unwrap_or(rest.len());
    if rest[cred_end..].starts_with('@') {
        let cred = &rest[..cred_end];
        let (user, password) = match cred.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (cred, None),
        };
        if !user.is_empty() {
            info.set_known("user", percent_decode(user)?);
        }
        if let Some(p) = password.filter(|p| !p.is_empty()) {
            info.set_known("password", percent_decode(p)?);
        }
        rest = &rest[cred_end + 1..];
    }

    // Host list: netloc[:port] pairs separated by ','.
    let mut hosts = String::new();
    let mut ports = String::new();
    let terminator = loop {
        let (host, after) = if let Some(v6) = rest.strip_prefix('[') {
            let close = v6.find(']').ok_or_else(|| {
                Error::config(format!(
                    "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{uri}\""
                ))
            })?;
            if close == 0 {
                return Err(Error::config(format!(
                    "IPv6 host address may not be empty in URI: \"{uri}\""
                )));
            }
            let after = &v6[close + 1..];
            if let Some(c) = after.chars().next().filter(|c| !":/?,".contains(*c)) {
                return Err(Error::config(format!(
                    "unexpected character \"{c}\" at position {} in URI (expected \":\" or \"/\"): \"{uri}\"",
                    uri.len() - after.len() + 1
                )));
            }
            (&v6[..close], after)
        } else {
            let end = rest.find([':', '/', '?', ',']).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        hosts.push_str(host);
        rest = after;
        let mut term = rest.chars().next();
        if term == Some(':') {
            let port_part = &rest[1..];
            let end = port_part.find(['/', '?', ',']).unwrap_or(port_part.len());
            ports.push_str(&port_part[..end]);
            rest = &port_part[end..];
            term = rest.chars().next();
        }
        if term != Some(',') {
            break term;
        }
        rest = &rest[1..];
        hosts.push(',');
        ports.push(',');
    };
    if !hosts.is_empty() {
        info.set_known("host", percent_decode(&hosts)?);
    }
    if !ports.is_empty() {
        info.set_known("port", percent_decode(&ports)?);
    }

    // Database name after '/', then query parameters after '?'.
    let mut query = None;
    match terminator {
        Some('/') => {
            let path = &rest[1..];
            let (db, q) = match path.split_once('?') {
                Some((db, q)) => (db, Some(q)),
                None => (path, None),
            };
            if !db.is_empty() {
                info.set_known("dbname", percent_decode(db)?);
            }
            query = q;
        }
        Some('?') => query = Some(&rest[1..]),
        _ => {}
    }
    if let Some(q) = query {
        parse_uri_params(q, &mut info)?;
    }
    Ok(info)
}

/// libpq's `conninfo_uri_parse_params`: `key=value` pairs joined by '&'.
fn parse_uri_params(query: &str, info: &mut ConnInfo) -> Result<()> {
    let mut pairs = query.split('&').peekable();
    while let Some(pair) = pairs.next() {
        // libpq accepts an empty query and one trailing '&', but no empty pair elsewhere.
        if pair.is_empty() && pairs.peek().is_none() {
            break;
        }
        let Some((raw_key, raw_value)) = pair.split_once('=') else {
            return Err(Error::config(format!(
                "missing key/value separator \"=\" in URI query parameter: \"{pair}\""
            )));
        };
        if raw_value.contains('=') {
            return Err(Error::config(format!(
                "extra key/value separator \"=\" in URI query parameter: \"{raw_key}\""
            )));
        }
        let mut key = percent_decode(raw_key)?;
        let mut value = percent_decode(raw_value)?;
        // JDBC compatibility, as in libpq.
        if key == "ssl" && value == "true" {
            key = "sslmode".to_owned();
            value = "require".to_owned();
        }
        if check_keyword(&key).is_err() {
            return Err(Error::config(format!(
                "invalid URI query parameter: \"{key}\""
            )));
        }
        info.set_known(&key, value);
    }
    Ok(())
}

/// libpq's `conninfo_uri_decode`: `%XX` escapes; raw spaces and `%00` are errors.
/// Unlike libpq, the result must be UTF-8 (Rust strings).
fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() || b == 0x0b {
            return Err(Error::config(format!(
                "unexpected spaces found in \"{s}\", use percent-encoded spaces (%20) instead"
            )));
        }
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| Error::config(format!("invalid percent-encoded token: \"{s}\"")))?;
        if hex == 0 {
            return Err(Error::config(format!(
                "forbidden value %00 in percent-encoded value: \"{s}\""
            )));
        }
        out.push(hex);
        i += 3;
    }
    String::from_utf8(out)
        .map_err(|_| Error::config(format!("percent-encoded value is not UTF-8: \"{s}\"")))
}

impl FromStr for ConnInfo {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for ConnInfo {
    /// Redacted, so a connection string in a log line never leaks a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.params {
            if SECRET_KEYWORDS.contains(&k.as_str()) {
                map.entry(k, &REDACTED);
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn parse(s: &str) -> ConnInfo {
        ConnInfo::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn pairs(c: &ConnInfo) -> Vec<(&str, &str)> {
        c.iter().collect()
    }

    #[test]
    fn key_value_form_like_libpq() {
        let c =
            parse("host=localhost port = 5433  dbname='my db' user=a\\ b password='it\\'s \\\\x'");
        assert_eq!(
            pairs(&c),
            [
                ("host", "localhost"),
                ("port", "5433"),
                ("dbname", "my db"),
                ("user", "a b"),
                ("password", "it's \\x"),
            ]
        );
        // libpq skips whitespace after '=', so an "empty" unquoted value swallows the next word.
        assert_eq!(pairs(&parse("host= port=5")), [("host", "port=5")]);
        assert_eq!(pairs(&parse("host=''")), [("host", "")]);
        assert_eq!(pairs(&parse("host=a host=b")), [("host", "b")]);
        assert!(parse("").iter().next().is_none());
    }

    #[test]
    fn key_value_errors_like_libpq() {
        let err = |s: &str| ConnInfo::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("host"),
            "missing \"=\" after \"host\" in connection info string"
        );
        assert_eq!(
            err("host='x"),
            "unterminated quoted string in connection info string"
        );
        assert_eq!(err("bogus=1"), "invalid connection option \"bogus\"");
        assert_eq!(
            ConnInfo::parse("host").unwrap_err().kind(),
            crate::ErrorKind::Config
        );
    }

    /// Examples from the libpq documentation (§32.1.1.2 Connection URIs).
    #[test]
    fn uri_examples_from_libpq_docs() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("postgresql://", &[]),
            ("postgresql://localhost", &[("host", "localhost")]),
            (
                "postgresql://localhost:5433",
                &[("host", "localhost"), ("port", "5433")],
            ),
            (
                "postgresql://localhost/mydb",
                &[("host", "localhost"), ("dbname", "mydb")],
            ),
            (
                "postgresql://user@localhost",
                &[("user", "user"), ("host", "localhost")],
            ),
            (
                "postgresql://user:secret@localhost",
                &[
                    ("user", "user"),
                    ("password", "secret"),
                    ("host", "localhost"),
                ],
            ),
            (
                "postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp",
                &[
                    ("user", "other"),
                    ("host", "localhost"),
                    ("dbname", "otherdb"),
                    ("connect_timeout", "10"),
                    ("application_name", "myapp"),
                ],
            ),
            (
                "postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp",
                &[
                    ("host", "host1,host2"),
                    ("port", "123,456"),
                    ("dbname", "somedb"),
                    ("target_session_attrs", "any"),
                    ("application_name", "myapp"),
                ],
            ),
            (
                "postgresql://[2001:db8::1234]/database",
                &[("host", "2001:db8::1234"), ("dbname", "database")],
            ),
            (
                "postgresql:///dbname?host=/var/lib/postgresql",
                &[("dbname", "dbname"), ("host", "/var/lib/postgresql")],
            ),
            (
                "postgresql://%2Fvar%2Flib%2Fpostgresql/dbname",
                &[("host", "/var/lib/postgresql"), ("dbname", "dbname")],
            ),
            (
                "postgres://h?ssl=true",
                &[("host", "h"), ("sslmode", "require")],
            ),
            (
                "postgresql://u:p:q@h",
                &[("user", "u"), ("password", "p:q"), ("host", "h")],
            ),
            (
                "postgresql://h1,h2:5/d",
                &[("host", "h1,h2"), ("port", ",5"), ("dbname", "d")],
            ),
            ("postgresql://:5433", &[("port", "5433")]),
            (
                "postgresql://h/db?port=",
                &[("host", "h"), ("dbname", "db"), ("port", "")],
            ),
            (
                "postgres://h?application_name=a+b%20c",
                &[("host", "h"), ("application_name", "a+b c")],
            ),
            (
                "postgresql://h?sslmode=require&",
                &[("host", "h"), ("sslmode", "require")],
            ),
            ("postgresql://h?", &[("host", "h")]),
            (
                "postgresql://u?x@h/d/e",
                &[("user", "u?x"), ("host", "h"), ("dbname", "d/e")],
            ),
            (
                "postgresql://:p@h#frag",
                &[("password", "p"), ("host", "h#frag")],
            ),
            (
                "postgresql://[::1]:5432,%2Ftmp",
                &[("host", "::1,/tmp"), ("port", "5432,")],
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(pairs(&parse(uri)), *want, "{uri}");
        }
    }

    /// Error texts checked against libpq 18's `PQconninfoParse`.
    #[test]
    fn uri_errors_like_libpq() {
        let cases = [
            (
                "postgresql://a b@h/d",
                "unexpected spaces found in \"a b\", use percent-encoded spaces (%20) instead",
            ),
            (
                "postgresql://u@h?x",
                "missing key/value separator \"=\" in URI query parameter: \"x\"",
            ),
            (
                "postgresql://%zz@h",
                "invalid percent-encoded token: \"%zz\"",
            ),
            (
                "postgresql://h/%00",
                "forbidden value %00 in percent-encoded value: \"%00\"",
            ),
            (
                "postgresql://h/a?b=c=d",
                "extra key/value separator \"=\" in URI query parameter: \"b\"",
            ),
            (
                "postgresql://h?bogus=1",
                "invalid URI query parameter: \"bogus\"",
            ),
            (
                "postgresql://h?&a=b",
                "missing key/value separator \"=\" in URI query parameter: \"\"",
            ),
            (
                "postgresql://h?host=a%ZZ",
                "invalid percent-encoded token: \"a%ZZ\"",
            ),
            (
                "postgresql://h?ssl=false",
                "invalid URI query parameter: \"ssl\"",
            ),
            (
                "postgresql://[::1",
                "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"postgresql://[::1\"",
            ),
            (
                "postgresql://[]/d",
                "IPv6 host address may not be empty in URI: \"postgresql://[]/d\"",
            ),
            (
                "postgresql://[::1]x/d",
                "unexpected character \"x\" at position 19 in URI (expected \":\" or \"/\"): \"postgresql://[::1]x/d\"",
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(ConnInfo::parse(uri).unwrap_err().to_string(), want, "{uri}");
        }
    }

    #[test]
    fn hosts_combine_lists_the_libpq_way() {
        let c = parse("postgresql://host1:123,host2:456/somedb");
        let hosts = c.hosts().unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].to_string(), "host1:123");
        assert_eq!(hosts[1].to_string(), "host2:456");

        let c = parse("host=a,/tmp,,[x] port=6000");
        let hosts = c.hosts().unwrap();
        assert_eq!(hosts[0].host, Host::Tcp("a".into()));
        assert_eq!(hosts[1].host, Host::Unix("/tmp".into()));
        assert_eq!(
            hosts[1].socket_path().unwrap(),
            PathBuf::from("/tmp/.s.PGSQL.6000")
        );
        assert_eq!(hosts[2].host, Host::Unix(DEFAULT_SOCKET_DIR.into()));
        assert!(hosts.iter().all(|h| h.port == 6000));

        let c = parse("postgresql://[::1]:5433,h2");
        let hosts = c.hosts().unwrap();
        assert_eq!(hosts[0].to_string(), "[::1]:5433");
        assert_eq!(hosts[1].port, DEFAULT_PORT);

        let c = parse("hostaddr=127.0.0.1,10.0.0.1 host=db1,db2 port=1,2");
        let hosts = c.hosts().unwrap();
        assert_eq!(hosts[1].host, Host::Tcp("db2".into()));
        assert_eq!(hosts[1].hostaddr.as_deref(), Some("10.0.0.1"));
        let only_addr = parse("hostaddr=127.0.0.1").hosts().unwrap();
        assert_eq!(only_addr[0].host, Host::Tcp("127.0.0.1".into()));

        let empty = ConnInfo::new().hosts().unwrap();
        assert_eq!(
            empty,
            [HostSpec {
                host: Host::Unix(DEFAULT_SOCKET_DIR.into()),
                hostaddr: None,
                port: 5432
            }]
        );
    }

    #[test]
    fn host_list_errors() {
        let err = |s: &str| parse(s).hosts().unwrap_err().to_string();
        assert_eq!(
            err("host=a,b,c port=1,2"),
            "could not match 2 port numbers to 3 hosts"
        );
        assert_eq!(
            err("host=a,b hostaddr=1.1.1.1"),
            "could not match 2 host names to 1 hostaddr values"
        );
        assert_eq!(
            err("port=abc"),
            "invalid integer value \"abc\" for connection option \"port\""
        );
        assert_eq!(err("port=70000"), "invalid port number: \"70000\"");
    }

    #[test]
    fn env_fallbacks_apply_only_to_unset_keys() {
        let env: HashMap<&str, &str> = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6543"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGAPPNAME", "app"),
            ("PGSSLMODE", "require"),
            ("PGTARGETSESSIONATTRS", "read-write"),
            ("PGDATABASE", ""),
        ]
        .into_iter()
        .collect();
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let c = parse("host=explicit dbname=db").with_env_defaults(&lookup);
        assert_eq!(c.get("host"), Some("explicit"));
        assert_eq!(c.dbname(), Some("db"));
        assert_eq!(c.get("port"), Some("6543"));
        assert_eq!(c.user(), Some("envuser"));
        assert_eq!(c.password(), Some("envpw"));
        assert_eq!(c.application_name(), Some("app"));
        assert_eq!(c.get("sslmode"), Some("require"));
        assert_eq!(c.get("target_session_attrs"), Some("read-write"));

        // An empty PGDATABASE is "set"; the built-in default then treats it as unset, like libpq.
        let r = ConnInfo::new().resolved(&lookup, "osuser");
        assert_eq!(r.dbname(), Some("envuser"));
        assert_eq!(r.get("host"), Some("envhost"));
    }

    #[test]
    fn builtin_defaults_follow_libpq() {
        let none = |_: &str| None;
        let r = ConnInfo::new().resolved(&none, "alice");
        assert_eq!(r.get("port"), Some("5432"));
        assert_eq!(r.user(), Some("alice"));
        assert_eq!(r.dbname(), Some("alice"));
        assert_eq!(r.get("host"), Some(DEFAULT_SOCKET_DIR));

        let r = parse("user=bob hostaddr=127.0.0.1").with_builtin_defaults("alice");
        assert_eq!(r.dbname(), Some("bob"));
        assert_eq!(
            r.get("host"),
            None,
            "hostaddr alone must not gain a socket host"
        );
    }

    #[test]
    fn secrets_are_hidden_from_display_debug_and_redacted() {
        let c = parse("postgresql://u:s3cret@h/db?sslpassword=k3y");
        for shown in [c.to_string(), format!("{c:?}"), c.redacted()] {
            assert!(
                !shown.contains("s3cret") && !shown.contains("k3y"),
                "{shown}"
            );
            assert!(shown.contains("********"), "{shown}");
        }
        assert_eq!(
            c.redacted(),
            "user=u password=******** host=h dbname=db sslpassword=********"
        );
        assert!(c.to_conninfo_string().contains("password=s3cret"));
    }

    #[test]
    fn set_get_remove_keep_order_and_validate() {
        let mut c = parse("host=a port=1");
        c.set("dbname", "d").unwrap();
        c.set("host", "b").unwrap();
        assert_eq!(c.to_conninfo_string(), "host=b port=1 dbname=d");
        assert!(c.set("nope", "x").is_err());
        assert_eq!(c.remove("port").as_deref(), Some("1"));
        assert_eq!(c.to_conninfo_string(), "host=b dbname=d");
    }

    #[test]
    fn to_conninfo_string_quotes_only_when_needed() {
        let mut c = ConnInfo::new();
        c.set("application_name", "a b").unwrap();
        c.set("password", "it's\\").unwrap();
        c.set("dbname", "").unwrap();
        c.set("options", "-c search_path=x").unwrap();
        c.set("host", "h=1").unwrap();
        assert_eq!(
            c.to_conninfo_string(),
            "application_name='a b' password='it\\'s\\\\' dbname='' options='-c search_path=x' host=h=1"
        );
    }

    proptest! {
        #[test]
        fn key_value_round_trip(values in proptest::collection::vec("\\PC*|[ '\\\\\\t\\u{a0}é=]*", 1..6)) {
            let keys = ["host", "user", "password", "dbname", "options", "application_name"];
            let mut c = ConnInfo::new();
            for (k, v) in keys.iter().zip(&values) {
                c.set(k, v.clone()).unwrap();
            }
            let back = ConnInfo::parse(&c.to_conninfo_string()).unwrap();
            prop_assert_eq!(back, c);
        }

        #[test]
        fn uri_user_password_round_trip(user in "[a-zA-Z0-9 @:/?%é]{1,10}", pw in "[a-zA-Z0-9 @:/?%é]{1,10}") {
            let enc = |s: &str| s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>();
            let c = ConnInfo::parse(&format!("postgresql://{}:{}@h/db", enc(&user), enc(&pw))).unwrap();
            prop_assert_eq!(c.user(), Some(user.as_str()));
            prop_assert_eq!(c.password(), Some(pw.as_str()));
        }
    }
}
