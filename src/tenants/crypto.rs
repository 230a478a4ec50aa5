//! Encryption of tenant secrets at rest, compatible with the original server's values.
//!
//! * Legacy scheme (always readable, written unless `DB_ENC_WRITE_GCM`): AES-128 in ECB mode over
//!   the PKCS#7-padded text, keyed by the 16 bytes of `DB_ENC_KEY`, stored as standard base64.
//! * `g1:` scheme (readable when `DB_ENC_KEY_GCM` is set): AES-256-GCM with a random 12-byte
//!   nonce and no associated data, stored as `g1:` + base64(nonce ‖ 16-byte tag ‖ ciphertext).
//!
//! Keys never appear in `Debug` output, logs or errors.

use aes::Aes128;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::config::EncryptionConfig;

const GCM_PREFIX: &str = "g1:";
const BLOCK: usize = 16;
const GCM_NONCE_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

/// Why a value could not be encrypted or decrypted (no key material, no plaintext inside).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The stored value is not valid base64.
    #[error("encrypted value is not valid base64")]
    NotBase64,
    /// The ECB ciphertext is empty or not a whole number of blocks, or its padding is wrong.
    #[error("encrypted value is not a valid AES-128-ECB ciphertext (wrong key or corrupt value)")]
    BadEcbCiphertext,
    /// The value is `g1:`-prefixed but no `DB_ENC_KEY_GCM` is configured.
    #[error("value is AES-256-GCM encrypted but DB_ENC_KEY_GCM is not set")]
    MissingGcmKey,
    /// GCM authentication failed (wrong key or tampered value), or the value is too short.
    #[error("AES-256-GCM decryption failed: ciphertext or authentication tag is invalid")]
    BadGcmCiphertext,
    /// The decrypted bytes are not UTF-8 text.
    #[error("decrypted value is not UTF-8 text")]
    NotUtf8,
    /// GCM encryption failed (only on absurd input sizes).
    #[error("AES-256-GCM encryption failed")]
    GcmEncrypt,
}

/// Encrypts and decrypts tenant secrets with the configured keys.
#[derive(Clone)]
pub struct Cipher {
    ecb: Aes128,
    gcm: Option<Aes256Gcm>,
    write_gcm: bool,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("ecb_key", &"<redacted>")
            .field("gcm_key", &self.gcm.as_ref().map(|_| "<redacted>"))
            .field("write_gcm", &self.write_gcm)
            .finish()
    }
}

impl Cipher {
    /// Builds the cipher from `DB_ENC_KEY` (16 bytes) and the optional `DB_ENC_KEY_GCM` (32 bytes).
    ///
    /// # Errors
    /// When a key has the wrong length (the config loader already refuses that).
    pub fn new(config: &EncryptionConfig) -> Result<Cipher, InvalidKeyLength> {
        let ecb = Aes128::new_from_slice(config.key.expose().as_bytes())
            .map_err(|_| InvalidKeyLength("DB_ENC_KEY"))?;
        let gcm = match &config.key_gcm {
            Some(key) => Some(
                Aes256Gcm::new_from_slice(key.expose().as_bytes())
                    .map_err(|_| InvalidKeyLength("DB_ENC_KEY_GCM"))?,
            ),
            None => None,
        };
        Ok(Cipher {
            ecb,
            write_gcm: config.write_gcm && gcm.is_some(),
            gcm,
        })
    }

    /// Encrypts `text` with the write scheme (GCM when `DB_ENC_WRITE_GCM`, else ECB).
    ///
    /// # Errors
    /// [`CryptoError::GcmEncrypt`] only.
    pub fn encrypt(&self, text: &str) -> Result<String, CryptoError> {
        match (&self.gcm, self.write_gcm) {
            (Some(gcm), true) => encrypt_gcm(gcm, text.as_bytes()),
            _ => Ok(encrypt_ecb(&self.ecb, text.as_bytes())),
        }
    }

    /// Decrypts a stored value of either scheme, chosen by the `g1:` prefix.
    ///
    /// # Errors
    /// Any [`CryptoError`] but `GcmEncrypt`.
    pub fn decrypt(&self, stored: &str) -> Result<String, CryptoError> {
        let bytes = match stored.strip_prefix(GCM_PREFIX) {
            Some(encoded) => {
                let gcm = self.gcm.as_ref().ok_or(CryptoError::MissingGcmKey)?;
                decrypt_gcm(gcm, encoded)?
            }
            None => decrypt_ecb(&self.ecb, stored)?,
        };
        String::from_utf8(bytes).map_err(|_| CryptoError::NotUtf8)
    }
}

/// A configured key does not have the length its cipher needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} has the wrong length for its cipher")]
pub struct InvalidKeyLength(pub &'static str);

fn encrypt_ecb(cipher: &Aes128, plain: &[u8]) -> String {
    let pad = BLOCK - plain.len() % BLOCK;
    let mut data = Vec::with_capacity(plain.len() + pad);
    data.extend_from_slice(plain);
    data.resize(plain.len() + pad, pad as u8);
    for block in data.chunks_exact_mut(BLOCK) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    BASE64.encode(data)
}

fn decrypt_ecb(cipher: &Aes128, encoded: &str) -> Result<Vec<u8>, CryptoError> {
    let mut data = BASE64
        .decode(encoded.trim())
        .map_err(|_| CryptoError::NotBase64)?;
    if data.is_empty() || data.len() % BLOCK != 0 {
        return Err(CryptoError::BadEcbCiphertext);
    }
    for block in data.chunks_exact_mut(BLOCK) {
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
    }
    let pad = usize::from(data[data.len() - 1]);
    if pad == 0
        || pad > BLOCK
        || data[data.len() - pad..]
            .iter()
            .any(|&b| usize::from(b) != pad)
    {
        return Err(CryptoError::BadEcbCiphertext);
    }
    data.truncate(data.len() - pad);
    Ok(data)
}

fn encrypt_gcm(cipher: &Aes256Gcm, plain: &[u8]) -> Result<String, CryptoError> {
    let nonce: [u8; GCM_NONCE_LEN] = rand::random();
    // aes-gcm returns ciphertext ‖ tag; the stored layout is nonce ‖ tag ‖ ciphertext.
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), plain)
        .map_err(|_| CryptoError::GcmEncrypt)?;
    let (ciphertext, tag) = sealed.split_at(sealed.len() - GCM_TAG_LEN);
    let mut out = Vec::with_capacity(GCM_NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(tag);
    out.extend_from_slice(ciphertext);
    Ok(format!("{GCM_PREFIX}{}", BASE64.encode(out)))
}

fn decrypt_gcm(cipher: &Aes256Gcm, encoded: &str) -> Result<Vec<u8>, CryptoError> {
    let data = BASE64
        .decode(encoded.trim())
        .map_err(|_| CryptoError::NotBase64)?;
    if data.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
        return Err(CryptoError::BadGcmCiphertext);
    }
    let (nonce, rest) = data.split_at(GCM_NONCE_LEN);
    let (tag, ciphertext) = rest.split_at(GCM_TAG_LEN);
    let mut sealed = Vec::with_capacity(rest.len());
    sealed.extend_from_slice(ciphertext);
    sealed.extend_from_slice(tag);
    cipher
        .decrypt(Nonce::from_slice(nonce), sealed.as_slice())
        .map_err(|_| CryptoError::BadGcmCiphertext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const KEY: &str = "supabaserealtime";
    const GCM_KEY: &str = "0123456789abcdef0123456789abcdef";

    fn cipher(gcm: bool, write_gcm: bool) -> Cipher {
        Cipher::new(&EncryptionConfig {
            key: Secret::new(KEY),
            key_gcm: gcm.then(|| Secret::new(GCM_KEY)),
            write_gcm,
        })
        .unwrap()
    }

    /// Vectors made independently with
    /// `printf %s "$TEXT" | openssl enc -aes-128-ecb -K 73757061626173657265616c74696d65 -base64`.
    #[test]
    fn ecb_matches_openssl_vectors() {
        let c = cipher(false, false);
        for (plain, stored) in [
            ("postgres", "sWBpZNdjggEPTQVlI52Zfw=="),
            (
                "0123456789abcdef",
                "Dn4v4e42WVzuTKysqJO50k82uuGZrojyd3by3+a2jj8=",
            ),
            ("", "Tza64ZmuiPJ3dvLf5raOPw=="),
        ] {
            assert_eq!(c.encrypt(plain).unwrap(), stored, "{plain:?}");
            assert_eq!(c.decrypt(stored).unwrap(), plain);
        }
    }

    #[test]
    fn round_trips_both_schemes() {
        let text = "super-secret-jwt-token-with-at-least-32-characters-long ✓";
        let ecb = cipher(false, false);
        assert_eq!(ecb.decrypt(&ecb.encrypt(text).unwrap()).unwrap(), text);
        let gcm = cipher(true, true);
        let stored = gcm.encrypt(text).unwrap();
        assert!(stored.starts_with("g1:"));
        assert_ne!(stored, gcm.encrypt(text).unwrap(), "nonce must be random");
        assert_eq!(gcm.decrypt(&stored).unwrap(), text);
        // A GCM-capable cipher still reads legacy values.
        assert_eq!(gcm.decrypt(&ecb.encrypt(text).unwrap()).unwrap(), text);
    }

    #[test]
    fn gcm_layout_is_nonce_tag_ciphertext() {
        let gcm = cipher(true, true);
        let stored = gcm.encrypt("abc").unwrap();
        let raw = BASE64.decode(&stored[3..]).unwrap();
        assert_eq!(raw.len(), GCM_NONCE_LEN + GCM_TAG_LEN + 3);
        // Decrypt by hand with the documented layout.
        let aead = Aes256Gcm::new_from_slice(GCM_KEY.as_bytes()).unwrap();
        let mut sealed = raw[28..].to_vec();
        sealed.extend_from_slice(&raw[12..28]);
        let plain = aead
            .decrypt(Nonce::from_slice(&raw[..12]), sealed.as_slice())
            .unwrap();
        assert_eq!(plain, b"abc");
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        let c = cipher(false, false);
        assert_eq!(c.decrypt("not base64!"), Err(CryptoError::NotBase64));
        assert_eq!(c.decrypt(""), Err(CryptoError::BadEcbCiphertext));
        assert_eq!(c.decrypt("AAAA"), Err(CryptoError::BadEcbCiphertext));
        assert_eq!(c.decrypt("g1:AAAA"), Err(CryptoError::MissingGcmKey));
        let g = cipher(true, false);
        assert_eq!(g.decrypt("g1:AAAA"), Err(CryptoError::BadGcmCiphertext));
        let mut tampered = cipher(true, true).encrypt("x").unwrap();
        tampered.replace_range(5..6, if &tampered[5..6] == "A" { "B" } else { "A" });
        assert_eq!(g.decrypt(&tampered), Err(CryptoError::BadGcmCiphertext));
        // Write scheme is ECB unless asked for GCM.
        assert!(!g.encrypt("x").unwrap().starts_with("g1:"));
    }

    #[test]
    fn debug_hides_keys() {
        let printed = format!("{:?}", cipher(true, true));
        assert!(!printed.contains(KEY));
        assert!(!printed.contains(GCM_KEY));
    }
}
