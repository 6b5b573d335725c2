//! The simulated HSM's firmware, fed postcard command frames as its device runtime feeds them.
//!
//! Each input runs against a fresh copy of one initialised token: a user PIN set, a
//! logged-in read-write session (handle 1 of application 1), and token keys of every kind
//! (AES, EC P-256, RSA-2048), so that decoded commands reach the mechanisms and not only the
//! session checks. Input: frames of `[app: u8][length: u16 LE][postcard Command]`; a final
//! frame may be short. RSA key-pair generation is skipped (seconds per key, and covered by the
//! firmware's own tests); every other decoded command runs.

use std::sync::OnceLock;

use firmware_sim_core::attribute::{Attribute, cka, ckk, cko};
use firmware_sim_core::command::{LABEL_BYTES, UserType};
use firmware_sim_core::mechanism::{Mechanism, ckm};
use firmware_sim_core::object::{OID_P256, SecretBytes};
use firmware_sim_core::{Command, Firmware, Limits, Response, TokenImage};
use rand_core::{CryptoRng, RngCore};

/// The SO PIN of the fuzzed token.
pub const SO_PIN: &[u8] = b"fuzz-so-pin";
/// The user PIN of the fuzzed token.
pub const USER_PIN: &[u8] = b"fuzz-user-pin";
/// The application that owns the prepared session.
pub const APP: u64 = 1;
/// Object capacity: small, so that a full table is reachable.
const OBJECTS: usize = 32;

type Fw = Firmware<FuzzRng, OBJECTS>;

/// A deterministic generator (SplitMix64), so that a crash replays exactly. Its output is
/// predictable: it exists only to drive the firmware under a fuzzer.
#[derive(Clone, Debug)]
pub struct FuzzRng(u64);

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FuzzRng {}

/// The handles of the token keys every input finds in place.
#[derive(Clone, Copy, Debug)]
pub struct Keys {
    /// An AES-256 key allowed to encrypt, decrypt, wrap and unwrap.
    pub aes: u32,
    /// An EC P-256 key pair.
    pub ec: (u32, u32),
    /// An RSA-2048 key pair.
    pub rsa: (u32, u32),
}

struct Prepared {
    image: TokenImage,
    keys: Keys,
}

fn label() -> [u8; LABEL_BYTES] {
    let mut l = [b' '; LABEL_BYTES];
    l[..4].copy_from_slice(b"fuzz");
    l
}

fn secret(bytes: &[u8]) -> SecretBytes {
    SecretBytes::new(bytes.to_vec())
}

/// Runs a setup command that must succeed.
fn must(fw: &mut Fw, command: Command) -> Response {
    match fw.execute(APP, command) {
        Ok(response) => response,
        Err(e) => panic!("fuzz token setup failed: {e:?}"),
    }
}

fn pair(response: Response) -> (u32, u32) {
    match response {
        Response::Pair { public, private } => (public, private),
        other => panic!("fuzz token setup: expected a key pair, got {other:?}"),
    }
}

/// Opens the prepared read-write session of [`APP`] and logs the user in: handle 1 of a
/// restored token.
fn login(fw: &mut Fw) -> u32 {
    let session = match must(fw, Command::OpenSession { read_write: true }) {
        Response::Session(s) => s,
        other => panic!("fuzz token setup: expected a session, got {other:?}"),
    };
    must(fw, Command::Login { session, user: UserType::User, pin: secret(USER_PIN) });
    session
}

fn prepare() -> Prepared {
    let limits = Limits { sessions: 64, objects: OBJECTS };
    let mut fw = Fw::new(FuzzRng(1), limits);
    must(&mut fw, Command::InitToken { so_pin: secret(SO_PIN), label: label() });
    let s = match must(&mut fw, Command::OpenSession { read_write: true }) {
        Response::Session(s) => s,
        other => panic!("fuzz token setup: expected a session, got {other:?}"),
    };
    must(&mut fw, Command::Login { session: s, user: UserType::So, pin: secret(SO_PIN) });
    must(&mut fw, Command::InitPin { session: s, pin: secret(USER_PIN) });
    must(&mut fw, Command::Logout { session: s });
    must(&mut fw, Command::Login { session: s, user: UserType::User, pin: secret(USER_PIN) });
    let token = Attribute::bool(cka::TOKEN, true);
    let aes = match must(
        &mut fw,
        Command::GenerateKey {
            session: s,
            mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
            template: vec![
                Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
                Attribute::ulong(cka::KEY_TYPE, ckk::AES),
                Attribute::ulong(cka::VALUE_LEN, 32),
                token.clone(),
                Attribute::bool(cka::EXTRACTABLE, true),
                Attribute::bool(cka::WRAP, true),
                Attribute::bool(cka::UNWRAP, true),
            ],
        },
    ) {
        Response::Object(h) => h,
        other => panic!("fuzz token setup: expected a key, got {other:?}"),
    };
    let ec = pair(must(
        &mut fw,
        Command::GenerateKeyPair {
            session: s,
            mechanism: Mechanism::plain(ckm::EC_KEY_PAIR_GEN),
            public: vec![Attribute::bytes(cka::EC_PARAMS, OID_P256), token.clone()],
            private: vec![token.clone()],
        },
    ));
    let rsa = pair(must(
        &mut fw,
        Command::GenerateKeyPair {
            session: s,
            mechanism: Mechanism::plain(ckm::RSA_PKCS_KEY_PAIR_GEN),
            public: vec![Attribute::ulong(cka::MODULUS_BITS, 2048), token.clone()],
            private: vec![token],
        },
    ));
    Prepared { image: fw.image(), keys: Keys { aes, ec, rsa } }
}

fn prepared() -> &'static Prepared {
    static PREPARED: OnceLock<Prepared> = OnceLock::new();
    PREPARED.get_or_init(prepare)
}

/// The token keys every input finds (for seeds that name them).
pub fn keys() -> Keys {
    prepared().keys
}

/// A fresh copy of the prepared token, its user logged in on session 1 of [`APP`].
pub fn fresh_token() -> (Fw, u32) {
    let p = prepared();
    let limits = Limits { sessions: 64, objects: OBJECTS };
    let mut fw = match Fw::restore(FuzzRng(2), limits, p.image.clone()) {
        Ok(fw) => fw,
        Err(e) => panic!("restoring the fuzz token failed: {e:?}"),
    };
    let session = login(&mut fw);
    (fw, session)
}

/// Encodes one input frame (for seeds).
pub fn frame(app: u8, command: &Command) -> Vec<u8> {
    let body = match firmware_sim_core::encode(command) {
        Ok(body) => body,
        Err(e) => panic!("encoding a seed command failed: {e:?}"),
    };
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut out = vec![app];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes and runs every command frame of `data`.
pub fn run(data: &[u8]) {
    let (mut fw, _session) = fresh_token();
    let mut rest = data;
    while let [app, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let Ok(command) = firmware_sim_core::decode::<Command>(body) else { continue };
        if let Command::GenerateKeyPair { mechanism, .. } = &command
            && mechanism.kind == ckm::RSA_PKCS_KEY_PAIR_GEN
        {
            continue;
        }
        let app = u64::from(*app & 3) + 1;
        let sessions_before = fw.session_count();
        if let Ok(response) = fw.execute(app, command) {
            // Whatever the firmware answers must cross the transport back intact.
            let bytes = match firmware_sim_core::encode(&response) {
                Ok(bytes) => bytes,
                Err(e) => panic!("a response does not encode: {e:?}"),
            };
            let Ok(back) = firmware_sim_core::decode::<Response>(&bytes) else {
                panic!("a response does not decode: {response:?}");
            };
            assert_eq!(firmware_sim_core::encode(&back).ok(), Some(bytes), "response round trip");
        }
        assert!(fw.session_count() <= sessions_before + 1, "one command opened two sessions");
        assert!(fw.object_count() <= OBJECTS, "object table over its capacity");
    }
}
