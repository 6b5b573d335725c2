//! The operations, each as a sequence of PKCS#11 calls on one worker session.
//!
//! Temporary key objects are session objects destroyed by [`TempObject`] on every path out.
//! Plaintext and key bytes that pass through the proxy (GCM payloads, HSM random for new AES
//! keys) live only in zeroizing buffers.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::mechanism::aead::{GcmMessageParams, GcmParams, GeneratorFunction};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType, MessageParam};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use hsm_proxy_proto::op::{
    Blob, Decrypt, Encrypt, GCM_IV_BYTES, GCM_TAG_BYTES, GenerateKeyPair, GenerateKeyPairSealed,
    GenerateSymmetric, GenerateWrappingKek, HealthReport, Kek, KekId, KeyPair, KeyPairSpec,
    MAX_RANDOM_BYTES, Random, Rewrap, Sealed, SealedKeyPair, Sign, SignMechanism, Signature,
    WrappedKey, WrappedKeyKind,
};
use hsm_proxy_proto::{Reply, Request, SecretBytes, Status};
use sha2::Digest;
use zeroize::Zeroizing;

use super::failure::{At, Failure, Step};
use super::{Epoch, Stale, Token, der};
use crate::keys::{KekBlob, KekCache, KekEntry, Purpose, RESCAN_EVERY, Usage, unwrapped_kek};

/// Everything an operation may use.
pub(crate) struct OpContext<'a> {
    /// When the operation reached the proxy.
    pub(crate) arrived: Instant,
    pub(crate) session: &'a Session,
    /// The session's message-based AES-GCM state, when the token offers it.
    pub(crate) aead: Option<&'a MessageAead>,
    pub(crate) epoch: &'a Epoch,
    pub(crate) token: &'a Token,
    pub(crate) keys: &'a KekCache,
    pub(crate) sessions: u32,
}

/// Message-based AES-GCM (PKCS#11 3.0) on one session: the KEK each direction was started
/// with, so that consecutive operations under one KEK cost one call each. Holding the entry
/// keeps its object alive (see `KekCache`), so a bound handle is never another key's.
#[derive(Debug, Default)]
pub(crate) struct MessageAead {
    encrypt: RefCell<Option<Arc<KekEntry>>>,
    decrypt: RefCell<Option<Arc<KekEntry>>>,
}

type MessageInit = fn(&Session, &Mechanism<'_>, ObjectHandle) -> cryptoki::error::Result<()>;
type MessageFinal = fn(&Session) -> cryptoki::error::Result<()>;

impl MessageAead {
    /// Makes `kek` the key of the direction `bound`, ending the operation of another key.
    fn bind(
        bound: &RefCell<Option<Arc<KekEntry>>>,
        session: &Session,
        kek: &Arc<KekEntry>,
        (init, finish): (MessageInit, MessageFinal),
        step: Step,
    ) -> Result<(), Failure> {
        let mut bound = bound.borrow_mut();
        if bound.as_ref().is_some_and(|b| Arc::ptr_eq(b, kek)) {
            return Ok(());
        }
        if bound.take().is_some() {
            let _ = finish(session);
        }
        // The per-message parameters come with each message; these only name the mechanism.
        let (mut iv, mut tag) = ([0u8; GCM_IV_BYTES], [0u8; GCM_TAG_BYTES]);
        init(
            session,
            &Mechanism::AesGcmMessage(gcm_message(&mut iv, &mut tag, false)?),
            kek.handle,
        )
        .at(step)?;
        *bound = Some(kek.clone());
        Ok(())
    }

    /// Ends the direction's operation after a failure: tokens differ on whether a failed
    /// message ends it, so the next message starts afresh.
    fn reset(bound: &RefCell<Option<Arc<KekEntry>>>, session: &Session, finish: MessageFinal) {
        if bound.borrow_mut().take().is_some() {
            let _ = finish(session);
        }
    }
}

/// One message's GCM parameters: the IV (the token draws it when `drawn`, else the one given)
/// and the tag, written by encryption and read by decryption.
fn gcm_message<'a>(
    iv: &'a mut [u8],
    tag: &'a mut [u8],
    drawn: bool,
) -> Result<GcmMessageParams<'a>, Failure> {
    let generator =
        if drawn { GeneratorFunction::GenerateRandom } else { GeneratorFunction::NoGenerate };
    GcmMessageParams::new(iv, 0.into(), generator, tag)
        .map_err(|_| Failure::Status(Status::Internal))
}

const ENCRYPTING: (MessageInit, MessageFinal) =
    (Session::message_encrypt_init, Session::message_encrypt_final);
const DECRYPTING: (MessageInit, MessageFinal) =
    (Session::message_decrypt_init, Session::message_decrypt_final);

/// The KEK ids an operation uses, so that a stale handle can be evicted before the retry.
pub(crate) fn keks(op: &Request) -> Vec<KekId> {
    used_keks(op).iter().map(|k| k.id).collect()
}

/// The KEKs an operation unwraps from the cache (`RewrapKek` unwraps its own, uncached).
pub(crate) fn used_keks(op: &Request) -> Vec<&Kek> {
    match op {
        Request::Encrypt(o) => vec![&o.kek],
        Request::Decrypt(o) => vec![&o.kek],
        Request::GenerateSymmetric(o) => vec![&o.kek],
        Request::GenerateKeyPair(o) => vec![&o.kek],
        Request::Sign(o) => vec![&o.kek],
        Request::Rewrap(o) => vec![&o.old, &o.new],
        Request::GenerateKeyPairSealed(o) => vec![&o.kek],
        _ => Vec::new(),
    }
}

/// Runs one operation.
pub(crate) fn execute(cx: &OpContext<'_>, op: &Request) -> Result<Reply, Failure> {
    match op {
        Request::Health(_) => health(cx).map(Reply::Health),
        Request::GenerateKek(_) => generate_kek(cx, Purpose::Data).map(Reply::GenerateKek),
        Request::GenerateWrappingKek(GenerateWrappingKek) => {
            generate_kek(cx, Purpose::Wrapping).map(Reply::GenerateWrappingKek)
        }
        Request::Encrypt(o) => encrypt(cx, o).map(Reply::Encrypt),
        Request::Decrypt(o) => decrypt(cx, o).map(Reply::Decrypt),
        Request::GenerateSymmetric(o) => generate_symmetric(cx, o).map(Reply::GenerateSymmetric),
        Request::GenerateKeyPair(o) => generate_key_pair(cx, o).map(Reply::GenerateKeyPair),
        Request::Sign(o) => sign(cx, o).map(Reply::Sign),
        Request::Rewrap(o) => rewrap(cx, o).map(Reply::Rewrap),
        Request::Random(o) => random(cx, o).map(Reply::Random),
        Request::GenerateKeyPairSealed(o) => {
            generate_key_pair_sealed(cx, o).map(Reply::GenerateKeyPairSealed)
        }
        Request::RewrapKek(o) => rewrap_kek(cx, &o.kek).map(Reply::RewrapKek),
        _ => Err(Failure::Status(Status::UnknownOperation)),
    }
}

/// How often, at most, a health check reads the token's master keys again.
const HEALTH_RESCAN_EVERY: Duration = Duration::from_secs(10);

/// A session object destroyed when it goes out of scope.
struct TempObject<'a> {
    session: &'a Session,
    handle: ObjectHandle,
}

impl Drop for TempObject<'_> {
    fn drop(&mut self) {
        // A failure leaves a session object that dies with the session at the latest.
        let _ = self.session.destroy_object(self.handle);
    }
}

fn temp(session: &Session, handle: ObjectHandle) -> TempObject<'_> {
    TempObject { session, handle }
}

fn health(cx: &OpContext<'_>) -> Result<HealthReport, Failure> {
    // A real round trip through the token: the RNG is cheap and needs a working session.
    let _ = Zeroizing::new(cx.session.generate_random_vec(16).at(Step::Other)?);
    // Appliances ask every few seconds: KEKs unwrapped under a master key destroyed since go.
    reread_mkeks(cx, Stale::OlderThan(HEALTH_RESCAN_EVERY));
    let info = cx.token.context().get_token_info(cx.epoch.slot).at(Step::Other)?;
    Ok(HealthReport {
        token_label: info.label().trim().to_owned(),
        manufacturer: info.manufacturer_id().trim().to_owned(),
        model: info.model().trim().to_owned(),
        sessions: cx.sessions,
        kek_cache_entries: u32::try_from(cx.keys.len()).unwrap_or(u32::MAX),
        kek_cache_capacity: u32::try_from(cx.keys.capacity()).unwrap_or(u32::MAX),
        reinitializations: cx.token.reinitializations(),
        age_ms: 0,
    })
}

/// A new project KEK of `purpose`, returned only wrapped under the MKEK, in the blob form that
/// names its purpose.
fn generate_kek(cx: &OpContext<'_>, purpose: Purpose) -> Result<Kek, Failure> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        // Extractable only so that it can be wrapped under the MKEK once; every later copy is
        // unwrapped non-extractable.
        Attribute::Extractable(true),
    ];
    let key = cx.session.generate_key(&Mechanism::AesKeyGen, &template).at(Step::Other)?;
    let key = temp(cx.session, key);
    let (generation, mkek) = newest_mkek(cx);
    let wrapped = wrap_under_mkek(cx, generation, mkek, &key)?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|_| Failure::Status(Status::Internal))?;
    Ok(Kek { id: KekId(id), wrapped: KekBlob::encode(purpose, generation, &wrapped) })
}

/// The newest master key, after reading the token's again if the last read is a second old:
/// a generation made by `hsm-proxy mkek rotate` wraps new KEKs from then on.
fn newest_mkek(cx: &OpContext<'_>) -> (u64, ObjectHandle) {
    reread_mkeks(cx, Stale::OlderThan(RESCAN_EVERY));
    cx.epoch.active_mkek()
}

fn reread_mkeks(cx: &OpContext<'_>, stale: Stale) {
    cx.keys.reread_mkeks(cx.epoch, cx.session, cx.token.mkek_label(), stale);
}

/// `kek` wrapped under the newest master key, inside the HSM: unwrapped from its own master
/// key as a session object that is sensitive and has no use but being wrapped once more, then
/// destroyed. The key never leaves the token in clear.
fn rewrap_kek(cx: &OpContext<'_>, kek: &Kek) -> Result<Kek, Failure> {
    let blob = KekBlob::parse(&kek.wrapped).ok_or(Failure::Status(Status::KekInvalid))?;
    let label = cx.token.mkek_label();
    let (mut generation, mut newest) = newest_mkek(cx);
    if blob.mkek == generation {
        // Before answering that nothing is to be done, make sure no newer master key was made
        // since the last read (`mkek rotate` a moment ago, on another host perhaps): the token
        // is read again unless a read began after this request arrived (one request of a frame
        // reads it for all).
        reread_mkeks(cx, Stale::Before(cx.arrived));
        (generation, newest) = cx.epoch.active_mkek();
        if blob.mkek == generation {
            return Ok(kek.clone());
        }
    }
    let old = cx.keys.mkek_handle(cx.epoch, cx.session, label, blob.mkek)?;
    let template = unwrapped_kek(Usage { data: false, keys: false, extractable: true });
    let key = cx
        .session
        .unwrap_key(&Mechanism::AesKeyWrapPad, old, blob.wrapped, &template)
        .at(Step::KekUnwrap)
        .map_err(|f| cx.keys.mkek_failed(cx.epoch, cx.session, label, blob.mkek, f))?;
    let key = temp(cx.session, key);
    let wrapped = wrap_under_mkek(cx, generation, newest, &key)?;
    Ok(Kek { id: kek.id, wrapped: KekBlob::encode(blob.purpose, generation, &wrapped) })
}

/// `key` wrapped under master key `generation` (`handle`). Should that key be gone (destroyed
/// by other means than `mkek destroy`, which keeps the newest), the token's keys are read again
/// and the caller is told to retry, which then finds the newest there is.
fn wrap_under_mkek(
    cx: &OpContext<'_>,
    generation: u64,
    handle: ObjectHandle,
    key: &TempObject<'_>,
) -> Result<Vec<u8>, Failure> {
    cx.session.wrap_key(&Mechanism::AesKeyWrapPad, handle, key.handle).at(Step::MkekWrap).map_err(
        |f| match cx.keys.mkek_failed(cx.epoch, cx.session, cx.token.mkek_label(), generation, f) {
            Failure::Status(Status::KekInvalid) => Failure::Status(Status::HsmUnavailable),
            other => other,
        },
    )
}

fn encrypt(cx: &OpContext<'_>, op: &Encrypt) -> Result<Sealed, Failure> {
    let kek = cx.keys.resolve(&op.kek, cx.token, cx.epoch)?;
    kek.serves(Purpose::Data)?;
    seal(cx, &kek, op.plaintext.expose_secret(), &op.aad)
}

fn decrypt(cx: &OpContext<'_>, op: &Decrypt) -> Result<SecretBytes, Failure> {
    let kek = cx.keys.resolve(&op.kek, cx.token, cx.epoch)?;
    kek.serves(Purpose::Data)?;
    open(cx, &kek, &op.sealed, &op.aad)
}

fn generate_symmetric(cx: &OpContext<'_>, op: &GenerateSymmetric) -> Result<Sealed, Failure> {
    // AES keys and HMAC keys alike: any whole number of bytes up to 1 KiB.
    let bytes = match op.bits {
        8..=8192 if op.bits.is_multiple_of(8) => u32::from(op.bits / 8),
        _ => return Err(Failure::Status(Status::InvalidArgument)),
    };
    let kek = cx.keys.resolve(&op.kek, cx.token, cx.epoch)?;
    kek.serves(Purpose::Data)?;
    // Key bytes from the HSM's approved generator (SP 800-133 direct DRBG output), sealed in
    // the same GCM form as every stored secret so that payload retrieval is uniform.
    let key = Zeroizing::new(cx.session.generate_random_vec(bytes).at(Step::Other)?);
    seal(cx, &kek, &key, &op.aad)
}

/// The algorithm family of a generated pair; an EC pair carries its curve.
enum PairKind {
    Rsa,
    Ec { oid: &'static [u8] },
}

/// Generates a session key pair of `spec`, its private key sensitive and for signing, and
/// extractable: it leaves the HSM once, wrapped, under the project KEK or under the key of
/// [`export_private`].
fn generate_pair<'s>(
    cx: &OpContext<'s>,
    spec: KeyPairSpec,
) -> Result<(TempObject<'s>, TempObject<'s>, PairKind), Failure> {
    let rsa = |bits: u64| {
        let template =
            vec![Attribute::ModulusBits(bits.into()), Attribute::PublicExponent(vec![1, 0, 1])];
        (Mechanism::RsaPkcsKeyPairGen, template, PairKind::Rsa)
    };
    let ec = |oid: &'static [u8]| {
        let template = vec![Attribute::EcParams(oid.to_vec())];
        (Mechanism::EccKeyPairGen, template, PairKind::Ec { oid })
    };
    let (mechanism, mut public_template, kind) = match spec {
        KeyPairSpec::Rsa2048 => rsa(2048),
        KeyPairSpec::Rsa3072 => rsa(3072),
        KeyPairSpec::Rsa4096 => rsa(4096),
        KeyPairSpec::EcP256 => ec(der::OID_P256),
        KeyPairSpec::EcP384 => ec(der::OID_P384),
        _ => return Err(Failure::Status(Status::InvalidArgument)),
    };
    public_template.extend([Attribute::Token(false), Attribute::Verify(true)]);
    let private_template = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Sign(true),
    ];
    let (public, private) = cx
        .session
        .generate_key_pair(&mechanism, &public_template, &private_template)
        .at(Step::Other)?;
    Ok((temp(cx.session, public), temp(cx.session, private), kind))
}

/// A private key out of the HSM as PKCS#8, never read as attributes and never in clear on
/// the way: the token and this process agree on an AES key by ephemeral ECDH over P-256
/// (`CKM_ECDH1_DERIVE`, SP 800-56A), which in the token is sensitive and for wrapping only;
/// the token wraps the private key under it (AES key wrap with padding, RFC 5649) and this
/// process unwraps the result in a zeroizing buffer. Both ephemeral keys die with the call.
fn export_private(
    cx: &OpContext<'_>,
    private: &TempObject<'_>,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let session = cx.session;
    let public_template = [Attribute::Token(false), Attribute::EcParams(der::OID_P256.to_vec())];
    let private_template = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Derive(true),
    ];
    let (theirs, agreeing) = session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public_template, &private_template)
        .at(Step::Other)?;
    let (theirs, agreeing) = (temp(session, theirs), temp(session, agreeing));
    let token_point = ec_point_of(cx, &theirs)?;
    let token_public = p256::PublicKey::from_sec1_bytes(der::ec_point(&token_point))
        .map_err(|_| Failure::Status(Status::HsmFailure))?;
    let ours = ephemeral_p256()?;
    let our_point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&ours.public_key(), false);
    let params = Ecdh1DeriveParams::new(EcKdf::null(), our_point.as_bytes());
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
    ];
    let wrapping = session
        .derive_key(&Mechanism::Ecdh1Derive(params), agreeing.handle, &template)
        .at(Step::Other)?;
    let wrapping = temp(session, wrapping);
    let wrapped = session
        .wrap_key(&Mechanism::AesKeyWrapPad, wrapping.handle, private.handle)
        .at(Step::Other)?;
    let shared = p256::ecdh::diffie_hellman(ours.to_nonzero_scalar(), token_public.as_affine());
    let key: [u8; 32] = (*shared.raw_secret_bytes()).into();
    let key = Zeroizing::new(key);
    let kek = aes_kw::KekAes256::from(*key);
    let mut pkcs8 = Zeroizing::new(
        kek.unwrap_with_padding_vec(&wrapped).map_err(|_| Failure::Status(Status::HsmFailure))?,
    );
    // SoftHSM2 zero-pads the key to a multiple of 8 bytes before RFC 5649 pads it again: what
    // follows the PKCS#8 element must be zeros, and is dropped.
    let len = der::element_len(&pkcs8).ok_or(Failure::Status(Status::HsmFailure))?;
    if pkcs8.get(len..).is_some_and(|rest| rest.iter().any(|b| *b != 0)) {
        return Err(Failure::Status(Status::HsmFailure));
    }
    pkcs8.truncate(len);
    Ok(pkcs8)
}

/// A P-256 private key from the OS generator, for one agreement.
fn ephemeral_p256() -> Result<p256::SecretKey, Failure> {
    // A draw outside the curve's order (probability below 2^-32) is drawn again, and so is one
    // whose public point begins `04 3f`: tokens take the point raw or DER-wrapped, and a raw
    // one of 65 bytes with that start also reads as a 63-byte OCTET STRING, which some cut.
    for _ in 0..64 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|_| Failure::Status(Status::Internal))?;
        let Ok(key) = p256::SecretKey::from_slice(bytes.as_ref()) else { continue };
        let point =
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
        if point.as_bytes().get(1) != Some(&0x3f) {
            return Ok(key);
        }
    }
    Err(Failure::Status(Status::Internal))
}

/// An EC public key's CKA_EC_POINT, as the HSM returns it.
fn ec_point_of(cx: &OpContext<'_>, public: &TempObject<'_>) -> Result<Vec<u8>, Failure> {
    let attrs =
        cx.session.get_attributes(public.handle, &[AttributeType::EcPoint]).at(Step::Other)?;
    let Some(Attribute::EcPoint(point)) = attrs.into_iter().next() else {
        return Err(Failure::Status(Status::HsmFailure));
    };
    Ok(point)
}

fn generate_key_pair(cx: &OpContext<'_>, op: &GenerateKeyPair) -> Result<KeyPair, Failure> {
    let kek = cx.keys.resolve(&op.kek, cx.token, cx.epoch)?;
    kek.serves(Purpose::Wrapping)?;
    let (public, private, pair) = generate_pair(cx, op.spec)?;
    let blob = cx
        .session
        .wrap_key(&Mechanism::AesKeyWrapPad, kek.handle, private.handle)
        .at(Step::Other)?;
    let kind = match pair {
        PairKind::Rsa => WrappedKeyKind::RsaPrivate,
        PairKind::Ec { .. } => WrappedKeyKind::EcPrivate,
    };
    let public_key_der = public_key_der(cx, &public, &pair)?;
    Ok(KeyPair { private_key: WrappedKey { kind, blob }, public_key_der })
}

/// A public key as DER SubjectPublicKeyInfo, from its attributes.
fn public_key_der(
    cx: &OpContext<'_>,
    public: &TempObject<'_>,
    pair: &PairKind,
) -> Result<Vec<u8>, Failure> {
    match pair {
        PairKind::Rsa => {
            let types = [AttributeType::Modulus, AttributeType::PublicExponent];
            let attrs = cx.session.get_attributes(public.handle, &types).at(Step::Other)?;
            let (mut n, mut e) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(v) => n = Some(v),
                    Attribute::PublicExponent(v) => e = Some(v),
                    _ => {}
                }
            }
            let (Some(n), Some(e)) = (n, e) else {
                return Err(Failure::Status(Status::HsmFailure));
            };
            Ok(der::rsa_spki(&n, &e))
        }
        PairKind::Ec { oid } => {
            let point = ec_point_of(cx, public)?;
            Ok(der::ec_spki(oid, der::ec_point(&point)))
        }
    }
}

/// A key pair for a client to retrieve: generated in the HSM, its private key exported once,
/// wrapped ([`export_private`]), and sealed under the project KEK before it leaves the proxy.
fn generate_key_pair_sealed(
    cx: &OpContext<'_>,
    op: &GenerateKeyPairSealed,
) -> Result<SealedKeyPair, Failure> {
    let kek = cx.keys.resolve(&op.kek, cx.token, cx.epoch)?;
    kek.serves(Purpose::Data)?;
    let (public, private, pair) = generate_pair(cx, op.spec)?;
    let pkcs8 = export_private(cx, &private)?;
    drop(private);
    let public_key_der = public_key_der(cx, &public, &pair)?;
    let private_key_pkcs8 = seal(cx, &kek, &pkcs8, &op.aad)?;
    Ok(SealedKeyPair { private_key_pkcs8, public_key_der })
}

fn sign(cx: &OpContext<'_>, op: &Sign) -> Result<Signature, Failure> {
    let is_rsa = !matches!(op.mechanism, SignMechanism::EcdsaSha256 | SignMechanism::EcdsaSha384);
    match (op.key.kind, is_rsa) {
        (WrappedKeyKind::RsaPrivate, true) | (WrappedKeyKind::EcPrivate, false) => {}
        _ => return Err(Failure::Status(Status::InvalidArgument)),
    }
    let kek = cx.keys.resolve(&op.kek, cx.token, cx.epoch)?;
    kek.serves(Purpose::Wrapping)?;
    let key = unwrap_key(cx.session, kek.handle, &op.key, false)?;
    let pss = |hash_alg, mgf, s_len: u64| PkcsPssParams { hash_alg, mgf, s_len: s_len.into() };
    let caps = cx.token.caps;
    // Tokens without hashing ECDSA (SoftHSM2) get the digest computed here: it is not secret.
    let mechanism = match op.mechanism {
        SignMechanism::RsaPkcs1v15Sha256 => Mechanism::Sha256RsaPkcs,
        SignMechanism::RsaPkcs1v15Sha384 => Mechanism::Sha384RsaPkcs,
        SignMechanism::RsaPkcs1v15Sha512 => Mechanism::Sha512RsaPkcs,
        SignMechanism::RsaPssSha256 => {
            Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32))
        }
        SignMechanism::RsaPssSha384 => {
            Mechanism::Sha384RsaPkcsPss(pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48))
        }
        SignMechanism::RsaPssSha512 => {
            Mechanism::Sha512RsaPkcsPss(pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64))
        }
        SignMechanism::EcdsaSha256 if caps.ecdsa_sha256 => Mechanism::EcdsaSha256,
        SignMechanism::EcdsaSha384 if caps.ecdsa_sha384 => Mechanism::EcdsaSha384,
        SignMechanism::EcdsaSha256 => {
            let digest = sha2::Sha256::digest(&op.data);
            return sign_with(cx.session, &Mechanism::Ecdsa, key.handle, &digest);
        }
        SignMechanism::EcdsaSha384 => {
            let digest = sha2::Sha384::digest(&op.data);
            return sign_with(cx.session, &Mechanism::Ecdsa, key.handle, &digest);
        }
        _ => return Err(Failure::Status(Status::MechanismUnsupported)),
    };
    sign_with(cx.session, &mechanism, key.handle, &op.data)
}

fn sign_with(
    session: &Session,
    mechanism: &Mechanism<'_>,
    key: ObjectHandle,
    data: &[u8],
) -> Result<Signature, Failure> {
    let bytes = session.sign(mechanism, key, data).at(Step::Other)?;
    Ok(Signature { bytes })
}

fn rewrap(cx: &OpContext<'_>, op: &Rewrap) -> Result<Blob, Failure> {
    let old = cx.keys.resolve(&op.old, cx.token, cx.epoch)?;
    let new = cx.keys.resolve(&op.new, cx.token, cx.epoch)?;
    let purpose =
        if matches!(op.blob, Blob::Wrapped(_)) { Purpose::Wrapping } else { Purpose::Data };
    old.serves(purpose)?;
    new.serves(purpose)?;
    match &op.blob {
        Blob::Wrapped(wrapped) => {
            // Unwrapped into the HSM and wrapped out again: the key never leaves it in clear.
            let key = unwrap_key(cx.session, old.handle, wrapped, true)?;
            let blob = cx
                .session
                .wrap_key(&Mechanism::AesKeyWrapPad, new.handle, key.handle)
                .at(Step::Other)?;
            Ok(Blob::Wrapped(WrappedKey { kind: wrapped.kind, blob }))
        }
        Blob::Sealed { sealed, aad } => {
            // PKCS#11 v2.40 tokens cannot re-encrypt GCM data inside the token, so the plaintext
            // passes through this process, in a zeroizing buffer, for the two calls.
            let plaintext = open(cx, &old, sealed, aad)?;
            let sealed = seal(cx, &new, plaintext.expose_secret(), aad)?;
            Ok(Blob::Sealed { sealed, aad: aad.clone() })
        }
        _ => Err(Failure::Status(Status::InvalidArgument)),
    }
}

fn random(cx: &OpContext<'_>, op: &Random) -> Result<SecretBytes, Failure> {
    if op.len > MAX_RANDOM_BYTES {
        return Err(Failure::Status(Status::InvalidArgument));
    }
    Ok(SecretBytes::new(cx.session.generate_random_vec(op.len).at(Step::Other)?))
}

/// AES-256-GCM with a fresh random 96-bit IV (NIST SP 800-38D 8.2.2; the appliance rotates a
/// KEK long before 2^32 encryptions). Through the message-based functions the token draws the
/// IV itself, as FIPS 140-3 requires of a module; single-part calls take one from the OS.
fn seal(
    cx: &OpContext<'_>,
    kek: &Arc<KekEntry>,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Sealed, Failure> {
    let session = cx.session;
    if let Some(aead) = cx.aead {
        MessageAead::bind(&aead.encrypt, session, kek, ENCRYPTING, Step::Other)?;
        let (mut iv, mut tag) = ([0u8; GCM_IV_BYTES], [0u8; GCM_TAG_BYTES]);
        let params = MessageParam::AesGcmMessage(gcm_message(&mut iv, &mut tag, true)?);
        let result = session.encrypt_message(&params, aad, plaintext);
        let ciphertext =
            result.inspect_err(|_| MessageAead::reset(&aead.encrypt, session, ENCRYPTING.1));
        let ciphertext = ciphertext.at(Step::Other)?;
        // A token that ignored the generator left the IV as given: every message would share it.
        if ciphertext.len() != plaintext.len() || iv == [0u8; GCM_IV_BYTES] {
            return Err(Failure::Status(Status::HsmFailure));
        }
        return Ok(Sealed { ciphertext, iv, tag });
    }
    let mut iv = [0u8; GCM_IV_BYTES];
    getrandom::fill(&mut iv).map_err(|_| Failure::Status(Status::Internal))?;
    let mut iv_param = iv;
    let params = GcmParams::new(&mut iv_param, aad, tag_bits())
        .map_err(|_| Failure::Status(Status::InvalidArgument))?;
    let mut out =
        session.encrypt(&Mechanism::AesGcm(params), kek.handle, plaintext).at(Step::Other)?;
    if out.len() != plaintext.len() + GCM_TAG_BYTES {
        return Err(Failure::Status(Status::HsmFailure));
    }
    let tag_bytes = out.split_off(plaintext.len());
    let tag = tag_bytes.try_into().map_err(|_| Failure::Status(Status::HsmFailure))?;
    Ok(Sealed { ciphertext: out, iv, tag })
}

fn open(
    cx: &OpContext<'_>,
    kek: &Arc<KekEntry>,
    sealed: &Sealed,
    aad: &[u8],
) -> Result<SecretBytes, Failure> {
    let session = cx.session;
    let mut iv = sealed.iv;
    if let Some(aead) = cx.aead {
        MessageAead::bind(&aead.decrypt, session, kek, DECRYPTING, Step::Decrypt)?;
        let mut tag = sealed.tag;
        let params = MessageParam::AesGcmMessage(gcm_message(&mut iv, &mut tag, false)?);
        let result = session.decrypt_message(&params, aad, &sealed.ciphertext);
        let plaintext = Zeroizing::new(
            result
                .inspect_err(|_| MessageAead::reset(&aead.decrypt, session, DECRYPTING.1))
                .at(Step::Decrypt)?,
        );
        return Ok(SecretBytes::from(plaintext));
    }
    let mut input = Vec::with_capacity(sealed.ciphertext.len() + GCM_TAG_BYTES);
    input.extend_from_slice(&sealed.ciphertext);
    input.extend_from_slice(&sealed.tag);
    let params = GcmParams::new(&mut iv, aad, tag_bits())
        .map_err(|_| Failure::Status(Status::InvalidArgument))?;
    let plaintext = Zeroizing::new(
        session.decrypt(&Mechanism::AesGcm(params), kek.handle, &input).at(Step::Decrypt)?,
    );
    Ok(SecretBytes::from(plaintext))
}

fn tag_bits() -> cryptoki::types::Ulong {
    // GCM_TAG_BYTES is 16: 128 bits.
    128u64.into()
}

/// Unwraps a key under a KEK as a temporary session object, sensitive and never extractable
/// unless it is to be wrapped out again (`for_rewrap`).
fn unwrap_key<'s>(
    session: &'s Session,
    kek: ObjectHandle,
    key: &WrappedKey,
    for_rewrap: bool,
) -> Result<TempObject<'s>, Failure> {
    let (class, key_type) = match key.kind {
        WrappedKeyKind::Aes => (ObjectClass::SECRET_KEY, KeyType::AES),
        WrappedKeyKind::RsaPrivate => (ObjectClass::PRIVATE_KEY, KeyType::RSA),
        WrappedKeyKind::EcPrivate => (ObjectClass::PRIVATE_KEY, KeyType::EC),
        _ => return Err(Failure::Status(Status::InvalidArgument)),
    };
    let mut template = vec![
        Attribute::Class(class),
        Attribute::KeyType(key_type),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(for_rewrap),
    ];
    if class == ObjectClass::PRIVATE_KEY {
        template.push(Attribute::Sign(true));
    }
    let handle = session
        .unwrap_key(&Mechanism::AesKeyWrapPad, kek, &key.blob, &template)
        .at(Step::KeyUnwrap)?;
    Ok(temp(session, handle))
}
