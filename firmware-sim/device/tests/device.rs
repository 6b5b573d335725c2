//! The device runtime: its state file, fault injection, tamper response and transport.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use firmware_sim::fault::FaultSpec;
use firmware_sim::transport::{self, Connection, Endpoint, Message, Reply};
use firmware_sim::{Admin, Device, DeviceOptions, Error, Profile};
use firmware_sim_core::attribute::{Attribute, cka, ckk, cko};
use firmware_sim_core::command::{LABEL_BYTES, UserType};
use firmware_sim_core::mechanism::{Mechanism, ckm};
use firmware_sim_core::object::SecretBytes;
use firmware_sim_core::{Command, Error as Ckr, Policy, Response};

const APP: u64 = 7;
const MARKER: &[u8; 32] = b"MARKER-key-value-0123456789abcde";

fn secret(b: &[u8]) -> SecretBytes {
    SecretBytes::new(b.to_vec())
}

fn open(state: Option<&std::path::Path>) -> Arc<Device> {
    Device::open(DeviceOptions {
        profile: Profile::built_in("ideal").unwrap(),
        state_file: state.map(Into::into),
        policy: Policy::Standard,
    })
    .unwrap()
}

/// Initialises the token and returns a logged-in read-write session.
fn provision(device: &Device) -> u32 {
    device.attach(APP);
    device
        .execute(
            APP,
            Command::InitToken { so_pin: secret(b"so-pin-1"), label: [b' '; LABEL_BYTES] },
        )
        .unwrap();
    let s = login(device, b"so-pin-1", UserType::So);
    device.execute(APP, Command::InitPin { session: s, pin: secret(b"user-pin-1") }).unwrap();
    device.execute(APP, Command::Logout { session: s }).unwrap();
    device
        .execute(
            APP,
            Command::Login { session: s, user: UserType::User, pin: secret(b"user-pin-1") },
        )
        .unwrap();
    s
}

fn login(device: &Device, pin: &[u8], user: UserType) -> u32 {
    let Response::Session(s) =
        device.execute(APP, Command::OpenSession { read_write: true }).unwrap()
    else {
        panic!()
    };
    device.execute(APP, Command::Login { session: s, user, pin: secret(pin) }).unwrap();
    s
}

fn token_key(device: &Device, s: u32) -> u32 {
    let template = vec![
        Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
        Attribute::ulong(cka::KEY_TYPE, ckk::AES),
        Attribute::bytes(cka::VALUE, MARKER),
        Attribute::bool(cka::TOKEN, true),
        Attribute::bytes(cka::LABEL, b"kept"),
    ];
    match device.execute(APP, Command::CreateObject { session: s, template }).unwrap() {
        Response::Object(h) => h,
        other => panic!("{other:?}"),
    }
}

fn find_kept(device: &Device, s: u32) -> Vec<u32> {
    let template = vec![Attribute::bytes(cka::LABEL, b"kept")];
    match device.execute(APP, Command::FindObjects { session: s, template }).unwrap() {
        Response::Objects(found) => found,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_state_file_keeps_token_objects_and_holds_no_key_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let device = open(Some(&state));
    let s = provision(&device);
    let key = token_key(&device, s);
    drop(device);

    let bytes = std::fs::read(&state).unwrap();
    assert!(!bytes.windows(MARKER.len()).any(|w| w == MARKER), "the key is in the file in clear");
    let key_file = firmware_sim::state::key_path(&state);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);

    let device = open(Some(&state));
    device.attach(APP);
    let s = login(&device, b"user-pin-1", UserType::User);
    assert_eq!(find_kept(&device, s), vec![key]);

    // Another device key cannot read the state; nor can a damaged file be read.
    drop(device);
    std::fs::write(&key_file, [0u8; 32]).unwrap();
    let err = Device::open(DeviceOptions {
        profile: Profile::built_in("ideal").unwrap(),
        state_file: Some(state.clone()),
        policy: Policy::Standard,
    })
    .unwrap_err();
    assert!(matches!(err, Error::State(_)), "{err}");
    std::fs::remove_file(&key_file).unwrap();
    let err = Device::open(DeviceOptions {
        profile: Profile::built_in("ideal").unwrap(),
        state_file: Some(state.clone()),
        policy: Policy::Standard,
    })
    .unwrap_err();
    assert!(err.to_string().contains("device key"), "{err}");
}

#[test]
fn injected_faults_fail_cleanly_and_stop_when_cleared() {
    let device = open(None);
    let s = provision(&device);
    let key = token_key(&device, s);
    device
        .admin(Admin::SetFaults(FaultSpec { device_error_rate: 1.0, ..FaultSpec::none() }))
        .unwrap();
    for _ in 0..20 {
        assert_eq!(
            device.execute(APP, Command::Random { session: s, len: 8 }).unwrap_err(),
            Ckr::DeviceError
        );
    }
    device.admin(Admin::SetFaults(FaultSpec::none())).unwrap();
    assert_eq!(find_kept(&device, s), vec![key]);

    device
        .admin(Admin::SetFaults(FaultSpec { drop_session_rate: 1.0, ..FaultSpec::none() }))
        .unwrap();
    assert_eq!(
        device.execute(APP, Command::Random { session: s, len: 8 }).unwrap_err(),
        Ckr::SessionHandleInvalid
    );
    device.admin(Admin::SetFaults(FaultSpec::none())).unwrap();
    // The dropped session stays dropped; a new one works. It was the application's last
    // session, so the login went with it.
    assert_eq!(
        device.execute(APP, Command::Random { session: s, len: 8 }).unwrap_err(),
        Ckr::SessionHandleInvalid
    );
    let s = login(&device, b"user-pin-1", UserType::User);
    assert_eq!(find_kept(&device, s), vec![key]);
    let status = device.admin(Admin::Status).unwrap();
    assert_eq!(status.injected.device_errors, 20);
    assert_eq!(status.injected.dropped_sessions, 1);

    // A stall delays commands; it does not fail them.
    device.admin(Admin::SetFaults(FaultSpec { stall_ms: 50, ..FaultSpec::none() })).unwrap();
    assert!(device.execute(APP, Command::Random { session: s, len: 8 }).is_ok());
    assert!(device.admin(Admin::Status).unwrap().injected.stalled >= 1);
    assert!(FaultSpec { device_error_rate: 2.0, ..FaultSpec::none() }.check().is_err());
}

#[test]
fn a_tamper_event_zeroizes_every_key_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let device = open(Some(&state));
    let s = provision(&device);
    token_key(&device, s);
    let status = device.admin(Admin::Tamper).unwrap();
    assert_eq!(status.objects, 0);
    assert_eq!(status.sessions, 0);
    drop(device);
    let device = open(Some(&state));
    device.attach(APP);
    let s = login(&device, b"user-pin-1", UserType::User);
    assert!(find_kept(&device, s).is_empty());
}

#[test]
fn the_fault_file_is_applied_when_it_changes_and_cleared_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.toml");
    let device = open(None);
    let mut watcher = firmware_sim::fault::FaultFile::new(&path);
    assert!(watcher.poll(device.faults()).unwrap().is_none());
    std::fs::write(&path, "device_error_rate = 0.25\nextra_latency_us = 10\n").unwrap();
    let spec = watcher.poll(device.faults()).unwrap().unwrap();
    assert_eq!(spec.device_error_rate, 0.25);
    assert_eq!(device.faults().spec().extra_latency_us, 10);
    assert!(watcher.poll(device.faults()).unwrap().is_none(), "unchanged");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(watcher.poll(device.faults()).unwrap().unwrap(), FaultSpec::none());
    std::fs::write(&path, "device_error_rate = 3\n").unwrap();
    assert!(watcher.poll(device.faults()).unwrap_err().to_string().contains("between 0 and 1"));
    // An unknown key is named.
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "typo = 1\n").unwrap();
    let err = firmware_sim::fault::FaultFile::new(&typo).poll(device.faults()).unwrap_err();
    assert!(err.to_string().contains("typo"), "{err}");
}

#[test]
fn the_transport_serves_clients_and_survives_hostile_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fwsim.sock");
    let device = open(None);
    provision(&device);
    device.detach(APP);
    let listener = transport::bind_unix(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (device, stop) = (Arc::clone(&device), Arc::clone(&stop));
        std::thread::spawn(move || transport::serve_unix(device, listener, stop));
    }
    let endpoint = Endpoint::Unix(path.clone());

    // Hostile peers: an oversized length, garbage, a command before Hello, a wrong version.
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    transport::write_frame(&mut s, &Message::Command(Command::TokenInfo)).unwrap();
    let reply: Option<Reply> = transport::read_frame(&mut s).unwrap();
    assert!(matches!(reply, Some(Reply::Refused(ref why)) if why.contains("Hello")), "{reply:?}");
    let mut s = UnixStream::connect(&path).unwrap();
    transport::write_frame(&mut s, &Message::Hello { version: 99, app: 1 }).unwrap();
    let reply: Option<Reply> = transport::read_frame(&mut s).unwrap();
    assert!(matches!(reply, Some(Reply::Refused(ref why)) if why.contains("99")), "{reply:?}");

    // A real client still gets served, and its sessions end with its connection.
    let mut client = Connection::open(&endpoint, 42, Duration::from_secs(5)).unwrap();
    let Response::Session(s) =
        client.command(Command::OpenSession { read_write: false }).unwrap().unwrap()
    else {
        panic!()
    };
    client
        .command(Command::Login { session: s, user: UserType::User, pin: secret(b"user-pin-1") })
        .unwrap()
        .unwrap();
    let Response::Data(random) =
        client.command(Command::Random { session: s, len: 32 }).unwrap().unwrap()
    else {
        panic!()
    };
    assert_eq!(random.expose().len(), 32);
    assert_eq!(client.admin(Admin::Status).unwrap().unwrap().sessions, 1);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while device.status().sessions != 0 {
        assert!(Instant::now() < deadline, "the closed connection's session was not released");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A second device cannot take over a socket in use.
    assert!(transport::bind_unix(&path).unwrap_err().to_string().contains("in use"));
    assert!("tcp:nonsense".parse::<Endpoint>().is_err());
    assert!("/no/scheme".parse::<Endpoint>().unwrap_err().to_string().contains("unix:"));
}

/// The policy is the device's setting, not the token's state: the same token, opened again under
/// another policy, is held to that one.
#[test]
fn the_policy_is_the_devices_and_holds_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("token.state");
    let two_purposes = |device: &Device, s| {
        device.execute(
            APP,
            Command::GenerateKey {
                session: s,
                mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
                template: vec![
                    Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
                    Attribute::ulong(cka::KEY_TYPE, ckk::AES),
                    Attribute::ulong(cka::VALUE_LEN, 32),
                    Attribute::bool(cka::ENCRYPT, true),
                    Attribute::bool(cka::WRAP, true),
                ],
            },
        )
    };
    let open_under = |policy| {
        Device::open(DeviceOptions {
            profile: Profile::built_in("ideal").unwrap(),
            state_file: Some(state.clone()),
            policy,
        })
        .unwrap()
    };
    let device = open_under(Policy::Fips);
    assert_eq!(device.status().policy, Policy::Fips);
    let s = provision(&device);
    assert_eq!(two_purposes(&device, s).unwrap_err(), Ckr::TemplateInconsistent);
    drop(device);
    let device = open_under(Policy::Standard);
    assert_eq!(device.status().policy, Policy::Standard);
    device.attach(APP);
    let s = login(&device, b"user-pin-1", UserType::User);
    assert!(matches!(two_purposes(&device, s).unwrap(), Response::Object(_)));
}
