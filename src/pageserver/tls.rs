//! TLS for the page server connection (rustls): both sides present a certificate signed by the
//! CA of `--tls-cacert` and check the other's against it, as CRIU does with GnuTLS. The client
//! also checks that the server's certificate names the address it dialled, unless
//! `--tls-no-cn-verify`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme, StreamOwned,
};

use super::Conn;
use crate::error::{Error, Result};
use crate::options::Tls;

// CRIU's defaults.
const CACERT: &str = "/etc/pki/CA/cacert.pem";
const CACRL: &str = "/etc/pki/CA/cacrl.pem";
const CERT: &str = "/etc/pki/criu/cert.pem";
const KEY: &str = "/etc/pki/criu/private/key.pem";

fn tls_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::PageServer(format!("TLS: {what}: {e}"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn path_or(p: &Option<PathBuf>, default: &str) -> PathBuf {
    p.clone().unwrap_or_else(|| PathBuf::from(default))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| tls_err(format!("read certificates from {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(tls_err(path.display(), "no certificate in the file"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| tls_err(format!("read the private key {}", path.display()), e))
}

fn roots(tls: &Tls) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in certs(&path_or(&tls.cacert, CACERT))? {
        store
            .add(c)
            .map_err(|e| tls_err("add the CA certificate", e))?;
    }
    Ok(Arc::new(store))
}

/// The CRL: required when given, optional at the default place (as CRIU).
fn crls(tls: &Tls) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let path = path_or(&tls.cacrl, CACRL);
    if tls.cacrl.is_none() && !path.exists() {
        return Ok(Vec::new());
    }
    CertificateRevocationListDer::pem_file_iter(&path)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| tls_err(format!("read the CRL {}", path.display()), e))
}

/// Checks the chain and revocation but not the name (`--tls-no-cn-verify`).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(NotValidForName))
            | Err(rustls::Error::InvalidCertificate(NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The dump's side of a TLS connection to `address`.
pub fn client(tcp: TcpStream, address: &str, tls: &Tls) -> Result<Box<dyn Conn>> {
    let p = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(tls)?, p.clone())
        .with_crls(crls(tls)?)
        .build()
        .map_err(|e| tls_err("set up certificate checks", e))?;
    let builder = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", e))?;
    let builder = if tls.no_cn_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
    } else {
        builder.with_webpki_verifier(verifier)
    };
    let cert_path = path_or(&tls.cert, CERT);
    // A client certificate is presented when there is one (the server may require it).
    let config = if tls.cert.is_some() || cert_path.exists() {
        builder
            .with_client_auth_cert(certs(&cert_path)?, key(&path_or(&tls.key, KEY))?)
            .map_err(|e| tls_err("use the client certificate", e))?
    } else {
        builder.with_no_client_auth()
    };
    let name = ServerName::try_from(address.to_owned())
        .map_err(|e| tls_err(format!("server name {address}"), e))?;
    let conn = ClientConnection::new(Arc::new(config), name)
        .map_err(|e| tls_err("start the handshake", e))?;
    let mut stream = StreamOwned::new(conn, tcp);
    handshake(&mut stream.conn, &mut stream.sock)?;
    Ok(Box::new(stream))
}

/// The page server's side: the client must present a certificate the CA signed.
pub fn server(tcp: TcpStream, tls: &Tls) -> Result<Box<dyn Conn>> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(tls)?, p.clone())
        .with_crls(crls(tls)?)
        .build()
        .map_err(|e| tls_err("set up client certificate checks", e))?;
    let config = ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&path_or(&tls.cert, CERT))?,
            key(&path_or(&tls.key, KEY))?,
        )
        .map_err(|e| tls_err("use the server certificate", e))?;
    let conn =
        ServerConnection::new(Arc::new(config)).map_err(|e| tls_err("start the handshake", e))?;
    let mut stream = StreamOwned::new(conn, tcp);
    handshake(&mut stream.conn, &mut stream.sock)?;
    Ok(Box::new(stream))
}

/// Completes the handshake now, so a bad certificate is reported as such and not as a broken
/// stream later.
fn handshake<C, D>(conn: &mut C, sock: &mut TcpStream) -> Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    while conn.is_handshaking() {
        conn.complete_io(sock)
            .map_err(|e| tls_err("handshake with the peer", e))?;
    }
    Ok(())
}
