//! HTTPS for the simulator: a self-signed certificate made at start, as a
//! fresh PVE node has (`pve-ssl.pem`, signed by the cluster's own CA,
//! which no system trusts either), so clients must pin its fingerprint or
//! trust it as a CA file.

use std::net::SocketAddr;
use std::sync::Arc;

use super::SimError;

/// The certificate the simulator serves.
pub(super) struct Certificate {
    pub(super) pem: String,
    /// SHA-256 of the DER, `AB:CD:…` as `pvenode cert info` shows it.
    pub(super) fingerprint: String,
}

/// A new self-signed certificate for `localhost`, the loopback addresses
/// and the address listened on, and a TLS acceptor serving it (HTTP/1.1).
pub(super) fn self_signed(
    address: SocketAddr,
) -> Result<(Certificate, tokio_rustls::TlsAcceptor), SimError> {
    let failed = |e: &dyn std::fmt::Display| SimError::Tls(e.to_string());
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ip = address.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    // rcgen makes an IP address SAN of each name that parses as one.
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).map_err(|e| failed(&e))?;
    let der = cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .map_err(|e| failed(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let certificate = Certificate {
        pem: cert.pem(),
        fingerprint: crate::proxmox::client::fingerprint_of(&der),
    };
    Ok((
        certificate,
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    ))
}
