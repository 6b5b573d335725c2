//! The module as a PKCS#11 consumer sees it: loaded by cryptoki, configured by
//! `FWSIM_PKCS11_CONF`, with the device in-process or behind `fwsim serve`. Each test runs its
//! body in a child process, because the module's configuration comes from the environment
//! and a PKCS#11 library is initialised once per process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

const SO_PIN: &str = "so-pin-5678";
const PIN: &str = "user-pin-5678";

/// target/debug (or release), where the module and fwsim are built.
fn build_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned()
}

fn module() -> PathBuf {
    let path = build_dir().join("libfirmware_sim_pkcs11.so");
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// Runs `test` in a child process with `FWSIM_PKCS11_CONF` pointing at `config`; true in the
/// child.
fn in_child(test: &str, config: &str) -> bool {
    if std::env::var_os("FWSIM_PKCS11_CONF").is_some() {
        return true;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pkcs11.toml");
    std::fs::write(&path, config.replace("$DIR", &dir.path().display().to_string())).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("FWSIM_PKCS11_CONF", &path)
        .env("FWSIM_TEST_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}\n{stderr}");
    false
}

fn test_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("FWSIM_TEST_DIR").unwrap())
}

fn load() -> Pkcs11 {
    let ctx = Pkcs11::new(module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    ctx
}

fn provision(ctx: &Pkcs11) -> Slot {
    let slot = ctx.get_all_slots().unwrap()[0];
    ctx.init_token(slot, &AuthPin::from(SO_PIN), "module-test").unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session.login(UserType::So, Some(&AuthPin::from(SO_PIN))).unwrap();
    session.init_pin(&AuthPin::from(PIN)).unwrap();
    session.logout().unwrap();
    slot
}

fn user_session(ctx: &Pkcs11, slot: Slot) -> Session {
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    session
}

fn rv(result: Result<impl std::fmt::Debug, CkError>) -> RvError {
    match result {
        Err(CkError::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

fn aes(session: &Session, token: bool, label: &str) -> ObjectHandle {
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(token),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Extractable(true),
            ],
        )
        .unwrap()
}

fn gcm_round_trip(session: &Session, key: ObjectHandle) {
    let mut iv = [9u8; 12];
    let params = GcmParams::new(&mut iv, b"aad", 128.into()).unwrap();
    let sealed = session.encrypt(&Mechanism::AesGcm(params), key, b"through the module").unwrap();
    assert_eq!(sealed.len(), 18 + 16);
    let mut iv = [9u8; 12];
    let params = GcmParams::new(&mut iv, b"aad", 128.into()).unwrap();
    assert_eq!(
        session.decrypt(&Mechanism::AesGcm(params), key, &sealed).unwrap(),
        b"through the module"
    );
    let mut iv = [9u8; 12];
    let params = GcmParams::new(&mut iv, b"AAD", 128.into()).unwrap();
    assert_eq!(
        rv(session.decrypt(&Mechanism::AesGcm(params), key, &sealed)),
        RvError::EncryptedDataInvalid
    );
}

/// PKCS#11 3.0 message-based AES-GCM: one init for many messages, each with its own IV, AAD
/// and tag, interchangeable with the single-part functions.
fn gcm_messages(ctx: &Pkcs11, session: &Session, key: ObjectHandle) {
    use cryptoki::mechanism::MessageParam;
    use cryptoki::mechanism::aead::{GcmMessageParams, GeneratorFunction};
    for f in [Function::MessageEncryptInit, Function::EncryptMessage, Function::DecryptMessage] {
        assert!(ctx.is_fn_supported(f), "{f:?}");
    }
    fn init_param<'a>(iv: &'a mut [u8; 12], tag: &'a mut [u8; 16]) -> Mechanism<'a> {
        Mechanism::AesGcmMessage(
            GcmMessageParams::new(iv, 0.into(), GeneratorFunction::NoGenerate, tag).unwrap(),
        )
    }
    let (mut iv, mut tag) = ([0u8; 12], [0u8; 16]);
    session.message_encrypt_init(&init_param(&mut iv, &mut tag), key).unwrap();
    let mut sealed = Vec::new();
    for i in 0..3u8 {
        let mut iv = [i; 12];
        let mut tag = [0u8; 16];
        let param = MessageParam::AesGcmMessage(
            GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut tag)
                .unwrap(),
        );
        let ct = session.encrypt_message(&param, &[b'a', i], &[i; 5]).unwrap();
        assert_eq!(ct.len(), 5);
        sealed.push((ct, tag));
    }
    // One operation at a time: a second init while one is active is refused.
    assert_eq!(
        rv(session.message_encrypt_init(&init_param(&mut iv, &mut tag), key)),
        RvError::OperationActive
    );
    session.message_encrypt_final().unwrap();
    assert_eq!(rv(session.message_encrypt_final()), RvError::OperationNotInitialized);

    // The single-part function opens what the message-based one sealed.
    let (ct, tag) = &sealed[1];
    let mut iv = [1u8; 12];
    let params = GcmParams::new(&mut iv, &[b'a', 1], 128.into()).unwrap();
    let whole = [ct.as_slice(), tag.as_slice()].concat();
    assert_eq!(session.decrypt(&Mechanism::AesGcm(params), key, &whole).unwrap(), [1u8; 5]);

    session.message_decrypt_init(&init_param(&mut iv, &mut [0u8; 16]), key).unwrap();
    for (i, (ct, tag)) in sealed.iter().enumerate() {
        let i = i as u8;
        let mut iv = [i; 12];
        let mut tag = *tag;
        let param = MessageParam::AesGcmMessage(
            GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut tag)
                .unwrap(),
        );
        assert_eq!(session.decrypt_message(&param, &[b'a', i], ct).unwrap(), [i; 5]);
        // Another message's AAD fails the tag, and the operation stays usable.
        assert_eq!(
            rv(session.decrypt_message(&param, b"other", ct)),
            RvError::EncryptedDataInvalid
        );
    }
    session.message_decrypt_final().unwrap();
    let mut iv = [0u8; 12];
    let mut tag = sealed[0].1;
    let param = MessageParam::AesGcmMessage(
        GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut tag).unwrap(),
    );
    assert_eq!(
        rv(session.decrypt_message(&param, &[b'a', 0], &sealed[0].0)),
        RvError::OperationNotInitialized
    );
    // IVs drawn by the device (CKG_GENERATE_RANDOM) land in the caller's IV buffer, after the
    // fixed bytes the caller keeps, and open with the single-part function.
    let (mut iv, mut tag) = ([0u8; 12], [0u8; 16]);
    session.message_encrypt_init(&init_param(&mut iv, &mut tag), key).unwrap();
    let mut drawn = Vec::new();
    for fixed_bits in [0u64, 32] {
        let (mut iv, mut tag) = ([0xEEu8; 12], [0u8; 16]);
        let ct = {
            let param = MessageParam::AesGcmMessage(
                GcmMessageParams::new(
                    &mut iv,
                    fixed_bits.into(),
                    GeneratorFunction::GenerateRandom,
                    &mut tag,
                )
                .unwrap(),
            );
            session.encrypt_message(&param, b"drawn", b"secret").unwrap()
        };
        assert_ne!(iv, [0xEEu8; 12]);
        assert_eq!(iv[..(fixed_bits / 8) as usize], [0xEEu8; 12][..(fixed_bits / 8) as usize]);
        let params = GcmParams::new(&mut iv, b"drawn", 128.into()).unwrap();
        let whole = [ct.as_slice(), tag.as_slice()].concat();
        assert_eq!(session.decrypt(&Mechanism::AesGcm(params), key, &whole).unwrap(), b"secret");
        drawn.push(iv);
    }
    assert_ne!(drawn[0][4..], drawn[1][4..]);
    session.message_encrypt_final().unwrap();
    // Decryption takes the IV it is given; it draws none.
    session.message_decrypt_init(&init_param(&mut iv, &mut tag), key).unwrap();
    let (mut iv, mut tag) = ([0u8; 12], [0u8; 16]);
    let param = MessageParam::AesGcmMessage(
        GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::GenerateRandom, &mut tag)
            .unwrap(),
    );
    assert_eq!(rv(session.decrypt_message(&param, b"", b"x")), RvError::MechanismParamInvalid);
    session.message_decrypt_final().unwrap();
}

#[test]
fn an_in_process_device_through_cryptoki() {
    if !in_child(
        "an_in_process_device_through_cryptoki",
        "[in_process]\nstate_file = \"$DIR/state\"\n",
    ) {
        return;
    }
    let ctx = load();
    let info = ctx.get_library_info().unwrap();
    assert_eq!(info.manufacturer_id().trim(), "firmware-sim");
    let slot = provision(&ctx);
    let token = ctx.get_token_info(slot).unwrap();
    assert_eq!(token.label().trim(), "module-test");
    assert!(token.user_pin_initialized());
    let mechanisms = ctx.get_mechanism_list(slot).unwrap();
    for m in [
        MechanismType::AES_GCM,
        MechanismType::AES_KEY_WRAP_PAD,
        MechanismType::ECDSA_SHA256,
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
    ] {
        assert!(mechanisms.contains(&m), "{m}");
    }
    let gcm = ctx.get_mechanism_info(slot, MechanismType::AES_GCM).unwrap();
    assert!(gcm.encrypt() && gcm.message_encrypt() && gcm.message_decrypt());

    let session = user_session(&ctx, slot);
    let key = aes(&session, true, "persistent");
    gcm_round_trip(&session, key);
    gcm_messages(&ctx, &session, key);

    // Attribute rules: the value of a sensitive key is withheld.
    let read = session.get_attributes(key, &[AttributeType::Value, AttributeType::Label]).unwrap();
    assert_eq!(read, vec![Attribute::Label(b"persistent".to_vec())], "{read:?}");

    // Key wrap with padding, round trip.
    let kek = aes(&session, false, "kek");
    let wrapped = session.wrap_key(&Mechanism::AesKeyWrapPad, kek, key).unwrap();
    assert_eq!(wrapped.len(), 40);
    let back = session
        .unwrap_key(
            &Mechanism::AesKeyWrapPad,
            kek,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
            ],
        )
        .unwrap();
    let mut iv = [1u8; 12];
    let sealed = session
        .encrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv, &[], 128.into()).unwrap()), back, b"x")
        .unwrap();
    let mut iv = [1u8; 12];
    assert_eq!(
        session
            .decrypt(
                &Mechanism::AesGcm(GcmParams::new(&mut iv, &[], 128.into()).unwrap()),
                key,
                &sealed
            )
            .unwrap(),
        b"x"
    );

    // Signatures, checked by independent implementations.
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Token(false),
            ],
            &[Attribute::Token(false), Attribute::Sign(true)],
        )
        .unwrap();
    let attrs = session
        .get_attributes(public, &[AttributeType::Modulus, AttributeType::PublicExponent])
        .unwrap();
    let (Attribute::Modulus(n), Attribute::PublicExponent(e)) = (&attrs[0], &attrs[1]) else {
        panic!("{attrs:?}")
    };
    let rsa_key =
        rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e))
            .unwrap();
    let pss = PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    };
    let sig = session.sign(&Mechanism::Sha256RsaPkcsPss(pss), private, b"signed").unwrap();
    use rsa::signature::Verifier;
    let s = rsa::pss::Signature::try_from(sig.as_slice()).unwrap();
    rsa::pss::VerifyingKey::<sha2::Sha256>::new(rsa_key.clone()).verify(b"signed", &s).unwrap();
    let sig = session.sign(&Mechanism::Sha256RsaPkcs, private, b"signed").unwrap();
    let s = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap();
    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(rsa_key).verify(b"signed", &s).unwrap();
    session.verify(&Mechanism::Sha256RsaPkcs, public, b"signed", &sig).unwrap();
    assert_eq!(
        rv(session.verify(&Mechanism::Sha256RsaPkcs, public, b"Signed", &sig)),
        RvError::SignatureInvalid
    );

    let oid = vec![0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(oid), Attribute::Token(false)],
            &[Attribute::Token(false), Attribute::Sign(true)],
        )
        .unwrap();
    let point = session.get_attributes(public, &[AttributeType::EcPoint]).unwrap();
    let Attribute::EcPoint(point) = &point[0] else { panic!() };
    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point[2..]).unwrap();
    let sig = session.sign(&Mechanism::EcdsaSha256, private, b"signed").unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
    verifying.verify(b"signed", &sig).unwrap();

    // Random, and what the module does not implement.
    let r = session.generate_random_vec(64).unwrap();
    assert_eq!(r.len(), 64);
    assert_ne!(r, vec![0; 64]);
    assert_eq!(rv(session.digest(&Mechanism::Sha256, b"x")), RvError::FunctionNotSupported);
    assert_eq!(rv(session.seed_random(b"x")), RvError::RandomSeedNotSupported);

    // Finalize and initialise again: the in-process device keeps its token objects.
    drop(session);
    ctx.clone().finalize().unwrap();
    let ctx = load();
    let session = user_session(&ctx, slot);
    let found = session.find_objects(&[Attribute::Label(b"persistent".to_vec())]).unwrap();
    assert_eq!(found, vec![key]);
    let found = session.find_objects(&[Attribute::Label(b"kek".to_vec())]).unwrap();
    assert!(found.is_empty(), "session objects end with their session");

    // A wrong PIN is a clear error.
    session.logout().unwrap();
    assert_eq!(
        rv(session.login(UserType::User, Some(&AuthPin::from("wrong-pin")))),
        RvError::PinIncorrect
    );
}

/// `policy = "fips"`: a caller's GCM IV is refused, the device's is the way to encrypt, keys
/// keep to one purpose, and a key leaves only wrapped under one that stays.
#[test]
fn a_fips_device_through_cryptoki() {
    use cryptoki::mechanism::MessageParam;
    use cryptoki::mechanism::aead::{GcmMessageParams, GeneratorFunction};
    if !in_child("a_fips_device_through_cryptoki", "[in_process]\npolicy = \"fips\"\n") {
        return;
    }
    let ctx = load();
    let slot = provision(&ctx);
    let session = user_session(&ctx, slot);
    let key = |usage: &[Attribute]| {
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Extractable(true),
        ];
        template.extend_from_slice(usage);
        session.generate_key(&Mechanism::AesKeyGen, &template)
    };
    let data_key = key(&[Attribute::Encrypt(true), Attribute::Decrypt(true)]).unwrap();
    assert_eq!(
        rv(key(&[Attribute::Encrypt(true), Attribute::Wrap(true)])),
        RvError::TemplateInconsistent
    );
    assert_eq!(rv(key(&[Attribute::Sensitive(false)])), RvError::TemplateInconsistent);

    let mut iv = [3u8; 12];
    let params = GcmParams::new(&mut iv, b"aad", 128.into()).unwrap();
    assert_eq!(
        rv(session.encrypt(&Mechanism::AesGcm(params), data_key, b"x")),
        RvError::MechanismParamInvalid
    );
    let (mut iv, mut tag) = ([0u8; 12], [0u8; 16]);
    let init = Mechanism::AesGcmMessage(
        GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut tag).unwrap(),
    );
    session.message_encrypt_init(&init, data_key).unwrap();
    let (mut iv, mut tag) = ([0u8; 12], [0u8; 16]);
    let ct = {
        let param = MessageParam::AesGcmMessage(
            GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::GenerateRandom, &mut tag)
                .unwrap(),
        );
        session.encrypt_message(&param, b"aad", b"fips").unwrap()
    };
    session.message_encrypt_final().unwrap();
    let params = GcmParams::new(&mut iv, b"aad", 128.into()).unwrap();
    let whole = [ct.as_slice(), tag.as_slice()].concat();
    assert_eq!(session.decrypt(&Mechanism::AesGcm(params), data_key, &whole).unwrap(), b"fips");

    let loose = key(&[Attribute::Wrap(true)]).unwrap();
    let kept = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Extractable(false),
                Attribute::Wrap(true),
            ],
        )
        .unwrap();
    assert_eq!(
        rv(session.wrap_key(&Mechanism::AesKeyWrapPad, loose, data_key)),
        RvError::WrappingKeyTypeInconsistent
    );
    assert_eq!(session.wrap_key(&Mechanism::AesKeyWrapPad, kept, data_key).unwrap().len(), 40);
}

#[test]
fn a_configuration_without_a_device_fails_initialisation_cleanly() {
    let test = "a_configuration_without_a_device_fails_initialisation_cleanly";
    if !in_child(test, "timeout_ms = 10\n") {
        return;
    }
    let ctx = Pkcs11::new(module()).unwrap();
    let err = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap_err();
    assert!(matches!(err, CkError::Pkcs11(RvError::GeneralError, Function::Initialize)), "{err}");
    assert_eq!(rv(ctx.get_all_slots()), RvError::CryptokiNotInitialized);
}

/// `fwsim serve` on a Unix socket under `dir`.
fn fwsim(dir: &Path) -> Child {
    let bin = build_dir().join("fwsim");
    assert!(bin.exists(), "{} is not built", bin.display());
    let ready = dir.join("ready.json");
    let mut child = Command::new(bin)
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", dir.join("fwsim.sock").display()))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--ready-file")
        .arg(&ready)
        .stderr(std::fs::File::create(dir.join("fwsim.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(child.try_wait().unwrap().is_none(), "fwsim exited");
        assert!(Instant::now() < deadline, "fwsim did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn a_remote_device_through_its_socket() {
    if !in_child(
        "a_remote_device_through_its_socket",
        "device = \"unix:$DIR/fwsim.sock\"\ntimeout_ms = 5000\n",
    ) {
        return;
    }
    let dir = test_dir();
    let mut device = fwsim(&dir);
    let ctx = load();
    let slot = provision(&ctx);
    let session = user_session(&ctx, slot);
    let key = aes(&session, false, "remote");
    gcm_round_trip(&session, key);
    // Concurrent sessions from several threads share the application's login.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let ctx = &ctx;
            scope.spawn(move || {
                let s = ctx.open_ro_session(slot).unwrap();
                for _ in 0..50 {
                    gcm_round_trip(&s, key);
                }
            });
        }
    });
    // A re-initialised library is a new application: it logs in again and works.
    drop(session);
    ctx.clone().finalize().unwrap();
    let ctx = load();
    let session = user_session(&ctx, slot);
    gcm_round_trip(&session, aes(&session, false, "after re-initialisation"));
    // The device dies: calls fail with a device error, nothing panics.
    device.kill().unwrap();
    device.wait().unwrap();
    let err = rv(session.generate_random_vec(8));
    assert!(matches!(err, RvError::DeviceError | RvError::DeviceRemoved), "{err:?}");
    let err = rv(ctx.open_ro_session(slot));
    assert!(matches!(err, RvError::DeviceError | RvError::DeviceRemoved), "{err:?}");
}
