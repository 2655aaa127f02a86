//! `Zuora-Track-Id`: checking a caller's value against Zuora's rules and generating one
//! when the caller sent none.

use http::HeaderValue;

/// Zuora's limit on the header's length.
pub const MAX_LEN: usize = 64;
/// Length of a generated id's random part (a v4 UUID as 32 hex digits).
const RANDOM_LEN: usize = 32;
/// Longest prefix that still leaves room for `-` and the random part.
pub const MAX_PREFIX_LEN: usize = MAX_LEN - RANDOM_LEN - 1;

/// Zuora's rules: at most 64 characters, US-ASCII, none of `:` `;` `"` `'`. Control
/// characters and spaces are refused too: a track id is something people grep for.
pub fn is_valid(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_LEN && value.iter().all(|&b| b.is_ascii_graphic() && !b":;\"'".contains(&b))
}

/// A prefix is valid when a generated id with it is.
pub fn is_valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_PREFIX_LEN && is_valid(prefix.as_bytes())
}

/// `<prefix>-<32 hex>`, or just the hex: the hex is a v4 UUID (122 random bits, version and
/// variant set), so tools that parse UUIDs accept it. A track id must be unique, not
/// unguessable, so a fast thread-local generator serves (no syscall per request).
pub fn generate(prefix: Option<&str>) -> HeaderValue {
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut hex = [0u8; RANDOM_LEN];
    uuid.simple().encode_lower(&mut hex);
    with_hex(prefix, &hex)
}

/// `<prefix>-<hex>`, or just the hex: for a track id that is another id of the request (its
/// trace id, 32 lower-case hex digits), so that one id finds it everywhere.
pub fn with_hex(prefix: Option<&str>, hex: &[u8; RANDOM_LEN]) -> HeaderValue {
    let mut buf = [0u8; MAX_LEN];
    let mut len = 0;
    if let Some(p) = prefix {
        buf[..p.len()].copy_from_slice(p.as_bytes());
        buf[p.len()] = b'-';
        len = p.len() + 1;
    }
    buf[len..len + RANDOM_LEN].copy_from_slice(hex);
    HeaderValue::from_bytes(&buf[..len + RANDOM_LEN]).expect("track ids are visible ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validity_table() {
        let long = "a".repeat(MAX_LEN);
        let too_long = "a".repeat(MAX_LEN + 1);
        let cases: &[(&[u8], bool)] = &[
            (b"keep-me-123", true),
            (b"A_b.c/d~e!f", true),
            (long.as_bytes(), true),
            (too_long.as_bytes(), false),
            (b"", false),
            (b"a:b", false),
            (b"a;b", false),
            (b"a\"b", false),
            (b"a'b", false),
            (b"a b", false),
            (b"a\tb", false),
            ("caf\u{e9}".as_bytes(), false),
        ];
        for (value, ok) in cases {
            assert_eq!(is_valid(value), *ok, "{:?}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = generate(Some("acme"));
        let b = generate(Some("acme"));
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert!(s.starts_with("acme-") && s.len() == 5 + RANDOM_LEN, "{s}");
        assert!(is_valid(a.as_bytes()));
        let bare = generate(None);
        assert_eq!(bare.len(), RANDOM_LEN);
        assert!(bare
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let many: std::collections::HashSet<HeaderValue> = (0..10_000).map(|_| generate(None)).collect();
        assert_eq!(many.len(), 10_000);
        let longest = "p".repeat(MAX_PREFIX_LEN);
        assert!(is_valid_prefix(&longest));
        assert!(is_valid(generate(Some(&longest)).as_bytes()));
        assert!(!is_valid_prefix(&format!("{longest}p")));
        assert!(!is_valid_prefix("a:b"));
    }

    #[test]
    fn an_id_from_hex_fits_zuoras_limit_with_the_longest_prefix() {
        let hex = *b"0af7651916cd43dd8448eb211c80319c";
        assert_eq!(with_hex(None, &hex), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(with_hex(Some("acme"), &hex), "acme-0af7651916cd43dd8448eb211c80319c");
        let longest = with_hex(Some(&"p".repeat(MAX_PREFIX_LEN)), &hex);
        assert_eq!(longest.len(), MAX_LEN);
        assert!(is_valid(longest.as_bytes()));
    }

    #[test]
    fn generated_ids_are_v4_uuids() {
        let mut first_digits = std::collections::HashSet::new();
        for i in 0..10_000 {
            let prefix = (i % 2 == 0).then_some("acme");
            let id = generate(prefix);
            let hex = &id.as_bytes()[prefix.map_or(0, |p| p.len() + 1)..];
            assert_eq!(hex.len(), RANDOM_LEN);
            // 13th digit: the version nibble; 17th: the variant bits `10`.
            assert_eq!(hex[12], b'4', "{id:?}");
            assert!(b"89ab".contains(&hex[16]), "{id:?}");
            let parsed = uuid::Uuid::try_parse_ascii(hex).expect("a UUID in simple form");
            assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            first_digits.insert(hex[0]);
        }
        // The other digits stay random.
        assert_eq!(first_digits.len(), 16);
    }

    proptest! {
        #[test]
        fn valid_means_zuoras_rules(value in proptest::collection::vec(any::<u8>(), 0..80)) {
            if is_valid(&value) {
                prop_assert!(value.len() <= MAX_LEN && !value.is_empty());
                prop_assert!(value.iter().all(|b| b.is_ascii() && !b":;\"'".contains(b)));
                prop_assert!(HeaderValue::from_bytes(&value).is_ok());
            }
        }
    }
}
