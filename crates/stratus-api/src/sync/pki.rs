//! The site PKI: each parent keeps a site CA (ECDSA P-256, made with
//! rcgen, kept in `DATA_DIR/sync/`), serves its sync listener with a
//! certificate that CA signed, and signs every site's client certificate.
//! A site makes its own key pair and only sends the public key; the
//! parent identifies a site by its certificate's SHA-256, so revoking or
//! rotating a certificate is one field of the site record.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
    SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::Digest;

/// How long a site's certificate is valid.
pub const SITE_CERT_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("certificate: {0}")]
    Cert(String),
    #[error("TLS: {0}")]
    Tls(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |e| PkiError::Io(path.to_path_buf(), e)
}

fn cert_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Cert(e.to_string())
}

/// SHA-256 of DER bytes, hex: how certificates are named.
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first certificate of a PEM text, as DER.
pub fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(cert_err)
}

/// Writes `text` to `path` (mode 0600 for keys), atomically.
fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Stratus site CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn validity(p: &mut CertificateParams, days: i64) -> i64 {
    let now = time_now();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(days);
    p.not_after.unix_timestamp() * 1_000_000
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A public key a site sent: an uncompressed P-256 point.
struct SitePublicKey(Vec<u8>);

impl PublicKeyData for SitePublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// A certificate the CA issued.
pub struct Issued {
    pub pem: String,
    pub sha256: String,
    pub expires_us: i64,
}

/// A parent's site CA and the sync listener's certificate.
pub struct SiteCa {
    key: KeyPair,
    pem: String,
    der: CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
}

impl SiteCa {
    /// Opens the CA in `dir`, making it (and the listener's certificate)
    /// on first use.
    pub fn open(dir: &Path) -> Result<SiteCa, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.pem");
        let (key, pem) = match std::fs::read_to_string(&key_path) {
            Ok(k) => {
                let key = KeyPair::from_pem(&k).map_err(cert_err)?;
                let pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
                (key, pem)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
                let mut p = ca_params();
                validity(&mut p, 3650);
                let cert = p.self_signed(&key).map_err(cert_err)?;
                // The certificate first: a key on disk means both are.
                write_private(&cert_path, &cert.pem())?;
                write_private(&key_path, &key.serialize_pem())?;
                (key, cert.pem())
            }
            Err(e) => return Err(PkiError::Io(key_path, e)),
        };
        let der = pem_to_der(&pem)?;
        // The listener's own certificate, for the fixed sync name.
        let server_key_path = dir.join("server.key");
        let server_cert_path = dir.join("server.pem");
        let (skey, scert) = match (
            std::fs::read_to_string(&server_key_path),
            std::fs::read_to_string(&server_cert_path),
        ) {
            (Ok(k), Ok(c)) => (k, c),
            _ => {
                let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
                let mut p =
                    CertificateParams::new(vec![stratus_wire::sync::SYNC_SERVER_NAME.into()])
                        .map_err(cert_err)?;
                p.distinguished_name
                    .push(DnType::CommonName, stratus_wire::sync::SYNC_SERVER_NAME);
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                validity(&mut p, 3650);
                let issuer = Issuer::new(ca_params(), &key);
                let c = p.signed_by(&k, &issuer).map_err(cert_err)?;
                write_private(&server_key_path, &k.serialize_pem())?;
                write_private(&server_cert_path, &c.pem())?;
                (k.serialize_pem(), c.pem())
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(der.clone())
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        // The CA and join requests come before a site has a
        // certificate; the exchange refuses a caller without one.
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
        let chain = vec![pem_to_der(&scert)?, der.clone()];
        let server_key = PrivateKeyDer::from_pem_slice(skey.as_bytes()).map_err(cert_err)?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, server_key)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(SiteCa {
            key,
            pem,
            der,
            server: Arc::new(server),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The hash a join token carries: SHA-256 of the CA certificate.
    pub fn hash(&self) -> String {
        fingerprint(&self.der)
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// Signs a client certificate for site `site_id` over its public key
    /// (an uncompressed P-256 point).
    pub fn issue(&self, site_id: &str, public_key: &[u8]) -> Result<Issued, PkiError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(PkiError::Cert(
                "the public key is not an uncompressed P-256 point".into(),
            ));
        }
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        p.distinguished_name.push(DnType::CommonName, site_id);
        p.subject_alt_names = vec![SanType::DnsName(
            format!("{site_id}.sites.stratus")
                .try_into()
                .map_err(cert_err)?,
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let mut serial = [0u8; 16];
        crate::identity::fernet::fill_random(&mut serial);
        serial[0] &= 0x7f;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let expires_us = validity(&mut p, SITE_CERT_DAYS);
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = p
            .signed_by(&SitePublicKey(public_key.to_vec()), &issuer)
            .map_err(cert_err)?;
        Ok(Issued {
            pem: cert.pem(),
            sha256: fingerprint(cert.der()),
            expires_us,
        })
    }
}

/// A site's side of its link: its key, its certificate and its parent's CA,
/// kept in `DATA_DIR/sync/`.
pub struct SiteIdentity {
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl SiteIdentity {
    /// A new key pair for a site about to join: the key (PEM) and its
    /// public point for the join request.
    pub fn new_key() -> Result<(String, Vec<u8>), PkiError> {
        let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        Ok((k.serialize_pem(), k.public_key_raw().to_vec()))
    }

    /// The TLS client configuration: the parent checked against its CA
    /// (under the fixed sync name), this site's certificate offered.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(pem_to_der(&self.ca_pem)?)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(cert_err)?;
        let chain = vec![pem_to_der(&self.cert_pem)?];
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// The TLS configuration for joining: the parent checked against the
    /// CA whose hash the token carries, no client certificate yet.
    pub fn join_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(pem_to_der(ca_pem)?)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// The TLS configuration for fetching the parent's CA before the site
    /// trusts anything: any certificate is accepted, and the CA fetched
    /// over it is only used once its hash matches the join token's.
    pub fn discovery_config() -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Discovery(provider)))
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }
}

/// Accepts any server certificate (see [`SiteIdentity::discovery_config`]);
/// handshake signatures are still checked.
#[derive(Debug)]
struct Discovery(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Discovery {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_certificate_chains_to_the_ca_and_names_the_site() {
        let dir = std::env::temp_dir().join(format!("stratus-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = SiteCa::open(&dir).unwrap();
        let (key_pem, public) = SiteIdentity::new_key().unwrap();
        let issued = ca.issue("site-1", &public).unwrap();
        assert_eq!(
            issued.sha256,
            fingerprint(pem_to_der(&issued.pem).unwrap().as_ref())
        );
        // The CA opens again with the same key and certificate.
        let again = SiteCa::open(&dir).unwrap();
        assert_eq!(again.hash(), ca.hash());
        // A client config builds from what the site keeps.
        let id = SiteIdentity {
            key_pem,
            cert_pem: issued.pem,
            ca_pem: ca.pem().to_string(),
        };
        id.client_config().unwrap();
        // A key that is not a P-256 point is refused.
        assert!(ca.issue("site-2", &[1, 2, 3]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
