//! Configuration layering: defaults < TOML file < environment < flags, merged
//! key by key into one TOML table and then deserialized into the caller's type.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::error::{Error, Result};

/// An ordered stack of config layers; each call adds a layer that wins over
/// everything added before it.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    merged: Table,
}

impl Layers {
    /// An empty stack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds built-in defaults from a value (usually `T::default()`). Besides
    /// supplying values, defaults give env strings their target types.
    pub fn defaults<T: Serialize>(self, value: &T) -> Result<Self> {
        let table = Table::try_from(value)
            .map_err(|e| Error::internal(format!("serializing config defaults: {e}")))?;
        Ok(self.table(table))
    }

    /// Adds a TOML document; `origin` (usually the file path) prefixes parse errors,
    /// which name the line: `<origin>: line N: <message>`.
    pub fn file_toml(self, origin: impl fmt::Display, text: &str) -> Result<Self> {
        let table = parse_toml(&origin, text)?;
        Ok(self.table(table))
    }

    /// Adds an already-built table (e.g. flags collected by the CLI).
    pub fn table(mut self, layer: Table) -> Self {
        deep_merge(&mut self.merged, layer);
        self
    }

    /// Adds command-line flags; same as [`Layers::table`], named for readability.
    pub fn flags(self, flags: Table) -> Self {
        self.table(flags)
    }

    /// Adds environment variables for a known list of dotted keys.
    ///
    /// `_` is ambiguous in variable names, so matching goes from key to name:
    /// `names_for_key("repl.grpc.port")` returns the variable names that may set it,
    /// in priority order (see [`env_names`]). Values are strings converted to the
    /// type the key already has in lower layers (int, float, bool, string, or a
    /// comma-separated array); keys without a lower value get a best-effort parse.
    pub fn env<I, K, V, F>(self, vars: I, keys: &[&str], names_for_key: F) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
        F: Fn(&str) -> Vec<String>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.into()))
            .collect();
        let mut layer = Table::new();
        for key in keys {
            let found = names_for_key(key)
                .into_iter()
                .find_map(|name| vars.iter().find(|(k, _)| *k == name).cloned());
            if let Some((name, raw)) = found {
                let value = convert_env_value(&name, &raw, lookup(&self.merged, key))?;
                insert_path(&mut layer, key, value)?;
            }
        }
        Ok(self.table(layer))
    }

    /// The merged table so far.
    pub fn merged(&self) -> &Table {
        &self.merged
    }

    /// The value at a dotted key, if any layer set it.
    pub fn get(&self, dotted_key: &str) -> Option<&Value> {
        lookup(&self.merged, dotted_key)
    }

    /// Deserializes the merged layers into the caller's config type. Type errors
    /// name the dotted key: `configuration: repl.grpc.port: invalid type ...`.
    pub fn extract<T: DeserializeOwned>(&self) -> Result<T> {
        // Going through text gives the error a span, from which we recover the key.
        let text = toml::to_string(&self.merged)
            .map_err(|e| Error::internal(format!("serializing merged config: {e}")))?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().trim_end();
            match e.span().and_then(|span| key_at(&text, span.start)) {
                Some(key) => Error::config(format!("configuration: {key}: {msg}")),
                None => Error::config(format!("configuration: {msg}")),
            }
        })
    }
}

/// Variable names for a dotted key: `PREFIX` + key upper-cased with `.` → `_`,
/// first with `root.` stripped (`repl.grpc.port` → `STEEP_REPL_GRPC_PORT`), then
/// with it kept (`STEEP_REPL_REPL_GRPC_PORT`, the reference tool's spelling).
pub fn env_names<'a>(prefix: &'a str, root: Option<&'a str>) -> impl Fn(&str) -> Vec<String> + 'a {
    move |key: &str| {
        let upper = |k: &str| format!("{prefix}{}", k.replace('.', "_").to_ascii_uppercase());
        let stripped = root.and_then(|r| key.strip_prefix(r)?.strip_prefix('.'));
        match stripped {
            Some(short) => vec![upper(short), upper(key)],
            None => vec![upper(key)],
        }
    }
}

/// Parses TOML, turning the error span into a line number.
fn parse_toml(origin: &dyn fmt::Display, text: &str) -> Result<Table> {
    text.parse::<Table>().map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().trim_end();
        match line {
            Some(n) => Error::config(format!("{origin}: line {n}: {msg}")),
            None => Error::config(format!("{origin}: {msg}")),
        }
    })
}

/// The dotted key of the `key = value` line containing byte `pos` of serializer output.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    let section = text[..line_start]
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(['[', ']']).trim());
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    })
}

/// Merges `layer` into `base`: tables recursively, every other value replaced.
fn deep_merge(base: &mut Table, layer: Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(l)) => deep_merge(b, l),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn lookup<'a>(table: &'a Table, dotted_key: &str) -> Option<&'a Value> {
    let mut parts = dotted_key.split('.');
    let mut current = table.get(parts.next()?)?;
    for part in parts {
        current = current.as_table()?.get(part)?;
    }
    Some(current)
}

fn insert_path(table: &mut Table, dotted_key: &str, value: Value) -> Result<()> {
    let mut parts: Vec<&str> = dotted_key.split('.').collect();
    let last = parts
        .pop()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Error::internal(format!("invalid config key {dotted_key:?}")))?;
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        current = entry.as_table_mut().ok_or_else(|| {
            Error::internal(format!("config key {dotted_key:?} crosses a non-table"))
        })?;
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

/// Converts an env string to the type of the existing value, or guesses.
fn convert_env_value(name: &str, raw: &str, existing: Option<&Value>) -> Result<Value> {
    let bad = |want: &str| Error::config(format!("{name}: invalid {want} value {raw:?}"));
    match existing {
        Some(Value::Integer(_)) => raw
            .trim()
            .parse()
            .map(Value::Integer)
            .map_err(|_| bad("integer")),
        Some(Value::Float(_)) => raw
            .trim()
            .parse()
            .map(Value::Float)
            .map_err(|_| bad("float")),
        Some(Value::Boolean(_)) => parse_bool(raw)
            .map(Value::Boolean)
            .ok_or_else(|| bad("boolean")),
        Some(Value::String(_)) => Ok(Value::String(raw.to_owned())),
        Some(Value::Array(items)) => {
            let item_type = items.first();
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| convert_env_value(name, s, item_type))
                .collect::<Result<Vec<_>>>()
                .map(Value::Array)
        }
        Some(Value::Table(_)) => Err(Error::config(format!(
            "{name}: cannot set a whole config section from the environment"
        ))),
        _ => Ok(guess_env_value(raw)),
    }
}

/// Best-effort typing for keys without a default: bool, integer, float, else string.
fn guess_env_value(raw: &str) -> Value {
    let t = raw.trim();
    if let Some(b) = t
        .eq_ignore_ascii_case("true")
        .then_some(true)
        .or_else(|| t.eq_ignore_ascii_case("false").then_some(false))
    {
        return Value::Boolean(b);
    }
    if let Ok(i) = t.parse::<i64>() {
        return Value::Integer(i);
    }
    if let Ok(f) = t.parse::<f64>()
        && t.contains(['.', 'e', 'E'])
        && f.is_finite()
    {
        return Value::Float(f);
    }
    Value::String(raw.to_owned())
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" | "on" => Some(true),
        "false" | "f" | "0" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Root {
        repl: Repl,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Repl {
        node_id: String,
        enabled: bool,
        postgresql: Pg,
        grpc: Grpc,
        audit: Audit,
        tags: Vec<String>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Pg {
        host: String,
        port: u16,
        user: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Grpc {
        port: u16,
        ratio: f64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Audit {
        retention: String,
    }

    impl Default for Repl {
        fn default() -> Self {
            Self {
                node_id: String::new(),
                enabled: false,
                postgresql: Pg::default(),
                grpc: Grpc::default(),
                audit: Audit::default(),
                tags: vec!["a".into()],
            }
        }
    }
    impl Default for Pg {
        fn default() -> Self {
            Self {
                host: "localhost".into(),
                port: 5432,
                user: "postgres".into(),
            }
        }
    }
    impl Default for Grpc {
        fn default() -> Self {
            Self {
                port: 5433,
                ratio: 0.5,
            }
        }
    }
    impl Default for Audit {
        fn default() -> Self {
            Self {
                retention: "17520h".into(),
            }
        }
    }

    const KEYS: &[&str] = &[
        "repl.node_id",
        "repl.enabled",
        "repl.postgresql.host",
        "repl.postgresql.port",
        "repl.postgresql.user",
        "repl.grpc.port",
        "repl.grpc.ratio",
        "repl.audit.retention",
        "repl.tags",
    ];

    fn layers_with_file(file: &str) -> Layers {
        Layers::new()
            .defaults(&Root::default())
            .unwrap()
            .file_toml("cfg.toml", file)
            .unwrap()
    }

    #[test]
    fn file_merges_deeply_over_defaults() {
        let cfg: Root =
            layers_with_file("[repl]\nnode_id = \"n1\"\n[repl.postgresql]\nport = 6000\n")
                .extract()
                .unwrap();
        assert_eq!(cfg.repl.node_id, "n1");
        assert_eq!(cfg.repl.postgresql.port, 6000);
        assert_eq!(
            cfg.repl.postgresql.host, "localhost",
            "sibling default kept"
        );
        assert_eq!(cfg.repl.grpc.port, 5433);
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let env = [
            ("STEEP_REPL_GRPC_PORT", "15999"),
            ("STEEP_REPL_POSTGRESQL_HOST", "db.example"),
            ("STEEP_REPL_REPL_POSTGRESQL_USER", "legacy"),
            ("STEEP_REPL_ENABLED", "TRUE"),
            ("STEEP_REPL_GRPC_RATIO", "2"),
            ("STEEP_REPL_TAGS", "x, y"),
            ("STEEP_REPL_NODE_ID", "123"),
            ("UNRELATED", "1"),
        ];
        let layers =
            layers_with_file("[repl.grpc]\nport = 7000\n[repl.postgresql]\nhost = \"file\"\n")
                .env(env, KEYS, env_names("STEEP_REPL_", Some("repl")))
                .unwrap();
        let cfg: Root = layers.extract().unwrap();
        assert_eq!(cfg.repl.grpc.port, 15999);
        assert_eq!(cfg.repl.postgresql.host, "db.example");
        assert_eq!(
            cfg.repl.postgresql.user, "legacy",
            "STEEP_REPL_REPL_<KEY> form"
        );
        assert!(cfg.repl.enabled);
        assert_eq!(cfg.repl.grpc.ratio, 2.0);
        assert_eq!(cfg.repl.tags, ["x", "y"]);
        assert_eq!(
            cfg.repl.node_id, "123",
            "string default keeps digits a string"
        );

        let mut flags = Table::new();
        insert_path(&mut flags, "repl.grpc.port", Value::Integer(16000)).unwrap();
        let cfg: Root = layers.flags(flags).extract().unwrap();
        assert_eq!(cfg.repl.grpc.port, 16000);
        assert_eq!(cfg.repl.postgresql.host, "db.example");
    }

    #[test]
    fn short_env_name_wins_over_legacy_form() {
        let env = [
            ("STEEP_REPL_REPL_GRPC_PORT", "1"),
            ("STEEP_REPL_GRPC_PORT", "2"),
        ];
        let cfg: Root = Layers::new()
            .defaults(&Root::default())
            .unwrap()
            .env(env, KEYS, env_names("STEEP_REPL_", Some("repl")))
            .unwrap()
            .extract()
            .unwrap();
        assert_eq!(cfg.repl.grpc.port, 2);
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let err = Layers::new()
            .defaults(&Root::default())
            .unwrap()
            .env(
                [("STEEP_REPL_GRPC_PORT", "abc")],
                KEYS,
                env_names("STEEP_REPL_", Some("repl")),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "STEEP_REPL_GRPC_PORT: invalid integer value \"abc\""
        );
        assert_eq!(err.kind(), crate::ErrorKind::Config);
    }

    #[test]
    fn untyped_env_values_are_guessed() {
        let layers = Layers::new()
            .env(
                [
                    ("P_A", "true"),
                    ("P_B", "42"),
                    ("P_C", "1.5"),
                    ("P_D", "hello"),
                    ("P_E", "1e3"),
                ],
                &["a", "b", "c", "d", "e"],
                env_names("P_", None),
            )
            .unwrap();
        assert_eq!(layers.get("a"), Some(&Value::Boolean(true)));
        assert_eq!(layers.get("b"), Some(&Value::Integer(42)));
        assert_eq!(layers.get("c"), Some(&Value::Float(1.5)));
        assert_eq!(layers.get("d"), Some(&Value::String("hello".into())));
        assert_eq!(layers.get("e"), Some(&Value::Float(1000.0)));
    }

    #[test]
    fn toml_errors_name_file_and_line() {
        let text = "[repl]\nnode_id = \"ok\"\nport = = 3\n";
        let err = Layers::new()
            .file_toml("/etc/pgtandem/pgtandem.toml", text)
            .unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            "/etc/pgtandem/pgtandem.toml: line 3: extra `=`, expected nothing"
        );
        assert_eq!(err.kind(), crate::ErrorKind::Config);
    }

    #[test]
    fn extract_type_errors_are_config_errors() {
        let err = layers_with_file("[repl.grpc]\nport = \"high\"\n")
            .extract::<Root>()
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        assert_eq!(
            err.to_string(),
            "configuration: repl.grpc.port: invalid type: string \"high\", expected u16"
        );
    }

    #[test]
    fn env_names_strip_the_root() {
        let names = env_names("STEEP_REPL_", Some("repl"));
        assert_eq!(
            names("repl.audit.retention"),
            [
                "STEEP_REPL_AUDIT_RETENTION",
                "STEEP_REPL_REPL_AUDIT_RETENTION"
            ]
        );
        assert_eq!(names("other.x"), ["STEEP_REPL_OTHER_X"]);
    }
}
