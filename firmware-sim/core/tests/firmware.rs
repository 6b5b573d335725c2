//! The firmware through its command interface: tokens, PINs, sessions, the attribute rules a
//! real token enforces, a full object table, and every mechanism end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use firmware_sim_core::attribute::{Attribute, Value, cka, ckk, cko};
use firmware_sim_core::command::{LABEL_BYTES, UserType, token_flags};
use firmware_sim_core::mechanism::{Mechanism, Param, ckg, ckm};
use firmware_sim_core::object::{OID_P256, OID_P384, SecretBytes};
use firmware_sim_core::{Command, Error, Firmware, Limits, Policy, Response};
use rand_core::OsRng;

const APP: u64 = 1;
const SO_PIN: &[u8] = b"so-pin-1234";
const PIN: &[u8] = b"user-pin-1234";

type Fw = Firmware<OsRng, 64>;

fn secret(b: &[u8]) -> SecretBytes {
    SecretBytes::new(b.to_vec())
}

fn label(text: &str) -> [u8; LABEL_BYTES] {
    let mut l = [b' '; LABEL_BYTES];
    l[..text.len()].copy_from_slice(text.as_bytes());
    l
}

/// An initialised token with a user PIN, and a logged-in read-write session.
fn token(limits: Limits) -> (Fw, u32) {
    token_under(limits, Policy::Standard)
}

/// [`token`] enforcing `policy`.
fn token_under(limits: Limits, policy: Policy) -> (Fw, u32) {
    let mut fw = Fw::new(OsRng, limits).with_policy(policy);
    fw.execute(APP, Command::InitToken { so_pin: secret(SO_PIN), label: label("test") }).unwrap();
    let s = session(&mut fw, APP, true);
    fw.execute(APP, Command::Login { session: s, user: UserType::So, pin: secret(SO_PIN) })
        .unwrap();
    fw.execute(APP, Command::InitPin { session: s, pin: secret(PIN) }).unwrap();
    fw.execute(APP, Command::Logout { session: s }).unwrap();
    fw.execute(APP, Command::Login { session: s, user: UserType::User, pin: secret(PIN) }).unwrap();
    (fw, s)
}

fn session(fw: &mut Fw, app: u64, rw: bool) -> u32 {
    match fw.execute(app, Command::OpenSession { read_write: rw }).unwrap() {
        Response::Session(s) => s,
        other => panic!("{other:?}"),
    }
}

fn object(r: Result<Response, Error>) -> u32 {
    match r.unwrap() {
        Response::Object(h) => h,
        other => panic!("{other:?}"),
    }
}

fn data(r: Result<Response, Error>) -> Vec<u8> {
    match r.unwrap() {
        Response::Data(d) => d.expose().to_vec(),
        other => panic!("{other:?}"),
    }
}

fn aes_template(extra: &[Attribute]) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
        Attribute::ulong(cka::KEY_TYPE, ckk::AES),
        Attribute::ulong(cka::VALUE_LEN, 32),
    ];
    t.extend_from_slice(extra);
    t
}

fn aes_key(fw: &mut Fw, s: u32, extra: &[Attribute]) -> u32 {
    object(fw.execute(
        APP,
        Command::GenerateKey {
            session: s,
            mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
            template: aes_template(extra),
        },
    ))
}

fn gcm(iv: u8, aad: &[u8]) -> Mechanism {
    Mechanism {
        kind: ckm::AES_GCM,
        param: Param::Gcm { iv: vec![iv; 12], aad: aad.to_vec(), tag_bits: 128 },
    }
}

fn attrs(fw: &mut Fw, s: u32, o: u32, kinds: &[u64]) -> Vec<Value> {
    match fw.execute(APP, Command::GetAttributes { session: s, object: o, kinds: kinds.to_vec() }) {
        Ok(Response::Attributes(v)) => v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_blank_token_must_be_initialised_first() {
    let mut fw = Fw::new(OsRng, Limits::default());
    assert_eq!(
        fw.execute(APP, Command::OpenSession { read_write: true }).unwrap_err(),
        Error::TokenNotRecognized
    );
    let Response::TokenInfo(info) = fw.execute(APP, Command::TokenInfo).unwrap() else { panic!() };
    assert_eq!(info.flags & token_flags::TOKEN_INITIALIZED, 0);
}

#[test]
fn wrong_pins_count_down_and_lock_the_token() {
    let (mut fw, s) = token(Limits::default());
    fw.execute(APP, Command::Logout { session: s }).unwrap();
    for attempt in 1..=4 {
        let r = fw.execute(
            APP,
            Command::Login { session: s, user: UserType::User, pin: secret(b"wrong-pin") },
        );
        assert_eq!(r.unwrap_err(), Error::PinIncorrect, "attempt {attempt}");
    }
    let Response::TokenInfo(info) = fw.execute(APP, Command::TokenInfo).unwrap() else { panic!() };
    assert_ne!(info.flags & token_flags::USER_PIN_FINAL_TRY, 0, "{:#x}", info.flags);
    let r = fw.execute(
        APP,
        Command::Login { session: s, user: UserType::User, pin: secret(b"wrong-pin") },
    );
    assert_eq!(r.unwrap_err(), Error::PinLocked);
    // Locked: even the right PIN fails, and the lock survives a restart.
    let r = fw.execute(APP, Command::Login { session: s, user: UserType::User, pin: secret(PIN) });
    assert_eq!(r.unwrap_err(), Error::PinLocked);
    let image = fw.image();
    let mut again = Fw::restore(OsRng, Limits::default(), image).unwrap();
    let Response::TokenInfo(info) = again.execute(APP, Command::TokenInfo).unwrap() else {
        panic!()
    };
    assert_ne!(info.flags & token_flags::USER_PIN_LOCKED, 0);
    // The SO unlocks it by setting a new user PIN.
    let s = session(&mut again, APP, true);
    again
        .execute(APP, Command::Login { session: s, user: UserType::So, pin: secret(SO_PIN) })
        .unwrap();
    again.execute(APP, Command::InitPin { session: s, pin: secret(b"new-user-pin") }).unwrap();
    again.execute(APP, Command::Logout { session: s }).unwrap();
    again
        .execute(
            APP,
            Command::Login { session: s, user: UserType::User, pin: secret(b"new-user-pin") },
        )
        .unwrap();
}

#[test]
fn pins_have_length_limits_and_login_rules() {
    let (mut fw, s) = token(Limits::default());
    assert_eq!(
        fw.execute(APP, Command::Login { session: s, user: UserType::User, pin: secret(PIN) })
            .unwrap_err(),
        Error::UserAlreadyLoggedIn
    );
    assert_eq!(
        fw.execute(APP, Command::Login { session: s, user: UserType::So, pin: secret(SO_PIN) })
            .unwrap_err(),
        Error::UserAnotherAlreadyLoggedIn
    );
    assert_eq!(
        fw.execute(APP, Command::SetPin { session: s, old: secret(PIN), new: secret(b"abc") })
            .unwrap_err(),
        Error::PinLenRange
    );
    // Another application is not logged in by this one's login.
    let other = session(&mut fw, 2, false);
    let key = aes_key(&mut fw, s, &[]);
    assert_eq!(
        fw.execute(
            2,
            Command::GetAttributes { session: other, object: key, kinds: vec![cka::CLASS] }
        )
        .unwrap_err(),
        Error::ObjectHandleInvalid
    );
    // And cannot use this application's sessions.
    assert_eq!(
        fw.execute(2, Command::Random { session: s, len: 4 }).unwrap_err(),
        Error::SessionHandleInvalid
    );
}

#[test]
fn sensitive_values_are_never_returned_and_unextractable_keys_never_wrapped() {
    let (mut fw, s) = token(Limits::default());
    let sensitive = aes_key(&mut fw, s, &[Attribute::bool(cka::EXTRACTABLE, true)]);
    let open = aes_key(
        &mut fw,
        s,
        &[Attribute::bool(cka::SENSITIVE, false), Attribute::bool(cka::EXTRACTABLE, true)],
    );
    let locked = aes_key(&mut fw, s, &[Attribute::bool(cka::EXTRACTABLE, false)]);
    assert_eq!(attrs(&mut fw, s, sensitive, &[cka::VALUE]), vec![Value::Sensitive]);
    assert_eq!(attrs(&mut fw, s, locked, &[cka::VALUE]), vec![Value::Sensitive]);
    let Value::Present(v) = &attrs(&mut fw, s, open, &[cka::VALUE])[0] else { panic!() };
    assert_eq!(v.len(), 32);
    assert_eq!(
        attrs(
            &mut fw,
            s,
            locked,
            &[cka::ALWAYS_SENSITIVE, cka::NEVER_EXTRACTABLE, cka::LOCAL, cka::MODULUS]
        ),
        vec![
            Value::Present(vec![1]),
            Value::Present(vec![1]),
            Value::Present(vec![1]),
            Value::Invalid
        ]
    );
    let kwp = Mechanism::plain(ckm::AES_KEY_WRAP_PAD);
    let wrap = |fw: &mut Fw, key| {
        fw.execute(
            APP,
            Command::WrapKey { session: s, mechanism: kwp.clone(), wrapping_key: sensitive, key },
        )
    };
    assert_eq!(wrap(&mut fw, locked).unwrap_err(), Error::KeyUnextractable);
    // A sensitive but extractable key may leave wrapped, never in clear.
    let blob = data(wrap(&mut fw, open));
    let back = object(fw.execute(
        APP,
        Command::UnwrapKey {
            session: s,
            mechanism: kwp.clone(),
            unwrapping_key: sensitive,
            wrapped: blob,
            template: aes_template(&[
                Attribute::bool(cka::SENSITIVE, false),
                Attribute::bool(cka::EXTRACTABLE, true),
            ]),
        },
    ));
    assert_eq!(attrs(&mut fw, s, back, &[cka::VALUE]), attrs(&mut fw, s, open, &[cka::VALUE]));
    assert_eq!(
        attrs(&mut fw, s, back, &[cka::LOCAL, cka::ALWAYS_SENSITIVE]),
        vec![Value::Present(vec![0]), Value::Present(vec![0])]
    );
    // Sensitive cannot be turned off, extractable cannot be turned back on.
    let set = |fw: &mut Fw, o, a| {
        fw.execute(APP, Command::SetAttributes { session: s, object: o, template: vec![a] })
    };
    assert_eq!(
        set(&mut fw, sensitive, Attribute::bool(cka::SENSITIVE, false)).unwrap_err(),
        Error::AttributeReadOnly
    );
    assert_eq!(
        set(&mut fw, locked, Attribute::bool(cka::EXTRACTABLE, true)).unwrap_err(),
        Error::AttributeReadOnly
    );
    set(&mut fw, open, Attribute::bool(cka::SENSITIVE, true)).unwrap();
    assert_eq!(attrs(&mut fw, s, open, &[cka::VALUE]), vec![Value::Sensitive]);
    assert_eq!(
        set(&mut fw, open, Attribute::bool(cka::LOCAL, false)).unwrap_err(),
        Error::AttributeReadOnly
    );
    assert_eq!(
        set(&mut fw, open, Attribute::bool(0x4242, false)).unwrap_err(),
        Error::AttributeTypeInvalid
    );
}

#[test]
fn keys_do_only_what_their_flags_allow() {
    let (mut fw, s) = token(Limits::default());
    let enc_only = aes_key(
        &mut fw,
        s,
        &[Attribute::bool(cka::DECRYPT, false), Attribute::bool(cka::WRAP, false)],
    );
    let sealed = data(fw.execute(
        APP,
        Command::Encrypt { session: s, mechanism: gcm(1, b"a"), key: enc_only, data: secret(b"x") },
    ));
    assert_eq!(
        fw.execute(
            APP,
            Command::Decrypt { session: s, mechanism: gcm(1, b"a"), key: enc_only, data: sealed }
        )
        .unwrap_err(),
        Error::KeyFunctionNotPermitted
    );
    let other = aes_key(&mut fw, s, &[Attribute::bool(cka::EXTRACTABLE, true)]);
    assert_eq!(
        fw.execute(
            APP,
            Command::WrapKey {
                session: s,
                mechanism: Mechanism::plain(ckm::AES_KEY_WRAP_PAD),
                wrapping_key: enc_only,
                key: other
            }
        )
        .unwrap_err(),
        Error::KeyFunctionNotPermitted
    );
    assert_eq!(
        fw.execute(
            APP,
            Command::Sign {
                session: s,
                mechanism: Mechanism::plain(ckm::ECDSA_SHA256),
                key: other,
                data: b"m".to_vec()
            }
        )
        .unwrap_err(),
        Error::KeyTypeInconsistent
    );
    assert_eq!(
        fw.execute(
            APP,
            Command::Encrypt {
                session: s,
                mechanism: Mechanism::plain(ckm::AES_GCM),
                key: other,
                data: secret(b"x")
            }
        )
        .unwrap_err(),
        Error::MechanismParamInvalid
    );
    assert_eq!(
        fw.execute(
            APP,
            Command::Encrypt {
                session: s,
                mechanism: Mechanism::plain(0x1081),
                key: other,
                data: secret(b"x")
            }
        )
        .unwrap_err(),
        Error::MechanismInvalid
    );
    assert_eq!(
        fw.execute(
            APP,
            Command::Encrypt { session: s, mechanism: gcm(1, b""), key: 9999, data: secret(b"x") }
        )
        .unwrap_err(),
        Error::KeyHandleInvalid
    );
}

#[test]
fn gcm_round_trips_and_rejects_any_change() {
    let (mut fw, s) = token(Limits::default());
    let k = aes_key(&mut fw, s, &[]);
    let k2 = aes_key(&mut fw, s, &[]);
    let sealed = data(fw.execute(
        APP,
        Command::Encrypt {
            session: s,
            mechanism: gcm(3, b"aad"),
            key: k,
            data: secret(b"plaintext"),
        },
    ));
    assert_eq!(sealed.len(), 9 + 16);
    let open = |fw: &mut Fw, m, key, d: Vec<u8>| {
        fw.execute(APP, Command::Decrypt { session: s, mechanism: m, key, data: d })
    };
    assert_eq!(data(open(&mut fw, gcm(3, b"aad"), k, sealed.clone())), b"plaintext");
    assert_eq!(
        open(&mut fw, gcm(3, b"aaD"), k, sealed.clone()).unwrap_err(),
        Error::EncryptedDataInvalid
    );
    assert_eq!(
        open(&mut fw, gcm(4, b"aad"), k, sealed.clone()).unwrap_err(),
        Error::EncryptedDataInvalid
    );
    assert_eq!(
        open(&mut fw, gcm(3, b"aad"), k2, sealed.clone()).unwrap_err(),
        Error::EncryptedDataInvalid
    );
    let mut bad = sealed;
    bad[0] ^= 1;
    assert_eq!(open(&mut fw, gcm(3, b"aad"), k, bad).unwrap_err(), Error::EncryptedDataInvalid);
}

#[test]
fn rsa_and_ec_pairs_sign_and_verify_with_every_mechanism() {
    let (mut fw, s) = token(Limits::default());
    let pss =
        |kind, hash, mgf, salt_len| Mechanism { kind, param: Param::Pss { hash, mgf, salt_len } };
    let rsa_mechanisms = [
        Mechanism::plain(ckm::SHA256_RSA_PKCS),
        Mechanism::plain(ckm::SHA384_RSA_PKCS),
        Mechanism::plain(ckm::SHA512_RSA_PKCS),
        pss(ckm::SHA256_RSA_PKCS_PSS, ckm::SHA256, ckg::MGF1_SHA256, 32),
        pss(ckm::SHA384_RSA_PKCS_PSS, ckm::SHA384, ckg::MGF1_SHA384, 48),
        pss(ckm::SHA512_RSA_PKCS_PSS, ckm::SHA512, ckg::MGF1_SHA512, 64),
    ];
    let Response::Pair { public, private } = fw
        .execute(
            APP,
            Command::GenerateKeyPair {
                session: s,
                mechanism: Mechanism::plain(ckm::RSA_PKCS_KEY_PAIR_GEN),
                public: vec![Attribute::ulong(cka::MODULUS_BITS, 2048)],
                private: vec![],
            },
        )
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        attrs(&mut fw, s, public, &[cka::MODULUS_BITS]),
        vec![Value::Present(2048u64.to_le_bytes().to_vec())]
    );
    assert_eq!(attrs(&mut fw, s, private, &[cka::PRIVATE_EXPONENT]), vec![Value::Sensitive]);
    for m in rsa_mechanisms {
        let sig = data(fw.execute(
            APP,
            Command::Sign {
                session: s,
                mechanism: m.clone(),
                key: private,
                data: b"message".to_vec(),
            },
        ));
        assert_eq!(sig.len(), 256);
        fw.execute(
            APP,
            Command::Verify {
                session: s,
                mechanism: m.clone(),
                key: public,
                data: b"message".to_vec(),
                signature: sig.clone(),
            },
        )
        .unwrap();
        assert_eq!(
            fw.execute(
                APP,
                Command::Verify {
                    session: s,
                    mechanism: m,
                    key: public,
                    data: b"messagE".to_vec(),
                    signature: sig
                }
            )
            .unwrap_err(),
            Error::SignatureInvalid
        );
    }
    // A PSS parameter that does not match the mechanism's hash is refused.
    assert_eq!(
        fw.execute(
            APP,
            Command::Sign {
                session: s,
                mechanism: pss(ckm::SHA256_RSA_PKCS_PSS, ckm::SHA384, ckg::MGF1_SHA384, 48),
                key: private,
                data: vec![]
            }
        )
        .unwrap_err(),
        Error::MechanismParamInvalid
    );
    for (oid, len) in [(OID_P256, 64), (OID_P384, 96)] {
        let Response::Pair { public, private } = fw
            .execute(
                APP,
                Command::GenerateKeyPair {
                    session: s,
                    mechanism: Mechanism::plain(ckm::EC_KEY_PAIR_GEN),
                    public: vec![Attribute::bytes(cka::EC_PARAMS, oid)],
                    private: vec![Attribute::bool(cka::SENSITIVE, true)],
                },
            )
            .unwrap()
        else {
            panic!()
        };
        for kind in [ckm::ECDSA_SHA256, ckm::ECDSA_SHA384, ckm::ECDSA_SHA512] {
            let sig = data(fw.execute(
                APP,
                Command::Sign {
                    session: s,
                    mechanism: Mechanism::plain(kind),
                    key: private,
                    data: b"m".to_vec(),
                },
            ));
            assert_eq!(sig.len(), len);
            fw.execute(
                APP,
                Command::Verify {
                    session: s,
                    mechanism: Mechanism::plain(kind),
                    key: public,
                    data: b"m".to_vec(),
                    signature: sig,
                },
            )
            .unwrap();
        }
        let Value::Present(point) = &attrs(&mut fw, s, public, &[cka::EC_POINT])[0] else {
            panic!()
        };
        assert_eq!(point[0], 0x04, "a DER OCTET STRING");
    }
    assert_eq!(
        fw.execute(
            APP,
            Command::GenerateKeyPair {
                session: s,
                mechanism: Mechanism::plain(ckm::EC_KEY_PAIR_GEN),
                public: vec![Attribute::bytes(cka::EC_PARAMS, &[0x06, 0x03, 0x2B, 0x65, 0x70])],
                private: vec![],
            }
        )
        .unwrap_err(),
        Error::CurveNotSupported
    );
}

#[test]
fn a_full_object_table_answers_device_memory() {
    let (mut fw, s) = token(Limits { sessions: 8, objects: 5 });
    for _ in 0..5 {
        aes_key(&mut fw, s, &[]);
    }
    let r = fw.execute(
        APP,
        Command::GenerateKey {
            session: s,
            mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
            template: aes_template(&[]),
        },
    );
    assert_eq!(r.unwrap_err(), Error::DeviceMemory);
    // Closing the session frees its session objects.
    fw.execute(APP, Command::CloseSession { session: s }).unwrap();
    assert_eq!(fw.object_count(), 0);
    for _ in 0..8 {
        session(&mut fw, APP, false);
    }
    assert_eq!(
        fw.execute(APP, Command::OpenSession { read_write: false }).unwrap_err(),
        Error::SessionCount
    );
}

#[test]
fn token_objects_persist_and_session_objects_do_not() {
    let (mut fw, s) = token(Limits::default());
    let kept = aes_key(
        &mut fw,
        s,
        &[Attribute::bool(cka::TOKEN, true), Attribute::bytes(cka::LABEL, b"mkek")],
    );
    aes_key(&mut fw, s, &[]);
    assert!(fw.take_dirty());
    let sealed = data(fw.execute(
        APP,
        Command::Encrypt {
            session: s,
            mechanism: gcm(9, b""),
            key: kept,
            data: secret(b"survives"),
        },
    ));
    let image = firmware_sim_core::encode(&fw.image()).unwrap();
    let mut again =
        Fw::restore(OsRng, Limits::default(), firmware_sim_core::decode(&image).unwrap()).unwrap();
    let s = session(&mut again, APP, false);
    again
        .execute(APP, Command::Login { session: s, user: UserType::User, pin: secret(PIN) })
        .unwrap();
    let Response::Objects(found) = again
        .execute(
            APP,
            Command::FindObjects {
                session: s,
                template: vec![Attribute::bytes(cka::LABEL, b"mkek")],
            },
        )
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(found, vec![kept]);
    assert_eq!(again.object_count(), 1);
    assert_eq!(
        data(again.execute(
            APP,
            Command::Decrypt { session: s, mechanism: gcm(9, b""), key: kept, data: sealed }
        )),
        b"survives"
    );
    // A new object never reuses an old handle.
    let new = aes_key(&mut again, s, &[]);
    assert!(new > kept);
    // Token objects need a read-write session; private ones need a login.
    assert_eq!(
        again
            .execute(
                APP,
                Command::GenerateKey {
                    session: s,
                    mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
                    template: aes_template(&[Attribute::bool(cka::TOKEN, true)])
                }
            )
            .unwrap_err(),
        Error::SessionReadOnly
    );
    again.execute(APP, Command::Logout { session: s }).unwrap();
    assert_eq!(
        again
            .execute(
                APP,
                Command::GenerateKey {
                    session: s,
                    mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
                    template: aes_template(&[])
                }
            )
            .unwrap_err(),
        Error::UserNotLoggedIn
    );
    // A tamper event wipes every key.
    again.tamper();
    assert_eq!(again.object_count(), 0);
    assert_eq!(
        again.execute(APP, Command::Random { session: s, len: 1 }).unwrap_err(),
        Error::SessionHandleInvalid
    );
}

#[test]
fn templates_are_checked() {
    let (mut fw, s) = token(Limits::default());
    let generate = |fw: &mut Fw, template| {
        fw.execute(
            APP,
            Command::GenerateKey {
                session: s,
                mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
                template,
            },
        )
    };
    assert_eq!(generate(&mut fw, vec![]).unwrap_err(), Error::TemplateIncomplete);
    assert_eq!(
        generate(&mut fw, vec![Attribute::ulong(cka::VALUE_LEN, 24)]).unwrap_err(),
        Error::AttributeValueInvalid
    );
    assert_eq!(
        generate(&mut fw, aes_template(&[Attribute::ulong(cka::KEY_TYPE, ckk::RSA)])).unwrap_err(),
        Error::TemplateInconsistent
    );
    assert_eq!(
        generate(&mut fw, aes_template(&[Attribute::bool(cka::LOCAL, true)])).unwrap_err(),
        Error::AttributeReadOnly
    );
    assert_eq!(
        generate(&mut fw, aes_template(&[Attribute { kind: cka::TOKEN, value: vec![1, 2] }]))
            .unwrap_err(),
        Error::AttributeValueInvalid
    );
    assert_eq!(
        generate(&mut fw, aes_template(&[Attribute::bytes(cka::LABEL, &[b'x'; 65])])).unwrap_err(),
        Error::AttributeValueInvalid
    );
    assert_eq!(
        generate(&mut fw, aes_template(&[Attribute::bool(0x7777, true)])).unwrap_err(),
        Error::AttributeTypeInvalid
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any bytes decode to a command or a clean error, never a panic.
        #[test]
        fn hostile_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = firmware_sim_core::decode::<Command>(&bytes);
        }

        /// Whatever is sealed opens to the same bytes, under the same AAD only.
        #[test]
        fn gcm_round_trip(plain in proptest::collection::vec(any::<u8>(), 0..300), aad in proptest::collection::vec(any::<u8>(), 0..40)) {
            let (mut fw, s) = token(Limits::default());
            let k = aes_key(&mut fw, s, &[]);
            let sealed = data(fw.execute(APP, Command::Encrypt { session: s, mechanism: gcm(5, &aad), key: k, data: secret(&plain) }));
            prop_assert_eq!(data(fw.execute(APP, Command::Decrypt { session: s, mechanism: gcm(5, &aad), key: k, data: sealed.clone() })), plain);
            let mut other = aad.clone();
            other.push(0);
            prop_assert_eq!(fw.execute(APP, Command::Decrypt { session: s, mechanism: gcm(5, &other), key: k, data: sealed }).unwrap_err(), Error::EncryptedDataInvalid);
        }

        /// Any key wraps and unwraps to itself.
        #[test]
        fn kwp_round_trip(value in proptest::collection::vec(any::<u8>(), 1..200)) {
            let (mut fw, s) = token(Limits::default());
            let kek = aes_key(&mut fw, s, &[]);
            let created = object(fw.execute(APP, Command::CreateObject { session: s, template: vec![
                Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
                Attribute::ulong(cka::KEY_TYPE, ckk::GENERIC_SECRET),
                Attribute::bytes(cka::VALUE, &value),
                Attribute::bool(cka::SENSITIVE, false),
                Attribute::bool(cka::EXTRACTABLE, true),
            ]}));
            let blob = data(fw.execute(APP, Command::WrapKey { session: s, mechanism: Mechanism::plain(ckm::AES_KEY_WRAP_PAD), wrapping_key: kek, key: created }));
            let back = object(fw.execute(APP, Command::UnwrapKey { session: s, mechanism: Mechanism::plain(ckm::AES_KEY_WRAP_PAD), unwrapping_key: kek, wrapped: blob, template: vec![
                Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
                Attribute::ulong(cka::KEY_TYPE, ckk::GENERIC_SECRET),
                Attribute::bool(cka::SENSITIVE, false),
                Attribute::bool(cka::EXTRACTABLE, true),
            ]}));
            prop_assert_eq!(attrs(&mut fw, s, back, &[cka::VALUE]), vec![Value::Present(value)]);
        }
    }
}

/// Encryption under an IV the device draws after `fixed`.
fn gcm_drawn(fixed: &[u8], aad: &[u8]) -> Mechanism {
    Mechanism {
        kind: ckm::AES_GCM,
        param: Param::GcmGenerated { fixed: fixed.to_vec(), aad: aad.to_vec(), tag_bits: 128 },
    }
}

#[test]
fn fips_mode_draws_gcm_ivs_inside_and_refuses_the_callers() {
    let plaintext = b"a volume key".to_vec();
    for policy in [Policy::Standard, Policy::Fips] {
        let (mut fw, s) = token_under(Limits::default(), policy);
        let key = aes_key(
            &mut fw,
            s,
            &[Attribute::bool(cka::ENCRYPT, true), Attribute::bool(cka::DECRYPT, true)],
        );
        let encrypt = |fw: &mut Fw, mechanism| {
            fw.execute(
                APP,
                Command::Encrypt { session: s, mechanism, key, data: secret(&plaintext) },
            )
        };
        let callers = encrypt(&mut fw, gcm(7, b"aad"));
        match policy {
            Policy::Fips => assert_eq!(callers.unwrap_err(), Error::MechanismParamInvalid),
            Policy::Standard => assert_eq!(data(callers).len(), plaintext.len() + 16),
        }
        // The drawn IV leads the output, differs each time, and keeps the caller's fixed part.
        let first = data(encrypt(&mut fw, gcm_drawn(&[], b"aad")));
        let second = data(encrypt(&mut fw, gcm_drawn(&[], b"aad")));
        assert_eq!(first.len(), 12 + plaintext.len() + 16);
        assert_ne!(first[..12], second[..12], "{policy:?}");
        let fixed = data(encrypt(&mut fw, gcm_drawn(&[0xA5; 4], b"aad")));
        assert_eq!(fixed[..4], [0xA5; 4]);
        assert_eq!(
            encrypt(&mut fw, gcm_drawn(&[0; 13], b"aad")).unwrap_err(),
            Error::MechanismParamInvalid
        );
        for sealed in [&first, &second, &fixed] {
            let (iv, body) = sealed.split_at(12);
            let mechanism = Mechanism {
                kind: ckm::AES_GCM,
                param: Param::Gcm { iv: iv.to_vec(), aad: b"aad".to_vec(), tag_bits: 128 },
            };
            let opened = data(fw.execute(
                APP,
                Command::Decrypt { session: s, mechanism, key, data: body.to_vec() },
            ));
            assert_eq!(opened, plaintext, "{policy:?}");
        }
    }
}

#[test]
fn fips_mode_keeps_keys_sensitive_single_purpose_and_inside() {
    let (mut std_fw, std_s) = token(Limits::default());
    let (mut fw, s) = token_under(Limits::default(), Policy::Fips);
    let generate = |fw: &mut Fw, s, template| {
        fw.execute(
            APP,
            Command::GenerateKey {
                session: s,
                mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
                template,
            },
        )
    };
    // Two purposes, or a secret key in the clear: the standard token allows both.
    let both =
        aes_template(&[Attribute::bool(cka::ENCRYPT, true), Attribute::bool(cka::WRAP, true)]);
    let open = aes_template(&[Attribute::bool(cka::SENSITIVE, false)]);
    for template in [both.clone(), open.clone()] {
        object(generate(&mut std_fw, std_s, template.clone()));
        assert_eq!(generate(&mut fw, s, template).unwrap_err(), Error::TemplateInconsistent);
    }
    // A purpose is named, never defaulted.
    let bare = object(generate(&mut fw, s, aes_template(&[])));
    let usage = [cka::ENCRYPT, cka::DECRYPT, cka::WRAP, cka::UNWRAP, cka::SIGN, cka::VERIFY];
    assert!(attrs(&mut fw, s, bare, &usage).iter().all(|v| *v == Value::Present(vec![0])));
    // Nor is a second purpose added later.
    let data_key = aes_key(&mut fw, s, &[Attribute::bool(cka::ENCRYPT, true)]);
    assert_eq!(
        fw.execute(
            APP,
            Command::SetAttributes {
                session: s,
                object: data_key,
                template: vec![Attribute::bool(cka::UNWRAP, true)],
            },
        )
        .unwrap_err(),
        Error::TemplateInconsistent
    );
    // No key comes in in the clear, and a generic secret has 112 bits at least.
    let import = fw.execute(
        APP,
        Command::CreateObject {
            session: s,
            template: vec![
                Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
                Attribute::ulong(cka::KEY_TYPE, ckk::AES),
                Attribute::bytes(cka::VALUE, &[7; 32]),
            ],
        },
    );
    assert_eq!(import.unwrap_err(), Error::ActionProhibited);
    let short = fw.execute(
        APP,
        Command::GenerateKey {
            session: s,
            mechanism: Mechanism::plain(ckm::GENERIC_SECRET_KEY_GEN),
            template: vec![
                Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
                Attribute::ulong(cka::KEY_TYPE, ckk::GENERIC_SECRET),
                Attribute::ulong(cka::VALUE_LEN, 8),
                Attribute::bool(cka::SIGN, true),
            ],
        },
    );
    assert_eq!(short.unwrap_err(), Error::KeySizeRange);
    // A key leaves only wrapped under a key that cannot leave itself.
    let leaving = aes_key(
        &mut fw,
        s,
        &[Attribute::bool(cka::EXTRACTABLE, true), Attribute::bool(cka::ENCRYPT, true)],
    );
    let loose = aes_key(
        &mut fw,
        s,
        &[Attribute::bool(cka::EXTRACTABLE, true), Attribute::bool(cka::WRAP, true)],
    );
    let kept = aes_key(
        &mut fw,
        s,
        &[Attribute::bool(cka::EXTRACTABLE, false), Attribute::bool(cka::WRAP, true)],
    );
    let wrap = |fw: &mut Fw, wrapping_key| {
        fw.execute(
            APP,
            Command::WrapKey {
                session: s,
                mechanism: Mechanism::plain(ckm::AES_KEY_WRAP_PAD),
                wrapping_key,
                key: leaving,
            },
        )
    };
    assert_eq!(wrap(&mut fw, loose).unwrap_err(), Error::WrappingKeyTypeInconsistent);
    assert_eq!(data(wrap(&mut fw, kept)).len(), 40);
    assert_eq!(attrs(&mut fw, s, leaving, &[cka::VALUE]), vec![Value::Sensitive]);
}

/// ECDH: the derived key is the shared secret's x-coordinate, as the other party computes it;
/// a key of the agreement wraps, a key without CKA_DERIVE, another KDF and a point off the
/// curve are refused.
#[test]
fn ecdh_derives_the_key_the_other_party_computes() {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let (mut fw, s) = token(Limits::default());
    let pair = |fw: &mut Fw, derive: bool| {
        let Response::Pair { public, private } = fw
            .execute(
                APP,
                Command::GenerateKeyPair {
                    session: s,
                    mechanism: Mechanism::plain(ckm::EC_KEY_PAIR_GEN),
                    public: vec![Attribute::bytes(cka::EC_PARAMS, OID_P256)],
                    private: vec![Attribute::bool(cka::DERIVE, derive)],
                },
            )
            .unwrap()
        else {
            panic!()
        };
        (public, private)
    };
    let (public, private) = pair(&mut fw, true);
    let values = attrs(&mut fw, s, public, &[cka::EC_POINT]);
    let Some(Value::Present(point)) = values.first() else { panic!() };
    let point = &point[2..]; // the DER OCTET STRING's header
    let ours = p256::SecretKey::random(&mut OsRng);
    let our_point = ours.public_key().to_encoded_point(false).as_bytes().to_vec();
    let ecdh = |kdf, public: Vec<u8>| Mechanism {
        kind: ckm::ECDH1_DERIVE,
        param: Param::Ecdh { kdf, public },
    };
    let template = vec![
        Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
        Attribute::ulong(cka::KEY_TYPE, ckk::AES),
        Attribute::ulong(cka::VALUE_LEN, 32),
        Attribute::bool(cka::SENSITIVE, false),
        Attribute::bool(cka::EXTRACTABLE, true),
    ];
    let derive = |fw: &mut Fw, mechanism, base| {
        fw.execute(
            APP,
            Command::DeriveKey { session: s, mechanism, base, template: template.clone() },
        )
    };
    let key = object(derive(&mut fw, ecdh(1, our_point.clone()), private));
    let their_public = p256::PublicKey::from_sec1_bytes(point).unwrap();
    let shared = p256::ecdh::diffie_hellman(ours.to_nonzero_scalar(), their_public.as_affine());
    assert_eq!(
        attrs(&mut fw, s, key, &[cka::VALUE]),
        vec![Value::Present(shared.raw_secret_bytes().to_vec())]
    );

    assert_eq!(
        derive(&mut fw, ecdh(2, our_point.clone()), private).unwrap_err(),
        Error::MechanismParamInvalid
    );
    let mut off_curve = our_point.clone();
    off_curve[40] ^= 1;
    assert_eq!(
        derive(&mut fw, ecdh(1, off_curve), private).unwrap_err(),
        Error::MechanismParamInvalid
    );
    // A raw point whose x-coordinate starts with 0x3f begins like a DER OCTET STRING of 63
    // bytes (`04 3f`): it is still read as the point it is.
    let ours = std::iter::repeat_with(|| p256::SecretKey::random(&mut OsRng))
        .find(|k| k.public_key().to_encoded_point(false).as_bytes()[1] == 0x3f)
        .unwrap();
    let their_public = p256::PublicKey::from_sec1_bytes(point).unwrap();
    let ambiguous = ours.public_key().to_encoded_point(false).as_bytes().to_vec();
    let key = object(derive(&mut fw, ecdh(1, ambiguous), private));
    let shared = p256::ecdh::diffie_hellman(ours.to_nonzero_scalar(), their_public.as_affine());
    assert_eq!(
        attrs(&mut fw, s, key, &[cka::VALUE]),
        vec![Value::Present(shared.raw_secret_bytes().to_vec())]
    );
    let (_, no_derive) = pair(&mut fw, false);
    assert_eq!(
        derive(&mut fw, ecdh(1, our_point), no_derive).unwrap_err(),
        Error::KeyFunctionNotPermitted
    );
}
