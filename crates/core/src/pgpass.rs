//! `.pgpass` password files, matched exactly like libpq's `passwordFromFile`.

use std::path::{Path, PathBuf};

use crate::conninfo::{DEFAULT_PORT, DEFAULT_SOCKET_DIR};

/// A parsed password file; entries are tried in file order, first match wins.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pgpass {
    entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    host: Field,
    port: Field,
    database: Field,
    user: Field,
    password: String,
}

/// One of the four match fields: `*` or a literal (with `\:` and `\\` unescaped).
#[derive(Clone, PartialEq, Eq)]
enum Field {
    Any,
    Exact(String),
}

impl Field {
    fn matches(&self, value: &str) -> bool {
        match self {
            Field::Any => true,
            Field::Exact(s) => s == value,
        }
    }
}

/// Result of [`load`]: libpq silently skips missing files and warns about unsafe ones.
#[derive(Clone, PartialEq, Eq)]
pub enum PgpassFile {
    /// The file was read and parsed.
    Loaded(Pgpass),
    /// No file at that path (not worth a warning).
    Missing,
    /// The file exists but libpq would ignore it; the reason is libpq's warning text.
    Ignored(String),
}

impl PgpassFile {
    /// The parsed file, when it was usable.
    pub fn pgpass(&self) -> Option<&Pgpass> {
        match self {
            PgpassFile::Loaded(p) => Some(p),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Pgpass {
    /// Shows only the entry count: the file holds passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pgpass {{ entries: {} }}", self.entries.len())
    }
}

impl std::fmt::Debug for PgpassFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgpassFile::Loaded(p) => write!(f, "Loaded({p:?})"),
            PgpassFile::Missing => f.write_str("Missing"),
            PgpassFile::Ignored(why) => write!(f, "Ignored({why:?})"),
        }
    }
}

impl Pgpass {
    /// Parses file contents: `host:port:database:user:password` lines, `#` comments.
    /// Lines with fewer than four separators can never match and are skipped.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .split('\n')
            .map(|line| line.trim_end_matches(['\r', '\n']))
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Self { entries }
    }

    /// The password for a connection, as libpq looks it up: an empty host or the
    /// default socket directory matches `localhost`, an empty port matches 5432, and
    /// no password is returned without a database or user name.
    pub fn lookup(&self, host: &str, port: &str, database: &str, user: &str) -> Option<&str> {
        if database.is_empty() || user.is_empty() {
            return None;
        }
        let host = if host.is_empty() || host == DEFAULT_SOCKET_DIR {
            "localhost"
        } else {
            host
        };
        let default_port = DEFAULT_PORT.to_string();
        let port = if port.is_empty() { &default_port } else { port };
        self.entries
            .iter()
            .find(|e| {
                e.host.matches(host)
                    && e.port.matches(port)
                    && e.database.matches(database)
                    && e.user.matches(user)
            })
            .map(|e| e.password.as_str())
    }

    /// Number of usable entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file has no usable entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Splits one line into its four fields and the password.
fn parse_line(line: &str) -> Option<Entry> {
    let mut rest = line;
    let mut fields = Vec::with_capacity(4);
    for _ in 0..4 {
        let (field, after) = read_field(rest)?;
        fields.push(field);
        rest = after;
    }
    let password = read_password(rest);
    let mut fields = fields.into_iter();
    Some(Entry {
        host: fields.next()?,
        port: fields.next()?,
        database: fields.next()?,
        user: fields.next()?,
        password,
    })
}

/// Reads a field up to the next unescaped ':'; `*` alone is the wildcard.
fn read_field(s: &str) -> Option<(Field, &str)> {
    if let Some(after) = s.strip_prefix("*:") {
        return Some((Field::Any, after));
    }
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => return None,
            },
            ':' => return Some((Field::Exact(value), &s[i + 1..])),
            _ => value.push(c),
        }
    }
    None
}

/// The password runs to the end of the line or the next unescaped ':'.
fn read_password(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' if chars.peek().is_some() => out.extend(chars.next()),
            _ => out.push(c),
        }
    }
    out
}

/// Where libpq looks for the file: `PGPASSFILE` if set and non-empty, else `$HOME/.pgpass`.
/// (A `passfile` connection keyword, when given, takes precedence over both.)
pub fn pgpass_path(env: &dyn Fn(&str) -> Option<String>, home: &Path) -> PathBuf {
    match env("PGPASSFILE").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => home.join(".pgpass"),
    }
}

/// Reads and parses a password file, ignoring it as libpq does when it is not a
/// regular file or is readable by group or others.
pub fn load(path: &Path) -> PgpassFile {
    use std::os::unix::fs::PermissionsExt;

    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PgpassFile::Missing,
        Err(e) => {
            return PgpassFile::Ignored(format!(
                "could not read password file \"{}\": {e}",
                path.display()
            ));
        }
    };
    if !meta.is_file() {
        return PgpassFile::Ignored(format!(
            "WARNING: password file \"{}\" is not a plain file",
            path.display()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return PgpassFile::Ignored(format!(
            "WARNING: password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        ));
    }
    match std::fs::read(path) {
        Ok(bytes) => PgpassFile::Loaded(Pgpass::parse(&String::from_utf8_lossy(&bytes))),
        Err(e) => PgpassFile::Ignored(format!(
            "could not read password file \"{}\": {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FILE: &str = "\
# comment line
\n\
db1.example.com:5432:sales:alice:pw1\r
*:*:sales:bob:pw\\:with\\\\colon:ignored
localhost:*:*:carol:local
ho\\:st:6000:*:*:escaped-host
*:*:*:*:fallback
too:few:fields
";

    #[test]
    fn first_match_wins_with_wildcards_and_escapes() {
        let p = Pgpass::parse(FILE);
        assert_eq!(p.len(), 5);
        assert_eq!(
            p.lookup("db1.example.com", "5432", "sales", "alice"),
            Some("pw1")
        );
        assert_eq!(
            p.lookup("db1.example.com", "5433", "sales", "alice"),
            Some("fallback")
        );
        assert_eq!(
            p.lookup("anyhost", "1", "sales", "bob"),
            Some("pw:with\\colon")
        );
        assert_eq!(p.lookup("ho:st", "6000", "d", "u"), Some("escaped-host"));
        assert_eq!(p.lookup("other", "1", "d", "u"), Some("fallback"));
    }

    #[test]
    fn localhost_matches_default_socket_and_empty_host() {
        let p = Pgpass::parse("localhost:5432:*:carol:local\n");
        assert_eq!(p.lookup("", "", "db", "carol"), Some("local"));
        assert_eq!(
            p.lookup(DEFAULT_SOCKET_DIR, "5432", "db", "carol"),
            Some("local")
        );
        assert_eq!(
            p.lookup("/tmp", "5432", "db", "carol"),
            None,
            "only the default socket dir maps to localhost"
        );
        assert_eq!(
            p.lookup("localhost", "5432", "", "carol"),
            None,
            "no dbname, no lookup"
        );
    }

    #[test]
    fn star_is_a_wildcard_only_as_a_whole_field() {
        let p = Pgpass::parse("a*:*:*:*:x\n\\*:*:*:*:y\n");
        assert_eq!(p.lookup("abc", "1", "d", "u"), None);
        assert_eq!(p.lookup("a*", "1", "d", "u"), Some("x"));
        assert_eq!(p.lookup("*", "1", "d", "u"), Some("y"));
    }

    #[test]
    fn debug_hides_passwords() {
        let shown = format!("{:?}", Pgpass::parse(FILE));
        assert!(!shown.contains("pw1"), "{shown}");
    }

    #[test]
    fn pgpass_path_prefers_env() {
        let home = Path::new("/home/u");
        assert_eq!(
            pgpass_path(&|_| None, home),
            PathBuf::from("/home/u/.pgpass")
        );
        assert_eq!(
            pgpass_path(&|_| Some(String::new()), home),
            PathBuf::from("/home/u/.pgpass")
        );
        let env = |k: &str| (k == "PGPASSFILE").then(|| "/etc/pw".to_owned());
        assert_eq!(pgpass_path(&env, home), PathBuf::from("/etc/pw"));
    }

    #[test]
    fn load_ignores_group_readable_files_like_libpq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".pgpass");
        assert!(matches!(load(&path), PgpassFile::Missing));

        std::fs::write(&path, "h:5432:d:u:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        match load(&path) {
            PgpassFile::Ignored(why) => assert!(why.contains("has group or world access"), "{why}"),
            other => panic!("expected Ignored, got {other:?}"),
        }

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = load(&path);
        assert_eq!(
            loaded
                .pgpass()
                .and_then(|p| p.lookup("h", "5432", "d", "u")),
            Some("secret")
        );

        match load(dir.path()) {
            PgpassFile::Ignored(why) => assert!(why.contains("is not a plain file"), "{why}"),
            other => panic!("expected Ignored, got {other:?}"),
        }
    }
}
