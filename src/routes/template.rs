//! Path templates of the allowlist: literal segments and `{name}` / `{name:uuid}`
//! placeholders. Matching is segment by segment on the raw (still percent-encoded) path, with
//! no normalisation, so `..`, `//` and trailing slashes never sneak past a literal.

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param { name: String, kind: ParamKind },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Any single segment that is not a dot segment and hides no slash.
    Any,
    /// A hyphenated UUID, 36 characters.
    Uuid,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    source: String,
}

/// Outcome of matching one path against one template.
#[derive(Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The shape differs: another route may match.
    No,
    /// Every segment matches.
    Yes,
    /// The shape matches but a placeholder's value is refused.
    BadParam { name: String, reason: &'static str },
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PathTemplate {
    /// Parses a template such as `/bulk-data/bulk-jobs/{id:uuid}/aborts`.
    pub fn parse(source: &str) -> Result<PathTemplate, String> {
        let rest = source
            .strip_prefix('/')
            .ok_or_else(|| "must start with '/'".to_string())?;
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for raw in rest.split('/') {
            if raw.is_empty() {
                return Err("empty segment ('//' or trailing '/')".into());
            }
            if let Some(inner) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                let (name, kind) = match inner.split_once(':') {
                    None => (inner, ParamKind::Any),
                    Some((name, "uuid")) => (name, ParamKind::Uuid),
                    Some((_, other)) => return Err(format!("unknown placeholder type '{other}' (known: uuid)")),
                };
                let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid_name {
                    return Err(format!("bad placeholder name '{name}'"));
                }
                if names.contains(&name) {
                    return Err(format!("placeholder '{name}' appears twice"));
                }
                names.push(name);
                segments.push(Segment::Param {
                    name: name.to_string(),
                    kind,
                });
            } else {
                if raw == "." || raw == ".." {
                    return Err("dot segments are not allowed".into());
                }
                if !raw.bytes().all(is_literal_byte) {
                    return Err(format!("segment '{raw}' has characters not allowed in a literal"));
                }
                segments.push(Segment::Literal(raw.to_string()));
            }
        }
        Ok(PathTemplate {
            segments,
            source: source.to_string(),
        })
    }

    /// Matches a request's raw path (no query).
    pub fn matches(&self, path: &str) -> PathMatch {
        let Some(rest) = path.strip_prefix('/') else {
            return PathMatch::No;
        };
        let mut parts = segments(rest);
        let mut bad = None;
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return PathMatch::No;
            };
            match segment {
                Segment::Literal(lit) => {
                    if lit != part {
                        return PathMatch::No;
                    }
                }
                Segment::Param { name, kind } => {
                    if let Err(reason) = check_param(part, *kind) {
                        bad.get_or_insert(PathMatch::BadParam {
                            name: name.clone(),
                            reason,
                        });
                    }
                }
            }
        }
        if parts.next().is_some() {
            return PathMatch::No;
        }
        bad.unwrap_or(PathMatch::Yes)
    }
}

/// The segments of `path` between its slashes, as `path.split('/')` has them, each slash
/// found by `memchr` (a request's path is split on every request).
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b'/', current.as_bytes()) {
            Some(slash) => {
                rest = Some(&current[slash + 1..]);
                Some(&current[..slash])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// RFC 3986 pchar minus `%` (literals are written decoded) and minus `{}`.
fn is_literal_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// A UUID in its 36-character hyphenated form (what Zuora's ids look like), the one check
/// that `{name:uuid}` placeholders and configured entity ids share.
pub fn is_hyphenated_uuid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

/// Checks one placeholder value; the reason is safe to show to the caller.
fn check_param(raw: &str, kind: ParamKind) -> Result<(), &'static str> {
    if raw.is_empty() {
        return Err("is empty");
    }
    // Most values have no escape at all: checked where they lie.
    let decoded = match raw.contains('%') {
        false => Cow::Borrowed(raw.as_bytes()),
        true => Cow::Owned(percent_decode(raw).ok_or("has a malformed percent-encoding")?),
    };
    if *decoded == *b"." || *decoded == *b".." {
        return Err("is a dot segment");
    }
    if decoded.iter().any(|&b| b == b'/' || b == b'\\') {
        return Err("contains an encoded slash");
    }
    if decoded.iter().any(|b| b.is_ascii_control()) {
        return Err("contains a control character");
    }
    match kind {
        ParamKind::Any => Ok(()),
        ParamKind::Uuid => {
            if is_hyphenated_uuid(raw) {
                Ok(())
            } else {
                Err("is not a UUID")
            }
        }
    }
}

fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ABORT: &str = "/bulk-data/bulk-jobs/{id:uuid}/aborts";
    const JOB: &str = "3a3e85c4-96e7-486b-ae02-827120104301";

    fn abort() -> PathTemplate {
        PathTemplate::parse(ABORT).unwrap()
    }

    #[test]
    fn segments_are_those_of_a_split_on_slashes() {
        for path in [
            "",
            "a",
            "a/b",
            "/a",
            "a/",
            "//",
            "bulk-data//bulk-jobs/x/aborts/",
            "é/ü/",
        ] {
            assert_eq!(
                segments(path).collect::<Vec<_>>(),
                path.split('/').collect::<Vec<_>>(),
                "{path:?}"
            );
        }
    }

    #[test]
    fn matches_the_abort_path() {
        assert_eq!(
            abort().matches(&format!("/bulk-data/bulk-jobs/{JOB}/aborts")),
            PathMatch::Yes
        );
        let upper = JOB.to_uppercase();
        assert_eq!(
            abort().matches(&format!("/bulk-data/bulk-jobs/{upper}/aborts")),
            PathMatch::Yes
        );
    }

    #[test]
    fn shape_mismatches_are_not_matches() {
        for path in [
            "",
            "bulk-data/bulk-jobs/x/aborts",
            "/bulk-data/bulk-jobs/aborts",
            &format!("/bulk-data/bulk-jobs/{JOB}/aborts/"),
            &format!("/bulk-data//bulk-jobs/{JOB}/aborts"),
            &format!("/bulk-data/bulk-jobs/{JOB}/cancellations"),
            &format!("/bulk-data/x/../bulk-jobs/{JOB}/aborts"),
            &format!("/Bulk-Data/bulk-jobs/{JOB}/aborts"),
            &format!("/bulk-data/bulk-jobs/{JOB}/x/aborts"),
        ] {
            assert_eq!(abort().matches(path), PathMatch::No, "{path}");
        }
    }

    #[test]
    fn refused_values_name_the_placeholder() {
        let cases = [
            ("not-a-uuid", "is not a UUID"),
            ("3a3e85c496e7486bae02827120104301", "is not a UUID"),
            ("..", "is a dot segment"),
            ("%2e%2E", "is a dot segment"),
            (".", "is a dot segment"),
            ("a%2Fb", "contains an encoded slash"),
            ("a%2fb", "contains an encoded slash"),
            ("a%5Cb", "contains an encoded slash"),
            ("%zz", "has a malformed percent-encoding"),
            ("%0a", "contains a control character"),
        ];
        for (value, reason) in cases {
            let got = abort().matches(&format!("/bulk-data/bulk-jobs/{value}/aborts"));
            assert_eq!(
                got,
                PathMatch::BadParam {
                    name: "id".into(),
                    reason
                },
                "{value}"
            );
        }
    }

    #[test]
    fn untyped_placeholders_take_any_plain_segment() {
        let t = PathTemplate::parse("/v1/accounts/{key}").unwrap();
        assert_eq!(t.matches("/v1/accounts/A00000001"), PathMatch::Yes);
        assert_eq!(t.matches("/v1/accounts/a%20b"), PathMatch::Yes);
        assert!(matches!(t.matches("/v1/accounts/.."), PathMatch::BadParam { .. }));
        assert!(matches!(t.matches("/v1/accounts/"), PathMatch::BadParam { .. }));
    }

    #[test]
    fn bad_templates_are_explained() {
        for (template, fragment) in [
            ("bulk", "must start with '/'"),
            ("/a//b", "empty segment"),
            ("/a/", "empty segment"),
            ("/a/{id:int}", "unknown placeholder type"),
            ("/a/{1x}", "bad placeholder name"),
            ("/a/{id}/{id}", "appears twice"),
            ("/a/../b", "dot segments"),
            ("/a/b%2F", "not allowed in a literal"),
            ("/a/x{id}", "not allowed in a literal"),
        ] {
            let err = PathTemplate::parse(template).unwrap_err();
            assert!(err.contains(fragment), "{template}: {err}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_path(path in "\\PC*") {
            let _ = abort().matches(&path);
        }

        #[test]
        fn whatever_matches_has_the_template_shape(path in "/[-a-zA-Z0-9/._%]{0,80}") {
            if abort().matches(&path) == PathMatch::Yes {
                let parts: Vec<&str> = path.split('/').collect();
                prop_assert_eq!(parts.len(), 5);
                prop_assert_eq!(parts[1], "bulk-data");
                prop_assert_eq!(parts[2], "bulk-jobs");
                prop_assert!(uuid::Uuid::try_parse(parts[3]).is_ok());
                prop_assert_eq!(parts[4], "aborts");
            }
        }

        #[test]
        fn a_uuid_with_any_prefix_or_suffix_never_matches(
            id in proptest::arbitrary::any::<u128>(),
            junk in "[-a-zA-Z0-9._%/]{1,10}",
            before in proptest::bool::ANY,
        ) {
            let id = uuid::Uuid::from_u128(id).hyphenated().to_string();
            let value = if before { format!("{junk}{id}") } else { format!("{id}{junk}") };
            let path = format!("/bulk-data/bulk-jobs/{value}/aborts");
            prop_assert_ne!(abort().matches(&path), PathMatch::Yes);
        }
    }
}
