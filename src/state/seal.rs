//! Secrets in the state, sealed at rest.
//!
//! Some observed attributes are secrets ([`sensitive`]: a session's `chap_secret`). When a
//! state key is [`configured`], they are stored sealed instead of in clear:
//!
//! ```json
//! {"sealed": "aes-256-gcm", "key": "<key id>", "nonce": "<base64>", "data": "<base64>"}
//! ```
//!
//! `data` is the AES-256-GCM ciphertext with its 16-byte tag appended, `nonce` a random
//! 96-bit nonce, `key` the [`Key::id`] of the key it was sealed with (so a wrong or missing
//! key is told apart from tampering). The associated data binds the cluster, the record's
//! address and the attribute's name, so a sealed value opens only where it was written.
//! In memory, values are always clear: sealing happens on the way to storage
//! ([`sealed_copy`]), opening on the way back ([`open_all`]).
//!
//! Threat model: this protects the secrets from whoever can read the state (state file and
//! its `.backup`, database rows, copies in backups or CI artifacts) but not the key. It does
//! not protect the other attributes, nor the state's integrity as a whole: whoever can write
//! the state can delete records or put back an older sealed value of the same attribute of
//! the same record. Nor does it protect against whoever holds the key or runs vmthunder as
//! its user.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::resource::{Addr, Kind};

/// The environment variable holding the base64 state key.
pub const KEY_VAR: &str = "VMTHUNDER_STATE_KEY";
/// The algorithm named in the `sealed` member of a sealed value.
const ALGORITHM: &str = "aes-256-gcm";
const MAKE_ONE: &str = "make one with `head -c 32 /dev/urandom | base64`";

/// Standard alphabet; writes padding, reads with or without it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A 256-bit state key.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; 32],
    id: String,
    cipher: Aes256Gcm,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("failed to read key file `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file `{path}` is not a regular file")]
    NotRegular { path: String },
    #[error("key file `{path}` is open to group or others (mode {mode:03o}): chmod 600 {path}")]
    Exposed { path: String, mode: u32 },
    #[error("{origin} does not hold a base64 key ({reason}): {MAKE_ONE}")]
    Base64 { origin: String, reason: String },
    #[error("{origin} holds {len} bytes after base64 decoding, a key is 32 ({MAKE_ONE})")]
    Length { origin: String, len: usize },
}

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the state holds secrets sealed with key {key_id}, and no key is configured: set {KEY_VAR} or state.key_file (or --state-key-file) to that key")]
    MissingKey { key_id: String },
    #[error("the state holds secrets sealed with key {sealed_with}, but the configured key is {configured}: configure the key it was sealed with (after `vmthunder state rekey`, the new one)")]
    WrongKey {
        sealed_with: String,
        configured: String,
    },
    #[error("a sealed value failed authentication: its bytes were changed, or it was copied from another record or cluster")]
    Tampered,
    #[error("malformed sealed value: {reason}")]
    Malformed { reason: String },
    /// What went wrong with the attribute `attr` of the record at `addr` ([`open_all`]).
    #[error("cannot open the sealed `{attr}` of {addr}")]
    At {
        addr: String,
        attr: String,
        #[source]
        source: Box<SealError>,
    },
}

impl Key {
    fn from_bytes(bytes: [u8; 32]) -> Key {
        let digest = Sha256::new()
            .chain_update(b"vmthunder state key v1\0")
            .chain_update(bytes)
            .finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let cipher = Aes256Gcm::new(&bytes.into());
        Key { bytes, id, cipher }
    }

    /// Parses a key file's or variable's text: the base64 (standard alphabet, padding
    /// optional) of exactly 32 bytes, surrounding whitespace ignored. `origin` names where it
    /// came from, for errors ("key file `/x`", "VMTHUNDER_STATE_KEY").
    pub fn parse(text: &str, origin: &str) -> Result<Key, KeyError> {
        let raw = B64.decode(text.trim()).map_err(|e| KeyError::Base64 {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| KeyError::Length {
            origin: origin.to_string(),
            len: raw.len(),
        })?;
        Ok(Key::from_bytes(bytes))
    }

    /// A fresh random key, from the OS random source.
    pub fn generate() -> Key {
        Key::from_bytes(aes_gcm::Key::<Aes256Gcm>::generate().into())
    }

    /// The key as it is written to a key file (base64, no newline).
    pub fn encoded(&self) -> String {
        B64.encode(self.bytes)
    }

    /// A short public fingerprint naming the key in sealed values and messages: the first 8
    /// bytes of SHA-256("vmthunder state key v1\0" || key) as 16 lowercase hex digits.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The configured key: the file `file` when given (a path from the spec or
/// --state-key-file), else the environment variable VMTHUNDER_STATE_KEY (its value is the
/// base64 key), else None. A file must be a regular file, not readable by group or others
/// (mode & 0o077 == 0). Errors name the file or variable.
pub fn configured(file: Option<&Path>) -> Result<Option<Key>, KeyError> {
    let Some(path) = file else {
        return match std::env::var(KEY_VAR) {
            Ok(text) => Key::parse(&text, KEY_VAR).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(KeyError::Base64 {
                origin: KEY_VAR.to_string(),
                reason: e.to_string(),
            }),
        };
    };
    let shown = path.display().to_string();
    let read = |source| KeyError::Read {
        path: shown.clone(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(read)?;
    let meta = f.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(KeyError::NotRegular { path: shown });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed { path: shown, mode });
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(read)?;
    Key::parse(&text, &format!("key file `{shown}`")).map(Some)
}

/// The observed attributes of `kind` that are secrets.
pub fn sensitive(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Session => &["chap_secret"],
        Kind::Ca | Kind::Cert => &["private_key"],
        _ => &[],
    }
}

/// Whether `v` is a sealed value: an object whose `sealed` member is a string.
pub fn is_sealed(v: &Value) -> bool {
    v.get("sealed").is_some_and(Value::is_string)
}

/// The associated data: a domain tag, then cluster, address and attribute, each prefixed by
/// its length so that no two triples give the same bytes.
fn aad(cluster: &str, addr: &Addr, attr: &str) -> Vec<u8> {
    let addr = addr.to_string();
    let mut out = b"vmthunder state seal v1\0".to_vec();
    for part in [cluster, &addr, attr] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// Seals `clear` for attribute `attr` of the record at `addr` in cluster `cluster`:
/// AES-256-GCM with a random 96-bit nonce; the associated data binds cluster, address and
/// attribute, so a sealed value copied to another record or cluster does not open.
pub fn seal(key: &Key, cluster: &str, addr: &Addr, attr: &str, clear: &str) -> Value {
    let nonce = aes_gcm::aead::Nonce::<Aes256Gcm>::generate();
    let (msg, aad) = (clear.as_bytes(), aad(cluster, addr, attr));
    let data = key
        .cipher
        .encrypt(&nonce, Payload { msg, aad: &aad })
        .expect("AES-GCM encrypts any message of a practical size");
    serde_json::json!({
        "sealed": ALGORITHM,
        "key": key.id,
        "nonce": B64.encode(nonce),
        "data": B64.encode(data),
    })
}

/// Opens a sealed value. Errors: no key configured ([`SealError::MissingKey`]), sealed with
/// another key ([`SealError::WrongKey`]), authentication failed ([`SealError::Tampered`]:
/// changed bytes, or moved to another record), malformed value ([`SealError::Malformed`]).
pub fn open(
    key: Option<&Key>,
    cluster: &str,
    addr: &Addr,
    attr: &str,
    v: &Value,
) -> Result<String, SealError> {
    let bad = |reason: String| SealError::Malformed { reason };
    let field = |name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("no string member `{name}`")))
    };
    let algorithm = field("sealed")?;
    if algorithm != ALGORITHM {
        return Err(bad(format!("unknown algorithm `{algorithm}`")));
    }
    let key_id = field("key")?.to_string();
    let decode = |name| {
        B64.decode(field(name)?)
            .map_err(|e| bad(format!("{name}: {e}")))
    };
    let nonce = aes_gcm::aead::Nonce::<Aes256Gcm>::try_from(decode("nonce")?.as_slice())
        .map_err(|_| bad("the nonce is not 12 bytes".into()))?;
    let data = decode("data")?;
    let key = key.ok_or_else(|| SealError::MissingKey {
        key_id: key_id.clone(),
    })?;
    if key.id != key_id {
        let configured = key.id.clone();
        return Err(SealError::WrongKey {
            sealed_with: key_id,
            configured,
        });
    }
    let (msg, aad) = (data.as_slice(), aad(cluster, addr, attr));
    let clear = key.cipher.decrypt(&nonce, Payload { msg, aad: &aad });
    let clear = clear.map_err(|_| SealError::Tampered)?;
    String::from_utf8(clear).map_err(|_| bad("the opened value is not UTF-8".into()))
}

/// Seals in a copy of `observed` every sensitive attribute (for `addr.kind`) that holds a
/// clear string; None when there is nothing to seal (the caller then serializes the
/// original). A value already sealed is left as is.
pub fn sealed_copy(
    key: &Key,
    cluster: &str,
    addr: &Addr,
    observed: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    let mut copy: Option<Map<String, Value>> = None;
    for &attr in sensitive(addr.kind) {
        if let Some(Value::String(clear)) = observed.get(attr) {
            let sealed = seal(key, cluster, addr, attr, clear);
            copy.get_or_insert_with(|| observed.clone())
                .insert(attr.to_string(), sealed);
        }
    }
    copy
}

/// Opens in place every sealed sensitive attribute of `observed`; errors are
/// [`SealError::At`], naming the address and attribute, with the cause as source.
pub fn open_all(
    key: Option<&Key>,
    cluster: &str,
    addr: &Addr,
    observed: &mut Map<String, Value>,
) -> Result<(), SealError> {
    for &attr in sensitive(addr.kind) {
        let Some(v) = observed.get_mut(attr).filter(|v| is_sealed(v)) else {
            continue;
        };
        let clear = open(key, cluster, addr, attr, v).map_err(|e| SealError::At {
            addr: addr.to_string(),
            attr: attr.to_string(),
            source: Box::new(e),
        })?;
        *v = Value::String(clear);
    }
    Ok(())
}

/// Whether `observed` holds a sensitive attribute in clear (the postgres store refuses to
/// write those without a key).
pub fn has_clear_secret(kind: Kind, observed: &Map<String, Value>) -> bool {
    sensitive(kind)
        .iter()
        .any(|a| observed.get(*a).is_some_and(Value::is_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Addr {
        s.parse().unwrap()
    }

    fn observed(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn round_trip_and_errors() {
        let (key, other) = (Key::generate(), Key::generate());
        let at = addr("session.node01.base");
        let v = seal(&key, "c1", &at, "chap_secret", "s3cret");
        assert!(is_sealed(&v) && !v.to_string().contains("s3cret"));
        assert_eq!(
            open(Some(&key), "c1", &at, "chap_secret", &v).unwrap(),
            "s3cret"
        );
        let e = open(Some(&other), "c1", &at, "chap_secret", &v).unwrap_err();
        assert!(matches!(&e, SealError::WrongKey { sealed_with, configured }
            if sealed_with == key.id() && configured == other.id()));
        let e = open(None, "c1", &at, "chap_secret", &v).unwrap_err();
        assert!(matches!(&e, SealError::MissingKey { key_id } if key_id == key.id()));
        assert!(e.to_string().contains(key.id()));
        for (cluster, a, attr) in [
            ("c1", "session.node02.base", "chap_secret"),
            ("c2", "session.node01.base", "chap_secret"),
            ("c1", "session.node01.base", "other"),
        ] {
            let e = open(Some(&key), cluster, &addr(a), attr, &v).unwrap_err();
            assert!(matches!(e, SealError::Tampered), "{cluster} {a} {attr}");
        }
        let mut data = B64.decode(v["data"].as_str().unwrap()).unwrap();
        data[0] ^= 1;
        let mut flipped = v.clone();
        flipped["data"] = Value::String(B64.encode(&data));
        let e = open(Some(&key), "c1", &at, "chap_secret", &flipped).unwrap_err();
        assert!(matches!(e, SealError::Tampered));
        let mut short = v.clone();
        short["nonce"] = Value::String("AAAA".into());
        let e = open(Some(&key), "c1", &at, "chap_secret", &short).unwrap_err();
        assert!(matches!(e, SealError::Malformed { .. }));
    }

    #[test]
    fn id_parse_and_debug() {
        let key = Key::parse(&format!(" \n{}\n", B64.encode([7u8; 32])), "test").unwrap();
        assert_eq!(key.id(), Key::parse(&key.encoded(), "again").unwrap().id());
        assert!(key.id().len() == 16 && key.id().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(key.id(), key.id().to_lowercase());
        let unpadded = key.encoded().trim_end_matches('=').to_string();
        assert_eq!(Key::parse(&unpadded, "test").unwrap().id(), key.id());
        assert_eq!(key.id(), "98dd17dee735225b"); // the format: sealed values name it
        assert_ne!(Key::generate().id(), key.id());
        let debug = format!("{key:?}");
        assert!(debug.contains(key.id()) && !debug.contains(&unpadded));
        let e = Key::parse("not base64!", "VMTHUNDER_STATE_KEY").unwrap_err();
        assert!(matches!(e, KeyError::Base64 { .. }), "{e}");
        assert!(e.to_string().starts_with("VMTHUNDER_STATE_KEY"));
        let e = Key::parse(&B64.encode([1u8; 16]), "key file `/x`").unwrap_err();
        assert!(matches!(e, KeyError::Length { len: 16, .. }));
        assert!(
            e.to_string().contains("key file `/x` holds 16 bytes"),
            "{e}"
        );
    }

    #[test]
    fn copies_and_open_all() {
        let key = Key::generate();
        let lv = addr("lv.node01.base");
        let obs = observed(&[("chap_secret", "x"), ("device", "/dev/sdb")]);
        assert!(sealed_copy(&key, "c", &lv, &obs).is_none());
        assert!(!has_clear_secret(Kind::Lv, &obs));
        let at = addr("session.node01.base");
        assert!(sealed_copy(&key, "c", &at, &observed(&[("device", "/dev/sdb")])).is_none());
        assert!(has_clear_secret(Kind::Session, &obs));
        let mut copy = sealed_copy(&key, "c", &at, &obs).unwrap();
        assert!(is_sealed(&copy["chap_secret"]) && copy["device"] == obs["device"]);
        assert!(!has_clear_secret(Kind::Session, &copy));
        assert!(sealed_copy(&key, "c", &at, &copy).is_none());
        let e = open_all(None, "c", &at, &mut copy.clone()).unwrap_err();
        assert!(e.to_string().contains("session.node01.base"), "{e}");
        open_all(Some(&key), "c", &at, &mut copy).unwrap();
        assert_eq!(copy, obs);
    }

    #[test]
    fn key_file_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = Key::generate();
        std::fs::write(&path, key.encoded()).unwrap();
        let set = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        set(0o644).unwrap();
        let e = configured(Some(&path)).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("chmod 600 {}", path.display())),
            "{e}"
        );
        set(0o600).unwrap();
        assert_eq!(configured(Some(&path)).unwrap().unwrap().id(), key.id());
        let e = configured(Some(dir.path())).unwrap_err();
        assert!(matches!(e, KeyError::NotRegular { .. }), "{e}");
    }
}
