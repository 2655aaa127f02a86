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

/// `<prefix>-<32 hex>`, or just the hex: 128 random bits, like a v4 UUID's 122. A track
/// id must be unique, not unguessable, so a fast thread-local generator serves (no syscall
/// per request).
pub fn generate(prefix: Option<&str>) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; MAX_LEN];
    let mut len = 0;
    if let Some(p) = prefix {
        buf[..p.len()].copy_from_slice(p.as_bytes());
        buf[p.len()] = b'-';
        len = p.len() + 1;
    }
    let random = fastrand::u128(..);
    for i in 0..RANDOM_LEN {
        buf[len + i] = HEX[((random >> (4 * (RANDOM_LEN - 1 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf[..len + RANDOM_LEN]).expect("generated track ids are visible ASCII")
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
