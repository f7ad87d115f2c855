//! The cryptography of secrets: the cluster's secrets key, AEAD sealing (AES-256-GCM, ring), and the unlock key
//! that autolock derives a key-encryption key from (HKDF-SHA256).
//!
//! Nothing here prints a key or a plaintext: `Debug` of every key type is redacted, and errors say what failed,
//! never with what.

use ring::aead;
use ring::rand::SecureRandom as _;
use serde::Deserialize;
use serde::Serialize;
use swarm_specs::spec::base64_bytes;

/// Length of every symmetric key here (AES-256).
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// Text an unlock key starts with, as Docker's `SWMKEY-1-`.
pub const UNLOCK_KEY_PREFIX: &str = "SWMKEY-1-";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Decryption failed: wrong key, or the data was changed.
    #[error("cannot decrypt {0}: wrong key, or the data was altered")]
    Open(String),
    #[error("{0} is not valid base64")]
    Base64(String),
    #[error("the system random number generator failed")]
    Random,
    #[error(
        "invalid unlock key: expected {UNLOCK_KEY_PREFIX} followed by 43 base64 characters, as `swarm unlock-key` \
         printed it"
    )]
    UnlockKeyFormat,
}

/// A 256-bit symmetric key (the cluster's secrets key, or a key-encryption key). Zeroed when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile, so the compiler cannot drop the wipe of a value that is about to die.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl Key {
    pub fn generate() -> Result<Key, CryptoError> {
        let mut bytes = [0u8; KEY_LEN];
        random(&mut bytes)?;
        Ok(Key(bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        <[u8; KEY_LEN]>::try_from(bytes).ok().map(Key)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn aead(&self) -> aead::LessSafeKey {
        // AES_256_GCM takes exactly KEY_LEN bytes, so this cannot fail.
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &self.0).unwrap_or_else(|_| unreachable!());
        aead::LessSafeKey::new(unbound)
    }

    /// Encrypts `plaintext`, bound to `context` (authenticated, not secret): a ciphertext opens only with the same
    /// context, so one stored under another name does not decrypt.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Sealed, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce)?;
        let mut data = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| CryptoError::Random)?;
        Ok(Sealed {
            nonce: base64_bytes::encode(&nonce),
            ciphertext: base64_bytes::encode(&data),
        })
    }

    /// Decrypts what [`Key::seal`] made with the same key and context.
    pub fn open(&self, context: &str, sealed: &Sealed) -> Result<Vec<u8>, CryptoError> {
        let nonce = base64_bytes::decode(&sealed.nonce).ok_or_else(|| CryptoError::Base64("the nonce".into()))?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Open(context.to_string()))?;
        let mut data =
            base64_bytes::decode(&sealed.ciphertext).ok_or_else(|| CryptoError::Base64("the ciphertext".into()))?;
        let plain = self
            .aead()
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| CryptoError::Open(context.to_string()))?;
        let len = plain.len();
        data.truncate(len);
        Ok(data)
    }
}

/// A ciphertext with its nonce, both base64: what the store and the key files hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: String,
    /// AES-256-GCM ciphertext followed by its 16-byte tag.
    pub ciphertext: String,
}

/// An autolock unlock key: 32 random bytes, shown to the operator as `SWMKEY-1-<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey(Key);

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(<redacted>)")
    }
}

impl UnlockKey {
    pub fn generate() -> Result<UnlockKey, CryptoError> {
        Key::generate().map(UnlockKey)
    }

    /// Parses the text `swarm unlock-key` prints (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<UnlockKey, CryptoError> {
        let body = text
            .trim()
            .strip_prefix(UNLOCK_KEY_PREFIX)
            .ok_or(CryptoError::UnlockKeyFormat)?;
        if body.is_empty()
            || !body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err(CryptoError::UnlockKeyFormat);
        }
        let bytes = base64_bytes::decode(body).ok_or(CryptoError::UnlockKeyFormat)?;
        Key::from_bytes(&bytes)
            .map(UnlockKey)
            .ok_or(CryptoError::UnlockKeyFormat)
    }

    /// The text to show once, when autolock is enabled or the key rotated.
    pub fn reveal(&self) -> String {
        format!(
            "{UNLOCK_KEY_PREFIX}{}",
            base64_bytes::encode(self.0.as_bytes()).trim_end_matches('=')
        )
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<UnlockKey> {
        Key::from_bytes(bytes).map(UnlockKey)
    }

    /// The key-encryption key this unlock key gives with `salt` (HKDF-SHA256). The unlock key is random, not a
    /// password, so no stretching is needed.
    pub fn kek(&self, salt: &[u8]) -> Key {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(self.0.as_bytes());
        let mut out = [0u8; KEY_LEN];
        // HKDF_SHA256 yields KEY_LEN bytes: expand and fill cannot fail for that length.
        let info = [b"swarm secrets key-encryption key".as_slice()];
        if let Ok(okm) = prk.expand(&info, ring::hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut out);
        }
        let key = Key(out);
        out.fill(0);
        key
    }
}

pub fn random(out: &mut [u8]) -> Result<(), CryptoError> {
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| CryptoError::Random)
}

/// SHA-256 of `data`, hex: the digest secret and config specs carry.
pub fn digest_hex(data: &[u8]) -> String {
    swarm_specs::normalize::digest(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_with_its_key_and_context_only() {
        let key = Key::generate().unwrap();
        let sealed = key.seal("secret:db", b"hunter2").unwrap();
        assert!(!sealed.ciphertext.contains("hunter2"));
        assert_ne!(base64_bytes::decode(&sealed.ciphertext).unwrap(), b"hunter2");
        assert_eq!(key.open("secret:db", &sealed).unwrap(), b"hunter2");
        // Another name, another key, or a flipped bit: refused.
        assert!(key.open("secret:other", &sealed).is_err());
        assert!(Key::generate().unwrap().open("secret:db", &sealed).is_err());
        let mut bytes = base64_bytes::decode(&sealed.ciphertext).unwrap();
        bytes[0] ^= 1;
        let altered = Sealed {
            nonce: sealed.nonce.clone(),
            ciphertext: base64_bytes::encode(&bytes),
        };
        assert_eq!(
            key.open("secret:db", &altered),
            Err(CryptoError::Open("secret:db".into()))
        );
        // Two seals of one plaintext differ (fresh nonces).
        assert_ne!(key.seal("secret:db", b"hunter2").unwrap(), sealed);
    }

    #[test]
    fn an_empty_plaintext_round_trips() {
        let key = Key::generate().unwrap();
        let sealed = key.seal("x", b"").unwrap();
        assert_eq!(key.open("x", &sealed).unwrap(), b"");
    }

    #[test]
    fn unlock_keys_print_and_parse_and_derive_the_same_kek() {
        let unlock = UnlockKey::generate().unwrap();
        let text = unlock.reveal();
        assert!(text.starts_with("SWMKEY-1-") && !text.ends_with('='), "{text}");
        let parsed = UnlockKey::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(parsed, unlock);
        assert_eq!(parsed.kek(b"salt"), unlock.kek(b"salt"));
        assert_ne!(unlock.kek(b"salt"), unlock.kek(b"pepper"));
        for bad in [
            "",
            "SWMKEY-1-",
            "SWMKEY-1-abc",
            "SWMKEY-2-AAAA",
            "SWMKEY-1-!!!!",
            &text[..text.len() - 1],
        ] {
            assert_eq!(UnlockKey::parse(bad), Err(CryptoError::UnlockKeyFormat), "{bad:?}");
        }
    }

    #[test]
    fn keys_never_print() {
        let key = Key::from_bytes(&[7u8; KEY_LEN]).unwrap();
        assert_eq!(format!("{key:?}"), "Key(<redacted>)");
        let unlock = UnlockKey::from_bytes(&[7u8; KEY_LEN]).unwrap();
        assert!(!format!("{unlock:?}").contains("Bw"));
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(
            digest_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
