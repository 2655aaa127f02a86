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

/// `<prefix>-<32 hex>`, or just the hex.
pub fn generate(prefix: Option<&str>) -> HeaderValue {
    let random = uuid::Uuid::new_v4();
    let mut buf = uuid::Uuid::encode_buffer();
    let hex = random.simple().encode_lower(&mut buf);
    let id = match prefix {
        Some(p) => format!("{p}-{hex}"),
        None => hex.to_string(),
    };
    HeaderValue::try_from(id).expect("generated track ids are visible ASCII")
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
        let longest = "p".repeat(MAX_PREFIX_LEN);
        assert!(is_valid_prefix(&longest));
        assert!(is_valid(generate(Some(&longest)).as_bytes()));
        assert!(!is_valid_prefix(&format!("{longest}p")));
        assert!(!is_valid_prefix("a:b"));
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
