//! Driving a PKCS#11 module directly: the token, its login, the keys every operation needs,
//! and one session per worker.

use std::path::PathBuf;

use anyhow::{Context, bail};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};

use crate::ops::Op;

/// Which token, and how to log in.
#[derive(Debug)]
pub struct Target {
    /// The module.
    pub module: PathBuf,
    /// The token's label; the first token when absent (with no slot either).
    pub token_label: Option<String>,
    /// The slot id.
    pub slot: Option<u64>,
    /// The user PIN.
    pub pin: SecretString,
}

/// An opened token with the keys the operations use. The setup session stays open for the
/// run: the session keys made in it are visible to every session of this process.
pub struct Direct {
    ctx: Pkcs11,
    slot: Slot,
    /// Kept open (never used after setup): its session keys live as long as it does.
    _setup: std::sync::Mutex<Session>,
    kek: ObjectHandle,
    sealed_32: Vec<u8>,
    sealed_4096: Vec<u8>,
    wrapped_ec: Vec<u8>,
    wrapped_rsa: Vec<u8>,
    ecdsa_sha256: bool,
    /// What the token calls itself, for reports.
    pub description: String,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").field("token", &self.description).finish_non_exhaustive()
    }
}

const IV: [u8; 12] = [7; 12];
const AAD: &[u8] = b"hsm-bench";

fn gcm_params(iv: &mut [u8; 12]) -> Result<GcmParams<'_>, CkError> {
    GcmParams::new(iv, AAD, 128.into())
}

impl Direct {
    /// Loads the module, logs in and makes the keys.
    pub fn open(target: &Target) -> anyhow::Result<Direct> {
        let ctx = Pkcs11::new(&target.module)
            .with_context(|| format!("loading {}", target.module.display()))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(e).context("C_Initialize"),
        }
        let slot = find_slot(&ctx, target)?;
        let info = ctx.get_token_info(slot)?;
        let description = format!(
            "{} {} token {:?}",
            info.manufacturer_id().trim(),
            info.model().trim(),
            info.label().trim()
        );
        let setup = ctx.open_rw_session(slot)?;
        match setup.login(UserType::User, Some(&AuthPin::from(target.pin.expose_secret()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(e).context("C_Login"),
        }
        // A project KEK as the proxy holds one: sensitive, not extractable, private.
        let kek = setup.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ],
        )?;
        let mut iv = IV;
        let sealed_32 =
            setup.encrypt(&Mechanism::AesGcm(gcm_params(&mut iv)?), kek, &[0x42; 32])?;
        let mut iv = IV;
        let sealed_4096 =
            setup.encrypt(&Mechanism::AesGcm(gcm_params(&mut iv)?), kek, &[0x42; 4096])?;
        let pair = |mechanism: Mechanism<'_>, public: Vec<Attribute>| -> anyhow::Result<Vec<u8>> {
            let private = [
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Sign(true),
            ];
            let (public_key, private_key) =
                setup.generate_key_pair(&mechanism, &public, &private)?;
            let wrapped = setup.wrap_key(&Mechanism::AesKeyWrapPad, kek, private_key)?;
            setup.destroy_object(private_key)?;
            setup.destroy_object(public_key)?;
            Ok(wrapped)
        };
        let p256 = vec![0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
        let wrapped_ec = pair(
            Mechanism::EccKeyPairGen,
            vec![Attribute::EcParams(p256), Attribute::Token(false), Attribute::Verify(true)],
        )
        .context("making the EC key")?;
        let wrapped_rsa = pair(
            Mechanism::RsaPkcsKeyPairGen,
            vec![
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Token(false),
                Attribute::Verify(true),
            ],
        )
        .context("making the RSA key")?;
        let ecdsa_sha256 =
            ctx.get_mechanism_info(slot, MechanismType::ECDSA_SHA256).is_ok_and(|i| i.sign());
        Ok(Direct {
            ctx,
            slot,
            _setup: std::sync::Mutex::new(setup),
            kek,
            sealed_32,
            sealed_4096,
            wrapped_ec,
            wrapped_rsa,
            ecdsa_sha256,
            description,
        })
    }

    /// A session for one worker (sharing the login).
    pub fn session(&self) -> anyhow::Result<Session> {
        Ok(self.ctx.open_ro_session(self.slot)?)
    }

    /// Runs `op` once in `session`.
    pub fn run(&self, session: &Session, op: Op) -> Result<u64, String> {
        self.run_op(session, op).map(|()| 1).map_err(|e| match e {
            CkError::Pkcs11(rv, _) => format!("{rv:?}"),
            other => other.to_string(),
        })
    }

    fn run_op(&self, session: &Session, op: Op) -> Result<(), CkError> {
        match op {
            Op::Encrypt32 => {
                let mut iv = IV;
                session.encrypt(&Mechanism::AesGcm(gcm_params(&mut iv)?), self.kek, &[0x42; 32])?;
            }
            Op::Decrypt32 | Op::Decrypt4096 => {
                let sealed = if op == Op::Decrypt32 { &self.sealed_32 } else { &self.sealed_4096 };
                let mut iv = IV;
                session.decrypt(&Mechanism::AesGcm(gcm_params(&mut iv)?), self.kek, sealed)?;
            }
            Op::Rewrap => {
                let key = self.unwrap(session, &self.wrapped_ec, KeyType::EC, true)?;
                let out = session.wrap_key(&Mechanism::AesKeyWrapPad, self.kek, key);
                session.destroy_object(key)?;
                out?;
            }
            Op::GenerateSymmetric => {
                let key = session.generate_random_vec(32)?;
                let mut iv = IV;
                session.encrypt(&Mechanism::AesGcm(gcm_params(&mut iv)?), self.kek, &key)?;
            }
            Op::SignEcdsaP256 => {
                let key = self.unwrap(session, &self.wrapped_ec, KeyType::EC, false)?;
                // As the proxy does on tokens without hashing ECDSA: the digest is not secret.
                let out = if self.ecdsa_sha256 {
                    session.sign(&Mechanism::EcdsaSha256, key, b"hsm-bench message")
                } else {
                    session.sign(&Mechanism::Ecdsa, key, &sha256(b"hsm-bench message"))
                };
                session.destroy_object(key)?;
                out?;
            }
            Op::SignRsa2048 => {
                let key = self.unwrap(session, &self.wrapped_rsa, KeyType::RSA, false)?;
                let out = session.sign(&Mechanism::Sha256RsaPkcs, key, b"hsm-bench message");
                session.destroy_object(key)?;
                out?;
            }
            Op::Random32 => {
                session.generate_random_vec(32)?;
            }
        }
        Ok(())
    }

    fn unwrap(
        &self,
        session: &Session,
        wrapped: &[u8],
        key_type: KeyType,
        extractable: bool,
    ) -> Result<ObjectHandle, CkError> {
        session.unwrap_key(
            &Mechanism::AesKeyWrapPad,
            self.kek,
            wrapped,
            &[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(key_type),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(extractable),
                Attribute::Sign(true),
            ],
        )
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

fn find_slot(ctx: &Pkcs11, target: &Target) -> anyhow::Result<Slot> {
    let slots = ctx.get_slots_with_token()?;
    if let Some(id) = target.slot {
        return slots
            .into_iter()
            .find(|s| s.id() == id)
            .with_context(|| format!("no token in slot {id}"));
    }
    let Some(label) = &target.token_label else {
        return slots.into_iter().next().context("no token present");
    };
    for slot in &slots {
        if ctx.get_token_info(*slot)?.label().trim() == label {
            return Ok(*slot);
        }
    }
    bail!("no token labelled {label:?}")
}
