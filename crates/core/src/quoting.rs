//! SQL identifier and literal quoting, byte-for-byte like PostgreSQL's
//! `quote_ident` and `quote_literal`, and schema-qualified names.
//!
//! Strings containing NUL cannot reach the server (the wire protocol uses
//! C strings and the client library refuses them), so the quoting functions
//! do not check for NUL; [`QualifiedName`] rejects it up front.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Keywords `quote_ident` must quote: every category except `UNRESERVED_KEYWORD`
/// (PostgreSQL 18 `kwlist.h`; sorted by ASCII for binary search).
const QUOTED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_table",
    "json_value",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "merge_action",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// Quotes an identifier only when needed, exactly like PostgreSQL's `quote_ident`:
/// it stays bare if it is lower-case identifier-shaped (`[a-z_][a-z0-9_]*`) and not
/// a keyword that needs quoting.
pub fn quote_ident(ident: &str) -> String {
    if is_safe_bare_ident(ident) {
        ident.to_owned()
    } else {
        quote_ident_always(ident)
    }
}

/// Always double-quotes, doubling embedded `"`; for generated SQL where a stable
/// shape matters more than readability.
pub fn quote_ident_always(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for c in ident.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes a string literal exactly like PostgreSQL's `quote_literal`: doubles `'`,
/// and when the value holds a backslash uses `E'...'` with backslashes doubled, so
/// the result is correct whatever `standard_conforming_strings` is.
pub fn quote_literal(value: &str) -> String {
    let has_backslash = value.contains('\\');
    let mut out = String::with_capacity(value.len() + 3);
    if has_backslash {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Whether PostgreSQL's `quote_ident` would leave `ident` unquoted.
fn is_safe_bare_ident(ident: &str) -> bool {
    let mut bytes = ident.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    (first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && QUOTED_KEYWORDS.binary_search(&ident).is_err()
}

/// A schema-qualified object name, e.g. a table.
///
/// Parsed the way PostgreSQL reads a qualified name: unquoted parts are folded to
/// lower case, quoted parts are taken literally (`""` is an escaped `"`), and a bare
/// name lands in `public`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    /// Schema name, unquoted (raw catalog form).
    pub schema: String,
    /// Object name, unquoted (raw catalog form).
    pub name: String,
}

/// Schema used for unqualified names.
pub const DEFAULT_SCHEMA: &str = "public";

impl QualifiedName {
    /// Builds a name from raw catalog parts (no quoting or folding).
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Result<Self> {
        let (schema, name) = (schema.into(), name.into());
        for part in [&schema, &name] {
            check_part(part)?;
        }
        Ok(Self { schema, name })
    }
}

fn check_part(part: &str) -> Result<()> {
    if part.is_empty() {
        return Err(Error::config("zero-length delimited identifier"));
    }
    if part.contains('\0') {
        return Err(Error::config(format!(
            "identifier contains a NUL byte: {}",
            part.escape_debug()
        )));
    }
    Ok(())
}

impl fmt::Display for QualifiedName {
    /// Always quotes both parts so the output is stable and safe in any SQL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident_always(&self.schema),
            quote_ident_always(&self.name)
        )
    }
}

impl FromStr for QualifiedName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |why: &str| Error::config(format!("Invalid qualified name {s:?}: {why}"));
        if s.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        let mut parts = Vec::new();
        let mut rest = s;
        loop {
            let (part, after) = parse_name_part(rest).map_err(&invalid)?;
            parts.push(part);
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => break,
                None => return Err(invalid("unexpected characters after name")),
            }
        }
        let mut parts = parts.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None) => Self::new(DEFAULT_SCHEMA, name),
            (Some(schema), Some(name), None) => Self::new(schema, name),
            _ => Err(invalid("expected [schema.]name")),
        }
    }
}

/// Reads one identifier (quoted or bare) from the start of `s`; returns it and the rest.
fn parse_name_part(s: &str) -> std::result::Result<(String, &str), &'static str> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                out.push(c);
                continue;
            }
            if quoted[i + 1..].starts_with('"') {
                out.push('"');
                chars.next();
                continue;
            }
            if out.is_empty() {
                return Err("zero-length delimited identifier");
            }
            return Ok((out, &quoted[i + 1..]));
        }
        return Err("unterminated quoted identifier");
    }
    let end = s.find(['.', '"']).unwrap_or(s.len());
    let bare = &s[..end];
    if bare.is_empty() {
        return Err("empty name part");
    }
    if bare.chars().any(char::is_whitespace) {
        return Err("whitespace in unquoted name");
    }
    // PostgreSQL folds only ASCII letters in unquoted identifiers.
    Ok((bare.to_ascii_lowercase(), &s[end..]))
}

impl Serialize for QualifiedName {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QualifiedName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads back a quoted identifier the way the SQL lexer does.
    fn unquote_ident(q: &str) -> String {
        match q.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(inner) => inner.replace("\"\"", "\""),
            None => q.to_owned(),
        }
    }

    /// Reads back a string literal the way the SQL lexer does.
    fn unquote_literal(q: &str) -> String {
        let (escaped, body) = match q.strip_prefix('E') {
            Some(rest) => (true, rest),
            None => (false, q),
        };
        let inner = body
            .strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .unwrap();
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' => assert_eq!(chars.next(), Some('\''), "lone quote in {q}"),
                '\\' if escaped => {
                    assert_eq!(
                        chars.next(),
                        Some('\\'),
                        "only \\\\ escapes are produced: {q}"
                    )
                }
                _ => {}
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn keyword_table_is_sorted_for_binary_search() {
        assert!(QUOTED_KEYWORDS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(QUOTED_KEYWORDS.len(), 164);
    }

    #[test]
    fn quote_ident_matches_postgres() {
        let cases = [
            ("foo", "foo"),
            ("foo_bar1", "foo_bar1"),
            ("_x", "_x"),
            ("Foo", "\"Foo\""),
            ("1abc", "\"1abc\""),
            ("a b", "\"a b\""),
            ("a\"b", "\"a\"\"b\""),
            ("", "\"\""),
            ("été", "\"été\""),
            ("a$b", "\"a$b\""),
            // reserved, type/func-name and col-name keywords are quoted
            ("select", "\"select\""),
            ("user", "\"user\""),
            ("left", "\"left\""),
            ("integer", "\"integer\""),
            ("json_table", "\"json_table\""),
            // unreserved keywords stay bare
            ("name", "name"),
            ("data", "data"),
            ("password", "password"),
        ];
        for (input, want) in cases {
            assert_eq!(quote_ident(input), want, "{input:?}");
        }
        assert_eq!(quote_ident_always("foo"), "\"foo\"");
    }

    #[test]
    fn quote_literal_matches_postgres() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"C:\dir"), r"E'C:\\dir'");
        assert_eq!(quote_literal(r"a'\"), r"E'a''\\'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn qualified_names_parse_like_postgres() {
        let cases = [
            ("s.t", ("s", "t")),
            ("t", ("public", "t")),
            ("S.T", ("s", "t")),
            ("\"S\".\"t.x\"", ("S", "t.x")),
            ("\"a\"\"b\".c", ("a\"b", "c")),
            ("sch.\"Tab le\"", ("sch", "Tab le")),
        ];
        for (input, (schema, name)) in cases {
            let q: QualifiedName = input.parse().unwrap();
            assert_eq!(
                (q.schema.as_str(), q.name.as_str()),
                (schema, name),
                "{input}"
            );
        }
        for bad in [
            "",
            "a.b.c",
            "\"unterminated",
            "\"\".t",
            "a..b",
            "a.",
            ".a",
            "a b",
            "\"a\"x",
            "a\0b",
        ] {
            assert!(bad.parse::<QualifiedName>().is_err(), "{bad:?} should fail");
        }
        assert!(QualifiedName::new("s", "a\0").is_err());
    }

    #[test]
    fn qualified_name_display_quotes_both_parts() {
        let q: QualifiedName = "\"S\".\"t.x\"".parse().unwrap();
        assert_eq!(q.to_string(), "\"S\".\"t.x\"");
        assert_eq!(q.to_string().parse::<QualifiedName>().unwrap(), q);
        assert_eq!(
            "t".parse::<QualifiedName>().unwrap().to_string(),
            "\"public\".\"t\""
        );
    }

    proptest! {
        #[test]
        fn quote_ident_reads_back(s in "\\PC*") {
            prop_assert_eq!(unquote_ident(&quote_ident(&s)), s.clone());
            prop_assert_eq!(unquote_ident(&quote_ident_always(&s)), s);
        }

        #[test]
        fn quote_literal_reads_back(s in "[a-z'\\\\\" é\\n]*") {
            prop_assert_eq!(unquote_literal(&quote_literal(&s)), s);
        }

        #[test]
        fn qualified_name_display_parses_back(schema in "[^\0]{1,12}", name in "[^\0]{1,12}") {
            let q = QualifiedName::new(schema, name).unwrap();
            prop_assert_eq!(q.to_string().parse::<QualifiedName>().unwrap(), q);
        }
    }
}
