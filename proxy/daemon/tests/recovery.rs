//! Losing sessions and the library underneath the pool: the proxy recovers by itself.
//!
//! These tests run the proxy in-process, so that the test can reach the same PKCS#11 library
//! instance and pull it out from under the pool, as another component of a process, a token
//! reset or a crashed HSM client library would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use hsm_proxy::{Config, MkekPolicy, Proxy};
use hsm_proxy_proto::SecretBytes;
use hsm_proxy_proto::client::Client;
use hsm_proxy_proto::op::{Decrypt, Encrypt, GenerateKek, Health, Kek, Sealed};
use tokio::net::TcpListener;

use common::{Settings, Token};

async fn seal(client: &Client, kek: &Kek, text: &[u8]) -> Sealed {
    client
        .call(Encrypt {
            kek: kek.clone(),
            plaintext: SecretBytes::copy_from(text),
            aad: b"aad".to_vec(),
        })
        .await
        .unwrap()
}

async fn open(client: &Client, kek: &Kek, sealed: &Sealed) -> Vec<u8> {
    client
        .call(Decrypt { kek: kek.clone(), sealed: sealed.clone(), aad: b"aad".to_vec() })
        .await
        .unwrap()
        .expose_secret()
        .to_vec()
}

/// Starts the proxy in this process; returns a client, the metrics and the stop switch.
async fn start_in_process(
    token: &Token,
) -> (
    Client,
    std::sync::Arc<hsm_proxy::Metrics>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (path, pki) = common::write_config(token, &Settings::default());
    let config = Config::load(&path).unwrap();
    hsm_proxy::init_token(&config).unwrap();
    let proxy = Proxy::start(&config, MkekPolicy::Require).unwrap();
    let metrics = proxy.metrics();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        proxy
            .serve(listener, None, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let client = common::client_for(addr, &pki.ca_cert, &pki.client_cert, &pki.client_key);
    (client, metrics, stop, served)
}

fn metric(metrics: &hsm_proxy::Metrics, series: &str) -> f64 {
    common::metric_value(&metrics.render(), series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lost_underneath_the_pool_are_replaced() {
    let parent_token = match std::env::var_os("HSM_PROXY_TEST_CHILD") {
        None => Some(Token::new().await),
        Some(_) => None,
    };
    if !common::in_child_process(
        "sessions_lost_underneath_the_pool_are_replaced",
        parent_token.as_ref(),
    ) {
        return;
    }
    let token = Token::from_parent();
    let (client, metrics, stop, served) = start_in_process(&token).await;

    let kek = client.call(GenerateKek).await.unwrap();
    let before = seal(&client, &kek, b"written before the loss").await;
    assert_eq!(open(&client, &kek, &before).await, b"written before the loss");

    // 1. The library is finalised underneath the pool: every session and the login are gone.
    let underneath = Pkcs11::new(common::module()).unwrap();
    underneath.clone().finalize().unwrap();
    // The next operations succeed: the pool re-initialises, logs in again, resolves the MKEK,
    // and unwraps the KEK anew from its blob.
    assert_eq!(open(&client, &kek, &before).await, b"written before the loss");
    let after = seal(&client, &kek, b"written after").await;
    assert_eq!(open(&client, &kek, &after).await, b"written after");
    assert!(client.call(Health).await.is_ok());
    assert_eq!(metric(&metrics, "hsm_proxy_reinitializations_total"), 1.0);

    // 2. Finalised and initialised again underneath: the old session handles are invalid and
    // the login is lost, but the library answers. Sessions are replaced, the login restored.
    underneath.clone().finalize().unwrap();
    underneath.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    for _ in 0..20 {
        assert_eq!(open(&client, &kek, &before).await, b"written before the loss");
        assert_eq!(open(&client, &kek, &after).await, b"written after");
    }
    assert!(metric(&metrics, "hsm_proxy_sessions_replaced_total") >= 1.0);
    // A worker logs in again on its new session and the key-holder is replaced in place; a
    // module that answers the lost login otherwise (SoftHSM2) costs one more re-initialisation.
    let reinitialized = metric(&metrics, "hsm_proxy_reinitializations_total");
    assert!((1.0..=2.0).contains(&reinitialized), "{reinitialized} re-initialisations");

    // Nothing failed from the client's point of view.
    let rendered = metrics.render();
    let failed = common::failed_operations(&rendered);
    assert_eq!(failed, 0.0, "{rendered}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), served).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_cannot_be_extracted_or_wrapped_out() {
    let parent_token = match std::env::var_os("HSM_PROXY_TEST_CHILD") {
        None => Some(Token::new().await),
        Some(_) => None,
    };
    if let Some(token) = &parent_token {
        let (config, _) = common::write_config(token, &Settings::default());
        let out = common::proxy_command(token)
            .args(["init-token", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    if !common::in_child_process(
        "the_master_key_cannot_be_extracted_or_wrapped_out",
        parent_token.as_ref(),
    ) {
        return;
    }
    use cryptoki::error::{Error as CkError, RvError};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let token = Token::from_parent();
    let ctx = Pkcs11::new(common::module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim() == token.label)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session.login(UserType::User, Some(&AuthPin::from(token.pin()))).unwrap();
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(b"hsm-proxy-mkek".to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    let mkek = found[0];

    let attrs = session
        .get_attributes(
            mkek,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::Token,
            ],
        )
        .unwrap();
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::NeverExtractable(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Token(true)), "{attrs:?}");

    // Its value cannot be read.
    let value = session.get_attributes(mkek, &[AttributeType::Value]).unwrap();
    assert!(!value.iter().any(|a| matches!(a, Attribute::Value(v) if !v.is_empty())), "{value:?}");

    // And it cannot be wrapped out under a key we control.
    let ours = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
            ],
        )
        .unwrap();
    for mechanism in [Mechanism::AesKeyWrapPad, Mechanism::AesKeyWrap] {
        match session.wrap_key(&mechanism, ours, mkek) {
            Err(CkError::Pkcs11(RvError::KeyUnextractable | RvError::KeyNotWrappable, _)) => {}
            other => panic!("wrapping the MKEK out must fail as unextractable, got {other:?}"),
        }
    }
}
