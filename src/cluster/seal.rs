//! Sealing of the shared token: AES-256-GCM under a key derived (HKDF-SHA256) from the
//! tenant's client secret and the tenant key, so that Redis alone never holds a usable token
//! and a value cannot be moved to another tenant's key. The expiry is sealed with it.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Format version, first byte of every sealed value and part of the authenticated data.
const VERSION: u8 = 1;
const SALT: &[u8] = b"zuora-auth-proxy/shared-token/v1";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Another secret, another tenant, an unknown format or a tampered value: all look alike.
    #[error("the shared token cannot be opened with this tenant's secret")]
    Unreadable,
    #[error("the system random generator failed")]
    Random,
}

/// The opened content of a sealed value.
pub(crate) struct Opened {
    pub(crate) access_token: String,
    pub(crate) expires_at: SystemTime,
}

fn key(secret: &str, key_id: &str) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret.as_bytes());
    let info = [key_id.as_bytes()];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .expect("a 32-byte key is within HKDF-SHA256's output limit");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn aad(key_id: &str) -> Vec<u8> {
    let mut aad = vec![VERSION];
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// `version || nonce || AES-256-GCM(expires_at ms as u64 BE || access token)`.
pub(crate) fn seal(
    secret: &str,
    key_id: &str,
    access_token: &str,
    expires_at: SystemTime,
) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Random)?;
    let ms = expires_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let mut body = Vec::with_capacity(8 + access_token.len() + AES_256_GCM.tag_len());
    body.extend_from_slice(&ms.to_be_bytes());
    body.extend_from_slice(access_token.as_bytes());
    key(secret, key_id)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(key_id)), &mut body)
        .map_err(|_| SealError::Unreadable)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn open(secret: &str, key_id: &str, sealed: &[u8]) -> Result<Opened, SealError> {
    let (version, rest) = sealed.split_first().ok_or(SealError::Unreadable)?;
    if *version != VERSION || rest.len() < NONCE_LEN + 8 + AES_256_GCM.tag_len() {
        return Err(SealError::Unreadable);
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unreadable)?;
    let mut body = body.to_vec();
    let plain = key(secret, key_id)
        .open_in_place(nonce, Aad::from(aad(key_id)), &mut body)
        .map_err(|_| SealError::Unreadable)?;
    let (ms, token) = plain.split_at(8);
    let ms = u64::from_be_bytes(ms.try_into().expect("8 bytes"));
    let access_token = String::from_utf8(token.to_vec()).map_err(|_| SealError::Unreadable)?;
    Ok(Opened {
        access_token,
        expires_at: UNIX_EPOCH + Duration::from_millis(ms),
    })
}

/// Identifies one sealed value for compare-and-delete. SHA-1 because that is the digest
/// Redis scripts offer (`redis.sha1hex`); it names a value, it protects nothing.
pub(crate) fn fingerprint(sealed: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, sealed)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let exp = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let sealed = seal("secret", "tenant-a", "tok-VALUE", exp).unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"tok-VALUE"));
        let opened = open("secret", "tenant-a", &sealed).unwrap();
        assert_eq!(opened.access_token, "tok-VALUE");
        assert_eq!(opened.expires_at, exp);
        // Another secret, another tenant, a flipped bit, a truncation: all refused.
        assert!(open("other", "tenant-a", &sealed).is_err());
        assert!(open("secret", "tenant-b", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(open("secret", "tenant-a", &t).is_err(), "bit flip at {i}");
        }
        assert!(open("secret", "tenant-a", &sealed[..sealed.len() - 1]).is_err());
        assert!(open("secret", "tenant-a", &[]).is_err());
        // Two seals of the same token differ (fresh nonce), so do their fingerprints.
        let again = seal("secret", "tenant-a", "tok-VALUE", exp).unwrap();
        assert_ne!(sealed, again);
        assert_ne!(fingerprint(&sealed), fingerprint(&again));
        assert_eq!(fingerprint(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
