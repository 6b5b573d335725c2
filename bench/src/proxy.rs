//! Driving a running hsm-proxy over mutual TLS: the same operations as the direct mode, at a
//! given concurrency (in-flight frames) and batch size (operations per frame).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hsm_proxy_proto::SecretBytes;
use hsm_proxy_proto::client::{Client, ClientConfig, tls_config_from_pem_files};
use hsm_proxy_proto::op::{
    Blob, Decrypt, Encrypt, GenerateKek, GenerateKeyPair, GenerateSymmetric, GenerateWrappingKek,
    Kek, KeyPairSpec, Random, Rewrap, Sealed, Sign, SignMechanism, WrappedKey,
};
use hsm_proxy_proto::{Request, Status};

use crate::ops::Op;

/// Where the proxy is and how to reach it.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port`.
    pub endpoint: String,
    /// The name in the proxy's certificate.
    pub server_name: String,
    /// The CA that issued the proxy's certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Connections to open.
    pub connections: usize,
    /// How long a caller spins waiting for its answer before parking (zero: parks at once).
    pub busy_poll: Duration,
}

/// A client with a KEK and the inputs every operation needs.
pub struct ViaProxy {
    client: Client,
    /// The KEK data is sealed under.
    kek: Kek,
    /// The KEK private keys are wrapped under.
    keys: Kek,
    sealed_32: Sealed,
    sealed_4096: Sealed,
    wrapped_ec: WrappedKey,
    wrapped_rsa: WrappedKey,
}

impl std::fmt::Debug for ViaProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViaProxy").field("kek", &self.kek.id).finish_non_exhaustive()
    }
}

const AAD: &[u8] = b"hsm-bench";

fn status(e: hsm_proxy_proto::client::Error) -> String {
    match e {
        hsm_proxy_proto::client::Error::Operation(s) => s.name().to_owned(),
        other => other.to_string(),
    }
}

impl ViaProxy {
    /// Connects, makes a KEK and the keys.
    pub async fn open(target: &Target) -> anyhow::Result<Arc<ViaProxy>> {
        let tls = tls_config_from_pem_files(&target.ca, &target.cert, &target.key)
            .context("loading the client certificate")?;
        let mut config =
            ClientConfig::new(vec![target.endpoint.clone()], &target.server_name, tls)?;
        config.connections = target.connections.max(1);
        config.request_timeout = Duration::from_secs(60);
        config.busy_poll = target.busy_poll;
        let client = Client::new(config)?;
        let kek = client.call(GenerateKek).await.context("GenerateKek through the proxy")?;
        let seal = |n: usize| Encrypt {
            kek: kek.clone(),
            plaintext: SecretBytes::copy_from(&vec![0x42; n]),
            aad: AAD.to_vec(),
        };
        let sealed_32 = client.call(seal(32)).await?;
        let sealed_4096 = client.call(seal(4096)).await?;
        let keys = client.call(GenerateWrappingKek).await.context("GenerateWrappingKek")?;
        let pair = |spec| GenerateKeyPair { kek: keys.clone(), spec };
        let wrapped_ec = client.call(pair(KeyPairSpec::EcP256)).await?.private_key;
        let wrapped_rsa = client.call(pair(KeyPairSpec::Rsa2048)).await?.private_key;
        Ok(Arc::new(ViaProxy {
            client,
            kek,
            keys,
            sealed_32,
            sealed_4096,
            wrapped_ec,
            wrapped_rsa,
        }))
    }

    /// The request for `op`.
    pub fn request(&self, op: Op) -> Request {
        let kek = self.kek.clone();
        match op {
            Op::Encrypt32 => {
                Encrypt { kek, plaintext: SecretBytes::copy_from(&[0x42; 32]), aad: AAD.to_vec() }
                    .into()
            }
            Op::Decrypt32 => {
                Decrypt { kek, sealed: self.sealed_32.clone(), aad: AAD.to_vec() }.into()
            }
            Op::Decrypt4096 => {
                Decrypt { kek, sealed: self.sealed_4096.clone(), aad: AAD.to_vec() }.into()
            }
            Op::Rewrap => Rewrap {
                old: self.keys.clone(),
                new: self.keys.clone(),
                blob: Blob::Wrapped(self.wrapped_ec.clone()),
            }
            .into(),
            Op::GenerateSymmetric => GenerateSymmetric { kek, bits: 256, aad: AAD.to_vec() }.into(),
            Op::SignEcdsaP256 => Sign {
                kek: self.keys.clone(),
                key: self.wrapped_ec.clone(),
                mechanism: SignMechanism::EcdsaSha256,
                data: b"hsm-bench message".to_vec(),
            }
            .into(),
            Op::SignRsa2048 => Sign {
                kek: self.keys.clone(),
                key: self.wrapped_rsa.clone(),
                mechanism: SignMechanism::RsaPkcs1v15Sha256,
                data: b"hsm-bench message".to_vec(),
            }
            .into(),
            Op::Random32 => Random { len: 32 }.into(),
        }
    }

    /// Runs `batch` operations `op` in one frame; the number that succeeded, or the first
    /// failure's kind.
    pub async fn run(&self, op: Op, batch: usize) -> Result<u64, String> {
        let requests = (0..batch).map(|_| self.request(op)).collect();
        let outcomes = self.client.call_batch(requests).await.map_err(status)?;
        let mut ok = 0;
        for outcome in outcomes {
            match outcome {
                Ok(_) => ok += 1,
                Err(s) => return Err(Status::name(s).to_owned()),
            }
        }
        Ok(ok)
    }
}
