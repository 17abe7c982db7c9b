//! The cluster CA and the host certificates for NBD over TLS.
//!
//! Hosts relay the base image to each other over NBD. With TLS on, every host holds one
//! key and one certificate, signed by the cluster's CA, that it uses both as NBD server and
//! as NBD client. QEMU's `tls-creds-x509` object reads them from a directory:
//!
//! ```text
//! ca-cert.pem                              the cluster CA (this module's Ca::cert_pem)
//! server-cert.pem, server-key.pem          endpoint=server (the host's Issued)
//! client-cert.pem, client-key.pem          endpoint=client (the same Issued again)
//! ```
//!
//! The server also checks *who* connects: its `tls-authz` names an `authz-list` whose
//! `exact` rules match the client certificate's distinguished name as gnutls prints it
//! ([`distinguished_name`]). That is why a host certificate's subject is exactly `CN=<host>`
//! and nothing else: the string is predictable from the host name alone.
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM (`BEGIN PRIVATE KEY`), which gnutls reads as is.
//! Validity starts five minutes in the past so a host whose clock is a little behind does
//! not reject a certificate issued a moment ago.
//!
//! Reading certificates back ([`fingerprint`], [`not_after`], [`issued_by`]) takes the PEM
//! apart with rustls' PEM reader, parses the DER with `x509-parser` and verifies signatures
//! with its `verify` feature (ring).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::Tag;
use x509_parser::oid_registry::OID_X509_COMMON_NAME;
use x509_parser::prelude::{FromDer, X509Certificate, X509Error};

/// How far back validity starts, for clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// The latest instant X.509 (and rcgen's time type) can express: 9999-12-31T23:59:59Z.
const LATEST: u64 = 253_402_300_799;
/// The organization named in the CA's subject.
const ORGANIZATION: &str = "vmthunder";
const NEW_CA: &str = "make a new CA (which means reissuing every host certificate)";

/// The cluster's certificate authority.
#[derive(Clone)]
pub struct Ca {
    /// The self-signed CA certificate, PEM (`ca-cert.pem` on every host).
    pub cert_pem: String,
    /// The CA's private key, PKCS#8 PEM. It never leaves the machine running vmthunder.
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A host's key and certificate, used as both `server-*.pem` and `client-*.pem`.
#[derive(Clone)]
pub struct Issued {
    /// The host certificate, PEM.
    pub cert_pem: String,
    /// The host's private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("validity of {days} days is out of range: give between 1 day and year 9999")]
    Validity { days: u32 },
    #[error("host name `{host}` cannot go in a certificate ({reason}): use an ASCII DNS name")]
    HostName { host: String, reason: String },
    #[error("the CA key is not a usable private key PEM ({source}): restore it, or {NEW_CA}")]
    CaKey {
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "the CA key does not belong to the CA certificate: restore the matching pair, or {NEW_CA}"
    )]
    CaMismatch,
    #[error("the CA certificate cannot sign ({source}): restore it, or {NEW_CA}")]
    CaCert {
        #[source]
        source: rcgen::Error,
    },
    #[error("failed to {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} is not valid PEM ({reason}): expected a `-----BEGIN CERTIFICATE-----` block")]
    Pem { what: &'static str, reason: String },
    #[error("{what} holds no `-----BEGIN CERTIFICATE-----` block")]
    NoCertificate { what: &'static str },
    #[error("{what} is not a well-formed X.509 certificate ({reason}): replace the file")]
    Der { what: &'static str, reason: String },
}

/// A new self-signed cluster CA: ECDSA P-256, subject `CN=vmthunder <cluster> CA,
/// O=vmthunder`, `basicConstraints` CA:true with pathlen 0 (it signs host certificates
/// only), `keyUsage` keyCertSign and cRLSign, valid `days` days from now (backdated 5
/// minutes).
pub fn new_ca(cluster: &str, days: u32) -> Result<Ca, PkiError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
            what: "generate the CA key",
            source,
        })?;
    let mut params = base_params(days)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("vmthunder {cluster} CA"));
    name.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            what: "sign the CA certificate",
            source,
        })?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A host certificate signed by `ca`: a new ECDSA P-256 key, subject exactly `CN=<host>`
/// (no other RDN, so the DN the NBD server's authz matches is [`distinguished_name`]),
/// SAN `DNS:<host>` plus `IP:<address>` when `address` parses as an IP address (bracketed
/// IPv6 too) or else `DNS:<address>`, EKU serverAuth and clientAuth, `keyUsage`
/// digitalSignature and keyEncipherment (QEMU refuses a certificate whose critical
/// `keyUsage` lacks keyEncipherment), not a CA, a random serial, valid `days` days from now
/// (backdated 5 minutes).
///
/// The NBD client checks the server's certificate against the host it dials (by default
/// the address it connects to), so `address` must be what other hosts connect to.
pub fn issue(ca: &Ca, host: &str, address: &str, days: u32) -> Result<Issued, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|source| PkiError::CaKey { source })?;
    let ca_der = first_certificate(&ca.cert_pem, "the CA certificate")?;
    let ca_cert = parse(&ca_der, "the CA certificate")?;
    if ca_cert.public_key().raw != ca_key.subject_public_key_info().as_slice() {
        return Err(PkiError::CaMismatch);
    }
    let issuer =
        Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|source| PkiError::CaCert { source })?;

    let mut params = base_params(days)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, host);
    params.distinguished_name = name;
    params.subject_alt_names = vec![dns_name(host)?];
    let bare = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    match bare.parse::<IpAddr>() {
        Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
        Err(_) if address.is_empty() || address == host => {}
        Err(_) => params.subject_alt_names.push(dns_name(address)?),
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut serial = *uuid::Uuid::new_v4().as_bytes();
    // Positive and exactly 16 octets, so the encoding is minimal (RFC 5280 4.1.2.2).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
            what: "generate a host key",
            source,
        })?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| PkiError::Generate {
            what: "sign the host certificate",
            source,
        })?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The distinguished name of host `host`'s certificate exactly as QEMU's `authz-list`
/// sees it (gnutls' RFC 4514 string), for an `exact` rule: `CN=node01`. Characters RFC 4514
/// reserves are escaped with a backslash as gnutls does; host names do not have any.
pub fn distinguished_name(host: &str) -> String {
    let mut out = String::from("CN=");
    let last = host.chars().count().saturating_sub(1);
    for (i, c) in host.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i == last && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// SHA-256 of the first certificate's DER in `pem`, lowercase hex (64 digits).
pub fn fingerprint(pem: &str) -> Result<String, PkiError> {
    let der = first_certificate(pem, "the certificate")?;
    Ok(Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Seconds since the Unix epoch at which the first certificate in `pem` expires (its
/// `notAfter`).
pub fn not_after(pem: &str) -> Result<i64, PkiError> {
    let der = first_certificate(pem, "the certificate")?;
    Ok(parse(&der, "the certificate")?
        .validity()
        .not_after
        .timestamp())
}

/// Whether `cert_pem` was signed by `ca_cert_pem`'s key (and names it as issuer) and has
/// subject exactly `CN=<host>`, so that the files found on a host still belong to this CA
/// and the host's authz rule matches them. Validity dates are not looked at: see
/// [`not_after`]. Errors only when either PEM cannot be read.
pub fn issued_by(cert_pem: &str, ca_cert_pem: &str, host: &str) -> Result<bool, PkiError> {
    let der = first_certificate(cert_pem, "the host certificate")?;
    let cert = parse(&der, "the host certificate")?;
    let ca_der = first_certificate(ca_cert_pem, "the CA certificate")?;
    let ca = parse(&ca_der, "the CA certificate")?;
    Ok(cert.issuer().as_raw() == ca.subject().as_raw()
        && subject_is_cn(&cert, host)
        && cert.verify_signature(Some(ca.public_key())).is_ok())
}

/// Parameters common to the CA and host certificates: validity from 5 minutes ago to
/// `days` days from now, an empty subject.
fn base_params(days: u32) -> Result<CertificateParams, PkiError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let until = now + Duration::from_secs(u64::from(days) * 86_400);
    if days == 0 || until.as_secs() > LATEST {
        return Err(PkiError::Validity { days });
    }
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + until;
    Ok(params)
}

/// A `dNSName` SAN, which must be ASCII.
fn dns_name(name: &str) -> Result<SanType, PkiError> {
    if name.is_empty() {
        return Err(PkiError::HostName {
            host: name.to_owned(),
            reason: "it is empty".to_owned(),
        });
    }
    name.try_into()
        .map(SanType::DnsName)
        .map_err(|e: rcgen::Error| PkiError::HostName {
            host: name.to_owned(),
            reason: e.to_string(),
        })
}

/// The DER of the first certificate in `pem`; `what` names it in errors.
fn first_certificate(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(PkiError::Pem {
            what,
            reason: e.to_string(),
        }),
        None => Err(PkiError::NoCertificate { what }),
    }
}

/// `der` parsed as one X.509 certificate with nothing after it; `what` names it in errors.
fn parse<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, PkiError> {
    let reason = match X509Certificate::from_der(der) {
        Ok((&[], cert)) => return Ok(cert),
        Ok(_) => "trailing bytes after the certificate".to_owned(),
        Err(e) => X509Error::from(e).to_string(),
    };
    Err(PkiError::Der { what, reason })
}

/// Whether `cert`'s subject is one RDN holding one attribute, commonName = `host` as a
/// UTF8String, PrintableString or IA5String.
fn subject_is_cn(cert: &X509Certificate<'_>, host: &str) -> bool {
    let mut rdns = cert.subject().iter();
    let (Some(rdn), None) = (rdns.next(), rdns.next()) else {
        return false;
    };
    let mut attributes = rdn.iter();
    let (Some(cn), None) = (attributes.next(), attributes.next()) else {
        return false;
    };
    let value = cn.attr_value();
    *cn.attr_type() == OID_X509_COMMON_NAME
        && matches!(
            value.tag(),
            Tag::Utf8String | Tag::PrintableString | Tag::Ia5String
        )
        && value.data == host.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn ca_and_host_round_trip() {
        let ca = new_ca("prod", 3650).unwrap();
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let host = issue(&ca, "node01", "10.0.0.1", 365).unwrap();
        assert!(host.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(host.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(host.key_pem, ca.key_pem);
        assert!(issued_by(&host.cert_pem, &ca.cert_pem, "node01").unwrap());

        let der = first_certificate(&ca.cert_pem, "ca").unwrap();
        let parsed = parse(&der, "ca").unwrap();
        // Self-signed: issuer is subject, and its own key verifies it.
        assert_eq!(parsed.issuer().as_raw(), parsed.subject().as_raw());
        assert!(issued_by(&ca.cert_pem, &ca.cert_pem, "node01").is_ok_and(|ok| !ok));

        // The host key signs certificates rcgen can parse back as an issuer too.
        let key = KeyPair::from_pem(&host.key_pem).unwrap();
        let der = first_certificate(&host.cert_pem, "host").unwrap();
        let parsed = parse(&der, "host").unwrap();
        assert_eq!(
            parsed.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        assert!(subject_is_cn(&parsed, "node01"));
        assert!(!subject_is_cn(&parsed, "node0"));
    }

    #[test]
    fn hosts_get_fresh_keys_and_serials() {
        let ca = new_ca("prod", 30).unwrap();
        let a = issue(&ca, "node01", "node01.example", 30).unwrap();
        let b = issue(&ca, "node01", "node01.example", 30).unwrap();
        assert_ne!(a.key_pem, b.key_pem);
        assert_ne!(
            fingerprint(&a.cert_pem).unwrap(),
            fingerprint(&b.cert_pem).unwrap()
        );
        assert!(issued_by(&b.cert_pem, &ca.cert_pem, "node01").unwrap());
    }

    #[test]
    fn fingerprint_is_stable_hex() {
        let ca = new_ca("prod", 30).unwrap();
        let first = fingerprint(&ca.cert_pem).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(fingerprint(&ca.cert_pem).unwrap(), first);
        // Only the first certificate counts.
        let other = new_ca("prod", 30).unwrap();
        let bundle = format!("{}{}", ca.cert_pem, other.cert_pem);
        assert_eq!(fingerprint(&bundle).unwrap(), first);
        assert_ne!(fingerprint(&other.cert_pem).unwrap(), first);
    }

    #[test]
    fn not_after_is_days_ahead() {
        let ca = new_ca("prod", 3650).unwrap();
        let expected = now() + 3650 * 86_400;
        assert!((not_after(&ca.cert_pem).unwrap() - expected).abs() <= 5);
        // Past 2049 X.509 switches to GeneralizedTime.
        let ca = new_ca("prod", 365 * 40).unwrap();
        let host = issue(&ca, "node01", "10.0.0.1", 7).unwrap();
        assert!((not_after(&host.cert_pem).unwrap() - (now() + 7 * 86_400)).abs() <= 5);
        let expected = now() + 365 * 40 * 86_400;
        assert!((not_after(&ca.cert_pem).unwrap() - expected).abs() <= 5);
    }

    #[test]
    fn issued_by_tells_other_cas_and_hosts() {
        let ca = new_ca("prod", 30).unwrap();
        let other = new_ca("prod", 30).unwrap();
        let mine = issue(&ca, "node01", "127.0.0.1", 30).unwrap();
        let theirs = issue(&other, "node01", "127.0.0.1", 30).unwrap();
        assert!(issued_by(&mine.cert_pem, &ca.cert_pem, "node01").unwrap());
        // Same subject DN and issuer DN, different key: only the signature tells.
        assert!(!issued_by(&theirs.cert_pem, &ca.cert_pem, "node01").unwrap());
        assert!(issued_by(&theirs.cert_pem, &other.cert_pem, "node01").unwrap());
        assert!(!issued_by(&mine.cert_pem, &ca.cert_pem, "node02").unwrap());
        assert!(!issued_by(&mine.cert_pem, &ca.cert_pem, "node0").unwrap());
    }

    #[test]
    fn issue_rejects_a_key_of_another_ca() {
        let ca = new_ca("prod", 30).unwrap();
        let other = new_ca("prod", 30).unwrap();
        let mixed = Ca {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other.key_pem,
        };
        let err = issue(&mixed, "node01", "127.0.0.1", 30).unwrap_err();
        assert!(matches!(err, PkiError::CaMismatch), "{err}");
        let garbage = Ca {
            cert_pem: ca.cert_pem.clone(),
            key_pem: "not a key".to_owned(),
        };
        let err = issue(&garbage, "node01", "127.0.0.1", 30).unwrap_err();
        assert!(err.to_string().starts_with("the CA key is not"), "{err}");
    }

    #[test]
    fn invalid_input_names_what_is_wrong() {
        let err = fingerprint("hello").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the certificate holds no `-----BEGIN CERTIFICATE-----` block"
        );
        let err = not_after("-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the certificate is not valid PEM"),
            "{err}"
        );
        let junk = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
        let err = not_after(junk).unwrap_err().to_string();
        assert!(
            err.starts_with("the certificate is not a well-formed X.509 certificate (")
                && err.ends_with("): replace the file"),
            "{err}"
        );
        let ca = new_ca("prod", 30).unwrap();
        let err = issued_by(&ca.cert_pem, "", "node01").unwrap_err();
        assert!(
            err.to_string().starts_with("the CA certificate holds no"),
            "{err}"
        );
        let err = issued_by(junk, &ca.cert_pem, "node01").unwrap_err();
        assert!(
            err.to_string().starts_with("the host certificate is not"),
            "{err}"
        );
        // Truncating a real certificate is caught too.
        let der = first_certificate(&ca.cert_pem, "ca").unwrap();
        let err = parse(&der[..der.len() - 10], "x").err().unwrap();
        assert!(matches!(err, PkiError::Der { what: "x", .. }), "{err}");

        assert!(matches!(
            new_ca("prod", 0),
            Err(PkiError::Validity { days: 0 })
        ));
        assert!(matches!(
            new_ca("prod", u32::MAX),
            Err(PkiError::Validity { .. })
        ));
        let err = issue(&ca, "nöde", "127.0.0.1", 30).unwrap_err();
        assert!(matches!(err, PkiError::HostName { .. }), "{err}");
    }

    #[test]
    fn distinguished_name_is_rfc4514() {
        assert_eq!(distinguished_name("node01"), "CN=node01");
        assert_eq!(distinguished_name("a,b"), "CN=a\\,b");
        assert_eq!(distinguished_name("#x "), "CN=\\#x\\ ");
    }

    /// Writes a CA, node01 (127.0.0.1), node02 (127.0.0.2) and node03 from another CA into
    /// `$VMTHUNDER_PKI_DIR/<host>/` as QEMU's tls-creds-x509 expects (and the first CA's key as
    /// `$VMTHUNDER_PKI_DIR/ca-key.pem`), for checking by hand
    /// against qemu-storage-daemon. `cargo test --lib pki::tests::write_qemu_dirs -- --ignored`
    #[test]
    #[ignore]
    fn write_qemu_dirs() {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let root = std::path::PathBuf::from(std::env::var("VMTHUNDER_PKI_DIR").unwrap());
        let ca = new_ca("interop", 30).unwrap();
        let other = new_ca("interop", 30).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("ca-key.pem"), &ca.key_pem).unwrap();
        for (host, address, ca) in [
            ("node01", "127.0.0.1", &ca),
            ("node02", "127.0.0.2", &ca),
            ("node03", "127.0.0.1", &other),
        ] {
            let issued = issue(ca, host, address, 30).unwrap();
            let dir = root.join(host);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .unwrap();
            for (name, text) in [
                ("ca-cert.pem", &ca.cert_pem),
                ("server-cert.pem", &issued.cert_pem),
                ("server-key.pem", &issued.key_pem),
                ("client-cert.pem", &issued.cert_pem),
                ("client-key.pem", &issued.key_pem),
            ] {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(dir.join(name))
                    .unwrap();
                std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
            }
            assert!(issued_by(&issued.cert_pem, &ca.cert_pem, host).unwrap());
        }
    }
}
