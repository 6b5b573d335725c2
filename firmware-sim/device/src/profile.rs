//! The latency model: per-operation service times, link round trip, engines and limits,
//! loaded from a TOML profile or one of the built-in ones.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use firmware_sim_core::mechanism::ckm;
use firmware_sim_core::{Command, Limits};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, file_error};

/// A service-time distribution, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Distribution {
    /// Always `us`.
    Fixed {
        /// Microseconds.
        us: f64,
    },
    /// Uniform between `min_us` and `max_us`.
    Uniform {
        /// Lower bound.
        min_us: f64,
        /// Upper bound.
        max_us: f64,
    },
    /// Normal, truncated at zero.
    Normal {
        /// Mean.
        mean_us: f64,
        /// Standard deviation.
        stddev_us: f64,
    },
    /// Exponential (a memoryless server).
    Exponential {
        /// Mean.
        mean_us: f64,
    },
}

impl Distribution {
    /// No time at all.
    pub const ZERO: Distribution = Distribution::Fixed { us: 0.0 };

    /// The mean, for reports and capacity estimates.
    pub fn mean_us(&self) -> f64 {
        match *self {
            Distribution::Fixed { us } => us,
            Distribution::Uniform { min_us, max_us } => (min_us + max_us) / 2.0,
            Distribution::Normal { mean_us, .. } | Distribution::Exponential { mean_us } => mean_us,
        }
    }

    /// One sample, given two uniform draws in [0, 1).
    pub fn sample(&self, u1: f64, u2: f64) -> Duration {
        let us = match *self {
            Distribution::Fixed { us } => us,
            Distribution::Uniform { min_us, max_us } => min_us + (max_us - min_us) * u1,
            Distribution::Normal { mean_us, stddev_us } => {
                // Box-Muller.
                let r = (-2.0 * (1.0 - u1).ln()).sqrt();
                mean_us + stddev_us * r * (std::f64::consts::TAU * u2).cos()
            }
            Distribution::Exponential { mean_us } => -mean_us * (1.0 - u1).ln(),
        };
        Duration::from_nanos((us.max(0.0) * 1000.0) as u64)
    }

    fn check(&self, what: &str) -> Result<()> {
        let ok = match *self {
            Distribution::Fixed { us } => us >= 0.0,
            Distribution::Uniform { min_us, max_us } => min_us >= 0.0 && max_us >= min_us,
            Distribution::Normal { mean_us, stddev_us } => mean_us >= 0.0 && stddev_us >= 0.0,
            Distribution::Exponential { mean_us } => mean_us >= 0.0,
        };
        if ok && self.mean_us().is_finite() {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "service time {what:?}: {self:?} is not a valid distribution"
            )))
        }
    }
}

/// Classes of work an engine does, each with its own service time in a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpClass {
    /// AES-GCM encryption.
    AesGcmEncrypt,
    /// AES-GCM decryption.
    AesGcmDecrypt,
    /// AES key wrap (RFC 5649).
    Wrap,
    /// AES key unwrap.
    Unwrap,
    /// AES or generic secret key generation.
    GenerateKey,
    /// RSA key pair generation.
    GenerateRsa,
    /// EC key pair generation.
    GenerateEc,
    /// RSA signature.
    SignRsa,
    /// ECDSA signature.
    SignEc,
    /// Signature verification.
    Verify,
    /// Random bytes.
    Random,
    /// Object management: create, find, read and set attributes, destroy.
    Object,
    /// Session and login management, token info.
    Session,
}

impl OpClass {
    /// Every class.
    pub const ALL: [OpClass; 13] = [
        OpClass::AesGcmEncrypt,
        OpClass::AesGcmDecrypt,
        OpClass::Wrap,
        OpClass::Unwrap,
        OpClass::GenerateKey,
        OpClass::GenerateRsa,
        OpClass::GenerateEc,
        OpClass::SignRsa,
        OpClass::SignEc,
        OpClass::Verify,
        OpClass::Random,
        OpClass::Object,
        OpClass::Session,
    ];

    /// The class of a command.
    pub fn of(command: &Command) -> OpClass {
        let rsa = |k: u64| {
            matches!(
                k,
                ckm::RSA_PKCS
                    | ckm::RSA_PKCS_PSS
                    | ckm::SHA256_RSA_PKCS
                    | ckm::SHA384_RSA_PKCS
                    | ckm::SHA512_RSA_PKCS
                    | ckm::SHA256_RSA_PKCS_PSS
                    | ckm::SHA384_RSA_PKCS_PSS
                    | ckm::SHA512_RSA_PKCS_PSS
            )
        };
        match command {
            Command::Encrypt { .. } => OpClass::AesGcmEncrypt,
            Command::Decrypt { .. } => OpClass::AesGcmDecrypt,
            Command::WrapKey { .. } => OpClass::Wrap,
            Command::UnwrapKey { .. } => OpClass::Unwrap,
            Command::GenerateKey { .. } => OpClass::GenerateKey,
            Command::GenerateKeyPair { mechanism, .. }
                if mechanism.kind == ckm::EC_KEY_PAIR_GEN =>
            {
                OpClass::GenerateEc
            }
            Command::GenerateKeyPair { .. } => OpClass::GenerateRsa,
            Command::Sign { mechanism, .. } if rsa(mechanism.kind) => OpClass::SignRsa,
            Command::Sign { .. } => OpClass::SignEc,
            Command::Verify { .. } => OpClass::Verify,
            Command::Random { .. } => OpClass::Random,
            Command::CreateObject { .. }
            | Command::DestroyObject { .. }
            | Command::GetAttributes { .. }
            | Command::SetAttributes { .. }
            | Command::FindObjects { .. } => OpClass::Object,
            _ => OpClass::Session,
        }
    }

    /// Whether the class occupies a crypto engine (session and object bookkeeping is done by
    /// the device's controller and costs only the link).
    pub fn uses_engine(self) -> bool {
        !matches!(self, OpClass::Object | OpClass::Session)
    }
}

/// A device profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Its name, shown in token info and reports.
    pub name: String,
    /// Crypto engines working in parallel.
    pub engines: usize,
    /// Round trip between host and device, added to every command, in microseconds.
    #[serde(default)]
    pub link_rtt_us: f64,
    /// Sessions open at once.
    pub max_sessions: usize,
    /// Objects held at once, token and session.
    pub object_capacity: usize,
    /// Commands waiting for an engine beyond which the device answers `CKR_DEVICE_MEMORY`
    /// (busy), as a network HSM's bounded queue does. 0: unbounded.
    #[serde(default)]
    pub queue_limit: usize,
    /// Service time per class; classes not listed use `default`.
    #[serde(default)]
    pub service: BTreeMap<OpClass, Distribution>,
    /// Service time of classes not listed.
    #[serde(default = "zero")]
    pub default_service: Distribution,
}

fn zero() -> Distribution {
    Distribution::ZERO
}

/// The built-in profiles' names.
pub const BUILT_IN: [&str; 4] = ["ideal", "softhsm-like", "network-hsm", "usb-token"];

impl Profile {
    /// A built-in profile by name.
    pub fn built_in(name: &str) -> Option<Profile> {
        let fixed = |us: f64| Distribution::Fixed { us };
        let normal = |mean_us: f64, stddev_us: f64| Distribution::Normal { mean_us, stddev_us };
        let profile = match name {
            // No added time: the firmware's own cost only. For measuring the software around it.
            "ideal" => Profile {
                name: name.into(),
                engines: 64,
                link_rtt_us: 0.0,
                max_sessions: 1024,
                object_capacity: 2048,
                queue_limit: 0,
                service: BTreeMap::new(),
                default_service: Distribution::ZERO,
            },
            // SoftHSM2 2.6.1 as measured on the 2-core build machine (medians of single-threaded
            // calls through cryptoki): one engine, because SoftHSM2 serialises operations on
            // CKA_PRIVATE keys.
            "softhsm-like" => Profile {
                name: name.into(),
                engines: 1,
                link_rtt_us: 0.0,
                max_sessions: 1024,
                object_capacity: 2048,
                queue_limit: 0,
                service: BTreeMap::from([
                    (OpClass::AesGcmEncrypt, fixed(5.5)),
                    (OpClass::AesGcmDecrypt, fixed(5.6)),
                    (OpClass::Wrap, fixed(20.0)),
                    (OpClass::Unwrap, fixed(23.0)),
                    (OpClass::GenerateKey, fixed(19.0)),
                    (OpClass::GenerateRsa, normal(156_000.0, 80_000.0)),
                    (OpClass::GenerateEc, fixed(76.0)),
                    (OpClass::SignRsa, fixed(570.0)),
                    (OpClass::SignEc, fixed(37.0)),
                    (OpClass::Verify, fixed(78.0)),
                    (OpClass::Random, fixed(0.8)),
                ]),
                default_service: fixed(1.0),
            },
            // A network-attached HSM: about 1 ms round trip on the LAN, 30 engines, each ~1 ms
            // per symmetric operation: ~30,000 symmetric ops/s at saturation.
            "network-hsm" => Profile {
                name: name.into(),
                engines: 30,
                link_rtt_us: 1_000.0,
                max_sessions: 1024,
                object_capacity: 2048,
                queue_limit: 4096,
                service: BTreeMap::from([
                    (OpClass::AesGcmEncrypt, fixed(1_000.0)),
                    (OpClass::AesGcmDecrypt, fixed(1_000.0)),
                    (OpClass::Wrap, fixed(1_000.0)),
                    (OpClass::Unwrap, fixed(1_000.0)),
                    (OpClass::GenerateKey, fixed(1_000.0)),
                    (OpClass::GenerateRsa, normal(400_000.0, 150_000.0)),
                    (OpClass::GenerateEc, fixed(5_000.0)),
                    (OpClass::SignRsa, fixed(4_000.0)),
                    (OpClass::SignEc, fixed(2_000.0)),
                    (OpClass::Verify, fixed(1_000.0)),
                    (OpClass::Random, fixed(500.0)),
                ]),
                default_service: Distribution::ZERO,
            },
            // A USB token: one engine, 16 sessions, a few milliseconds per operation.
            "usb-token" => Profile {
                name: name.into(),
                engines: 1,
                link_rtt_us: 250.0,
                max_sessions: 16,
                object_capacity: 256,
                queue_limit: 0,
                service: BTreeMap::from([
                    (OpClass::AesGcmEncrypt, normal(3_000.0, 300.0)),
                    (OpClass::AesGcmDecrypt, normal(3_000.0, 300.0)),
                    (OpClass::Wrap, fixed(4_000.0)),
                    (OpClass::Unwrap, fixed(4_000.0)),
                    (OpClass::GenerateKey, fixed(5_000.0)),
                    (OpClass::GenerateRsa, normal(20_000_000.0, 8_000_000.0)),
                    (OpClass::GenerateEc, fixed(300_000.0)),
                    (OpClass::SignRsa, fixed(150_000.0)),
                    (OpClass::SignEc, fixed(60_000.0)),
                    (OpClass::Verify, fixed(30_000.0)),
                    (OpClass::Random, fixed(2_000.0)),
                ]),
                default_service: fixed(500.0),
            },
            _ => return None,
        };
        Some(profile)
    }

    /// A built-in profile by name, or a profile file.
    pub fn load(name_or_path: &str) -> Result<Profile> {
        if let Some(profile) = Profile::built_in(name_or_path) {
            return Ok(profile);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(Error::Config(format!(
                "no profile {name_or_path:?}: neither a built-in profile ({}) nor a file",
                BUILT_IN.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(file_error(path))?;
        Profile::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses and checks a TOML profile.
    pub fn parse(text: &str) -> Result<Profile> {
        let profile: Profile = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        profile.check()?;
        Ok(profile)
    }

    /// Checks the limits and distributions.
    pub fn check(&self) -> Result<()> {
        if self.engines == 0 || self.engines > 1024 {
            return Err(Error::Config(format!("engines = {}: must be 1..=1024", self.engines)));
        }
        if self.max_sessions == 0 || self.max_sessions > firmware_sim_core::session::MAX_SESSIONS {
            return Err(Error::Config(format!(
                "max_sessions = {}: must be 1..={}",
                self.max_sessions,
                firmware_sim_core::session::MAX_SESSIONS
            )));
        }
        let objects = firmware_sim_core::firmware::DEFAULT_OBJECTS;
        if self.object_capacity == 0 || self.object_capacity > objects {
            return Err(Error::Config(format!(
                "object_capacity = {}: must be 1..={objects}",
                self.object_capacity
            )));
        }
        if !(self.link_rtt_us >= 0.0 && self.link_rtt_us.is_finite()) {
            return Err(Error::Config("link_rtt_us must be a non-negative number".into()));
        }
        for (class, d) in &self.service {
            d.check(&format!("{class:?}"))?;
        }
        self.default_service.check("default_service")
    }

    /// The service time distribution of `class`.
    pub fn service(&self, class: OpClass) -> Distribution {
        self.service.get(&class).copied().unwrap_or(self.default_service)
    }

    /// Half the link round trip.
    pub fn half_link(&self) -> Duration {
        Duration::from_nanos((self.link_rtt_us * 500.0) as u64)
    }

    /// The firmware limits this profile sets.
    pub fn limits(&self) -> Limits {
        Limits { sessions: self.max_sessions, objects: self.object_capacity }
    }

    /// The profile as TOML, for `fwsim profile show`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_are_valid_and_round_trip() {
        for name in BUILT_IN {
            let p = Profile::built_in(name).unwrap();
            p.check().unwrap();
            assert_eq!(Profile::parse(&p.to_toml()).unwrap(), p, "{name}");
        }
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let err =
            Profile::parse("name='x'\nengines=0\nmax_sessions=1\nobject_capacity=1\n").unwrap_err();
        assert!(err.to_string().contains("engines = 0"), "{err}");
        let err =
            Profile::parse("name='x'\nengines=1\nmax_sessions=1\nobject_capacity=1\nbogus=1\n")
                .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Profile::parse(
            "name='x'\nengines=1\nmax_sessions=1\nobject_capacity=1\n[service]\nwrap={kind='uniform',min_us=5.0,max_us=1.0}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("Wrap"), "{err}");
        assert!(Profile::load("no-such-profile").unwrap_err().to_string().contains("ideal"));
    }

    #[test]
    fn distributions_sample_around_their_mean() {
        let ds = [
            Distribution::Fixed { us: 100.0 },
            Distribution::Uniform { min_us: 50.0, max_us: 150.0 },
            Distribution::Normal { mean_us: 100.0, stddev_us: 10.0 },
            Distribution::Exponential { mean_us: 100.0 },
        ];
        for d in ds {
            let n = 20_000;
            let mut x = 0x1234_5678_9abc_def0u64;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 53) as f64
            };
            let total: f64 =
                (0..n).map(|_| d.sample(next(), next()).as_nanos() as f64 / 1000.0).sum();
            let mean = total / n as f64;
            assert!((mean - 100.0).abs() < 3.0, "{d:?}: mean {mean}");
        }
    }
}
