//! The token: one PKCS#11 library instance, one login, the MKEK, and re-initialisation.
//!
//! The library is initialised once with OS locking (SoftHSM2 disables its mutexes without it).
//! A key-holder session stays logged in for the life of the instance: it keeps the login alive,
//! resolves the MKEK once, and owns the unwrapped project KEKs; a key-holder the token drops is
//! replaced on its own (see [`Token::renew_keyholder`]). Each library instance is an [`Epoch`];
//! on a device-class error the whole instance is replaced and the epoch number grows, which
//! tells every worker that its session and every cached handle belong to the past.
//!
//! Each epoch counts the worker sessions it holds on the token, including any whose close
//! failed: the pool never opens past its budget, and a session it could not close is
//! reclaimed by re-initialising, since only finalising the library frees it.

pub(crate) mod der;
pub(crate) mod failure;
pub(crate) mod mkek;
pub(crate) mod ops;

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Limit, Slot};
use cryptoki::types::AuthPin;
use hsm_proxy_proto::Status;

use self::mkek::Mkeks;
use crate::config::Pkcs11Config;
use crate::error::{Error, Result};
use crate::keys::KekCache;

/// The wait between re-initialisation attempts while the token stays unreachable: this at
/// first, doubling after each failure up to [`REINIT_BACKOFF_MAX`].
const REINIT_BACKOFF: Duration = Duration::from_millis(100);
const REINIT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Attempts to open the key-holder session and log in again during one re-initialisation: a
/// handful of calls, each of which a flaky device may fail.
const REINIT_TRIES: usize = 6;

/// What the token offers that changes how operations are done.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Capabilities {
    /// PKCS#11 3.0 message-based AES-GCM (`C_MessageEncryptInit`, `C_EncryptMessage`, ...),
    /// offered by the token and not turned off in the configuration; with it the token draws
    /// every GCM IV itself (`CKG_GENERATE_RANDOM`).
    pub(crate) message_aead: bool,
    /// `CKM_ECDSA_SHA256` (otherwise the proxy hashes and uses `CKM_ECDSA`).
    pub(crate) ecdsa_sha256: bool,
    /// `CKM_ECDSA_SHA384`.
    pub(crate) ecdsa_sha384: bool,
}

/// Facts about the token read at start.
#[derive(Clone, Debug)]
pub(crate) struct TokenSummary {
    pub(crate) label: String,
    pub(crate) manufacturer: String,
    pub(crate) model: String,
    /// `ulMaxSessionCount`, when the token states a finite one.
    pub(crate) max_sessions: Option<u64>,
    pub(crate) library: String,
}

/// One initialised library instance with its login and master keys.
#[derive(Debug)]
pub(crate) struct Epoch {
    pub(crate) number: u64,
    pub(crate) slot: Slot,
    /// The master keys, read again now and then ([`Epoch::rescan_mkeks`]).
    mkeks: RwLock<Mkeks>,
    /// Logged in; owns the unwrapped KEKs.
    pub(crate) keyholder: Mutex<Keyholder>,
    /// The key-holder's generation, readable without its lock (see [`Keyholder::generation`]).
    generation: AtomicU64,
    /// Worker and inline sessions open on the token in this epoch, those whose close failed
    /// included.
    held: AtomicUsize,
}

/// The key-holder session. Opened without close-on-drop: after a device failure its handle may
/// belong to someone else, so it is closed only on clean shutdown.
#[derive(Debug)]
pub(crate) struct Keyholder {
    pub(crate) session: Session,
    /// Grows each time the session is replaced: KEK handles of an earlier generation died with
    /// their session, and their numbers may since have been reused.
    pub(crate) generation: u64,
}

/// When the token's master keys, last read at some instant, are to be read again.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stale {
    /// When that read is older than this.
    OlderThan(Duration),
    /// When that read began before this instant (a request's arrival).
    Before(Instant),
}

impl Stale {
    fn of(self, scanned: Instant) -> bool {
        match self {
            Stale::OlderThan(max_age) => scanned.elapsed() >= max_age,
            Stale::Before(since) => scanned < since,
        }
    }
}

/// Which key-holder session a KEK handle belongs to.
pub(crate) type Stamp = (u64, u64);

impl Epoch {
    fn new(number: u64, slot: Slot, mkeks: Mkeks, keyholder: Session) -> Epoch {
        Epoch {
            number,
            slot,
            mkeks: RwLock::new(mkeks),
            keyholder: Mutex::new(Keyholder { session: keyholder, generation: 0 }),
            generation: AtomicU64::new(0),
            held: AtomicUsize::new(0),
        }
    }

    /// The newest master key: its generation and handle.
    pub(crate) fn active_mkek(&self) -> (u64, ObjectHandle) {
        read(&self.mkeks).active()
    }

    /// The master key of `generation`, if the token held it when last read.
    pub(crate) fn mkek(&self, generation: u64) -> Option<ObjectHandle> {
        read(&self.mkeks).get(generation)
    }

    /// The master key generations present when last read, oldest first.
    pub(crate) fn mkek_generations(&self) -> Vec<u64> {
        read(&self.mkeks).generations()
    }

    /// Reads the master keys again if the last read is `stale`, so that one made by `hsm-proxy
    /// mkek rotate` starts wrapping new KEKs and one destroyed stops unwrapping. The
    /// generations that are gone are returned, for their KEKs to be dropped
    /// ([`crate::keys::KekCache::reread_mkeks`]). A failed read keeps the keys known: it is
    /// logged, and the next call tries again.
    pub(crate) fn rescan_mkeks(&self, session: &Session, label: &str, stale: Stale) -> Vec<u64> {
        if !stale.of(read(&self.mkeks).scanned) {
            return Vec::new();
        }
        let mut mkeks = self.mkeks.write().unwrap_or_else(|p| p.into_inner());
        if !stale.of(mkeks.scanned) {
            return Vec::new();
        }
        // When the read began: what it finds is at least as new as that.
        let started = Instant::now();
        match mkek::scan(session, label) {
            Ok(Some(mut now)) => {
                now.scanned = started;
                let before = mkeks.generations();
                let after = now.generations();
                let gone: Vec<u64> =
                    before.iter().copied().filter(|g| !after.contains(g)).collect();
                if before != after {
                    tracing::info!(
                        active = now.active().0,
                        present = ?after,
                        destroyed = ?gone,
                        "the token's master keys changed"
                    );
                }
                *mkeks = now;
                gone
            }
            Ok(None) => {
                mkeks.scanned = started;
                tracing::warn!(label, "no master key found in the token any more");
                Vec::new()
            }
            Err(e) => {
                mkeks.scanned = started;
                tracing::warn!(error = %e, "reading the token's master keys failed");
                Vec::new()
            }
        }
    }

    /// The current key-holder's stamp, read without taking its lock.
    pub(crate) fn stamp(&self) -> Stamp {
        (self.number, self.generation.load(Ordering::Acquire))
    }

    /// Counts a session about to be opened, unless `budget` are already held.
    pub(crate) fn reserve_session(&self, budget: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < budget).then_some(n + 1))
            .is_ok()
    }

    /// Uncounts a session that was closed, or that the token says is gone, or that failed to
    /// open.
    pub(crate) fn release_session(&self) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
    }

    /// Sessions counted as held.
    pub(crate) fn sessions_held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
enum State {
    Up(Epoch),
    Down { number: u64, since: Instant, last_attempt: Instant, failures: u32 },
}

/// The token as the workers see it.
#[derive(Debug)]
pub(crate) struct Token {
    ctx: Pkcs11,
    config: TokenConfig,
    state: RwLock<State>,
    reinitializations: AtomicU64,
    pub(crate) summary: TokenSummary,
    pub(crate) caps: Capabilities,
    /// `[pkcs11] fips`: the token runs in FIPS mode.
    pub(crate) fips: bool,
    /// Whether opening the token created the MKEK.
    pub(crate) created_mkek: bool,
}

#[derive(Debug)]
struct TokenConfig {
    label: Option<String>,
    slot: Option<u64>,
    pin: AuthPin,
    mkek_label: String,
}

/// A read view of the current epoch, held for the length of one operation.
pub(crate) struct EpochGuard<'a>(RwLockReadGuard<'a, State>);

impl EpochGuard<'_> {
    pub(crate) fn epoch(&self) -> Option<&Epoch> {
        match &*self.0 {
            State::Up(epoch) => Some(epoch),
            State::Down { .. } => None,
        }
    }

    pub(crate) fn number(&self) -> u64 {
        match &*self.0 {
            State::Up(epoch) => epoch.number,
            State::Down { number, .. } => *number,
        }
    }
}

/// Whether a missing MKEK is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MkekPolicy {
    /// Refuse to start without it.
    Require,
    /// Generate it in the token if absent (`init-token`, `serve --create-mkek`).
    Create,
}

impl Token {
    /// Loads the module, initialises it, logs in and finds (or creates) the MKEK.
    pub(crate) fn open(config: &Pkcs11Config, pin: AuthPin, mkek: MkekPolicy) -> Result<Token> {
        let ctx = load(&config.module)?;
        let (message_aead, fips) = (config.message_aead, config.fips);
        let config = TokenConfig {
            label: config.token_label.clone(),
            slot: config.slot,
            pin,
            mkek_label: config.mkek_label.clone(),
        };
        let slot = find_slot(&ctx, &config)?;
        let info = ctx.get_token_info(slot)?;
        let library = ctx.get_library_info()?;
        let summary = TokenSummary {
            label: info.label().trim().to_owned(),
            manufacturer: info.manufacturer_id().trim().to_owned(),
            model: info.model().trim().to_owned(),
            max_sessions: match info.max_session_count() {
                Limit::Max(n) => Some(n),
                Limit::Infinite | Limit::Unavailable => None,
            },
            library: format!(
                "{} {}",
                library.manufacturer_id().trim(),
                library.library_description().trim()
            ),
        };
        // Asked one by one: listing every mechanism makes cryptoki log each vendor-defined one.
        let supports = |m| ctx.get_mechanism_info(slot, m).is_ok_and(|info| info.sign());
        let gcm = ctx.get_mechanism_info(slot, MechanismType::AES_GCM);
        let message_functions = [
            Function::MessageEncryptInit,
            Function::EncryptMessage,
            Function::MessageEncryptFinal,
            Function::MessageDecryptInit,
            Function::DecryptMessage,
            Function::MessageDecryptFinal,
        ];
        let caps = Capabilities {
            message_aead: message_aead
                && gcm.is_ok_and(|info| info.message_encrypt() && info.message_decrypt())
                && message_functions.into_iter().all(|f| ctx.is_fn_supported(f)),
            ecdsa_sha256: supports(MechanismType::ECDSA_SHA256),
            ecdsa_sha384: supports(MechanismType::ECDSA_SHA384),
        };
        if fips && !caps.message_aead {
            return Err(Error::Token(format!(
                "[pkcs11] fips = true needs GCM IVs drawn inside the token (PKCS#11 3.0 \
                 message-based AES-GCM with CKG_GENERATE_RANDOM), which token {:?} does not \
                 offer{}",
                summary.label,
                if message_aead { "" } else { " ([pkcs11] message_aead = false turns it off)" }
            )));
        }
        let (epoch, created_mkek) = open_epoch(&ctx, &config, slot, 0, mkek)?;
        Ok(Token {
            ctx,
            config,
            state: RwLock::new(State::Up(epoch)),
            reinitializations: AtomicU64::new(0),
            summary,
            caps,
            fips,
            created_mkek,
        })
    }

    /// The label every master key carries.
    pub(crate) fn mkek_label(&self) -> &str {
        &self.config.mkek_label
    }

    pub(crate) fn context(&self) -> &Pkcs11 {
        &self.ctx
    }

    pub(crate) fn reinitializations(&self) -> u64 {
        self.reinitializations.load(Ordering::Relaxed)
    }

    /// The current epoch, for one operation. Never hold two at once.
    pub(crate) fn read(&self) -> EpochGuard<'_> {
        EpochGuard(self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the library instance that epoch `seen` belonged to, unless another worker
    /// already did (then `Ok(false)`). Clears the KEK cache: its objects died with the old
    /// instance.
    pub(crate) fn reinitialize(&self, seen: u64, keys: &KekCache) -> Result<bool, Status> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let (number, since, failures) = match &*state {
            State::Up(epoch) if epoch.number != seen => return Ok(false),
            State::Up(epoch) => (epoch.number, Instant::now(), 0),
            State::Down { number, .. } if *number != seen => return Ok(false),
            State::Down { last_attempt, failures, .. }
                if last_attempt.elapsed() < reinit_backoff(*failures) =>
            {
                return Err(Status::HsmUnavailable);
            }
            State::Down { number, since, failures, .. } => (*number, *since, *failures),
        };
        // Dropping the old epoch does not close its sessions (see `Epoch::keyholder`).
        *state = State::Down {
            number: number + 1,
            since,
            last_attempt: Instant::now(),
            failures: failures.saturating_add(1),
        };
        keys.clear();
        if failures == 0 {
            tracing::warn!(epoch = number, "re-initialising the PKCS#11 library");
        }
        let _ = self.ctx.clone().finalize();
        let result = match self.ctx.initialize(init_args()) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                // A transient device error while logging in again must not cost a back-off
                // period: try a few times at once.
                let mut opened = Err(Error::Token("not attempted".into()));
                for _ in 0..REINIT_TRIES {
                    opened = find_slot(&self.ctx, &self.config).and_then(|slot| {
                        open_epoch(&self.ctx, &self.config, slot, number + 1, MkekPolicy::Require)
                            .map(|(epoch, _)| epoch)
                    });
                    if opened.is_ok() {
                        break;
                    }
                }
                opened
            }
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(epoch) => {
                tracing::info!(
                    epoch = epoch.number,
                    down_ms = since.elapsed().as_millis(),
                    "PKCS#11 library re-initialised"
                );
                *state = State::Up(epoch);
                self.reinitializations.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                // Once, then at the 2nd, 4th, 8th ... failure: a token that stays away (a
                // tamper event, a device unplugged) is said clearly without flooding the log.
                if failures.is_power_of_two() || failures == 0 {
                    tracing::error!(
                        error = %e,
                        failures = failures + 1,
                        down_ms = since.elapsed().as_millis(),
                        next_attempt_ms = reinit_backoff(failures + 1).as_millis(),
                        "PKCS#11 re-initialisation failed; requests get 503 until it succeeds"
                    );
                }
                Err(Status::HsmUnavailable)
            }
        }
    }

    /// Replaces a key-holder session that the token no longer knows: a new one, logged in if the
    /// application's login went with the old one. The KEKs it held are gone; the new generation
    /// tells the cache so. The caller holds the key-holder's lock.
    pub(crate) fn renew_keyholder(
        &self,
        epoch: &Epoch,
        holder: &mut Keyholder,
    ) -> Result<(), CryptokiError> {
        let session = self.ctx.open_rw_session_no_drop(epoch.slot)?;
        if let Err(e) = self.ensure_login(&session) {
            let _ = session.close();
            return Err(e);
        }
        // The old session is forgotten, not closed: its handle may already be another's.
        holder.session = session;
        holder.generation += 1;
        epoch.generation.store(holder.generation, Ordering::Release);
        tracing::warn!(
            epoch = epoch.number,
            generation = holder.generation,
            "the token dropped the key-holder session; opened a new one"
        );
        Ok(())
    }

    /// Logs the application in through `session` unless it already is.
    pub(crate) fn ensure_login(&self, session: &Session) -> Result<(), CryptokiError> {
        let info = session.get_session_info()?;
        if matches!(info.session_state(), SessionState::RwUser | SessionState::RoUser) {
            return Ok(());
        }
        match session.login(UserType::User, Some(&self.config.pin)) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Opens a worker session in the current epoch. Not closed on drop: see `Keyholder`.
    pub(crate) fn open_session(&self, epoch: &Epoch) -> Result<Session, CryptokiError> {
        self.ctx.open_ro_session_no_drop(epoch.slot)
    }

    /// Generates the next master key generation in the token, which from now on wraps new
    /// KEKs (running proxies notice within a second of their next KEK); its generation.
    pub(crate) fn rotate_mkek(&self) -> Result<u64> {
        let guard = self.read();
        let epoch = guard.epoch().ok_or_else(|| Error::Token("the token is down".into()))?;
        let holder = epoch.keyholder.lock().unwrap_or_else(|p| p.into_inner());
        let label = &self.config.mkek_label;
        for _ in 0..3 {
            let newest = mkek::scan(&holder.session, label)?.map_or(0, |m| m.active().0);
            let generation = newest
                .checked_add(1)
                .ok_or_else(|| Error::Token("the master key generations are used up".into()))?;
            let handle = mkek::create(&holder.session, label, generation)?;
            match mkek::scan(&holder.session, label) {
                Ok(_) => {
                    epoch.rescan_mkeks(&holder.session, label, Stale::OlderThan(Duration::ZERO));
                    return Ok(generation);
                }
                // Another `mkek rotate` made the same generation at the same moment: ours goes,
                // so that the token never holds two, and the next is tried.
                Err(e) => {
                    holder.session.destroy_object(handle)?;
                    tracing::warn!(generation, error = %e, "master key generation taken meanwhile");
                }
            }
        }
        Err(Error::Token("other master key rotations kept running at the same moment".into()))
    }

    /// Destroys master key `generation`: every blob wrapped under it, in the database or in
    /// any backup, can no longer be opened. The newest is refused: it wraps new KEKs.
    pub(crate) fn destroy_mkek(&self, generation: u64) -> Result<()> {
        let guard = self.read();
        let epoch = guard.epoch().ok_or_else(|| Error::Token("the token is down".into()))?;
        let holder = epoch.keyholder.lock().unwrap_or_else(|p| p.into_inner());
        let label = &self.config.mkek_label;
        let mkeks = mkek::scan(&holder.session, label)?
            .ok_or_else(|| Error::Token(format!("no master key labelled {label:?}")))?;
        if mkeks.active().0 == generation {
            return Err(Error::Token(format!(
                "master key generation {generation} is the newest, which wraps new KEKs; \
                 `hsm-proxy mkek rotate` first, rewrap the KEKs (`appliance kek rewrap-master`), \
                 then destroy it"
            )));
        }
        let handle = mkeks.get(generation).ok_or_else(|| {
            Error::Token(format!(
                "no master key generation {generation}; present: {:?}",
                mkeks.generations()
            ))
        })?;
        holder.session.destroy_object(handle)?;
        epoch.rescan_mkeks(&holder.session, label, Stale::OlderThan(Duration::ZERO));
        Ok(())
    }

    /// The master key generations in the token, oldest first.
    pub(crate) fn mkek_generations(&self) -> Result<Vec<u64>> {
        let guard = self.read();
        let epoch = guard.epoch().ok_or_else(|| Error::Token("the token is down".into()))?;
        let holder = epoch.keyholder.lock().unwrap_or_else(|p| p.into_inner());
        epoch.rescan_mkeks(
            &holder.session,
            &self.config.mkek_label,
            Stale::OlderThan(Duration::ZERO),
        );
        Ok(epoch.mkek_generations())
    }

    /// Logs out, closes the key-holder session and finalises the library.
    pub(crate) fn shutdown(&self) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let old = std::mem::replace(
            &mut *state,
            State::Down { number: u64::MAX, since: now, last_attempt: now, failures: 0 },
        );
        if let State::Up(epoch) = old {
            let keyholder = epoch.keyholder.into_inner().unwrap_or_else(|p| p.into_inner());
            let _ = keyholder.session.logout();
            let _ = keyholder.session.close();
        }
        let _ = self.ctx.clone().finalize();
    }
}

/// What [`check_token`] found, step by step.
#[derive(Debug, Default)]
pub(crate) struct TokenCheck {
    /// Each step's name and what it found, or why it failed; the steps stop at a failure.
    pub(crate) steps: Vec<(&'static str, std::result::Result<String, String>)>,
    /// The token's `ulMaxSessionCount`, when it states a finite one.
    pub(crate) max_sessions: Option<u64>,
}

/// Opens the token as `serve` does, one step at a time, and says how each went: the module
/// loads, the token is there, the PIN logs in, and the master key is there and fit for its
/// use. Nothing is created or changed; the session is logged out and the library finalised.
pub(crate) fn check_token(config: &Pkcs11Config, pin: AuthPin) -> TokenCheck {
    let mut check = TokenCheck::default();
    let ctx = match load(&config.module) {
        Ok(ctx) => ctx,
        Err(e) => {
            check.steps.push(("pkcs11 module", Err(e.to_string())));
            return check;
        }
    };
    let library = ctx.get_library_info().map(|info| {
        format!(
            "{}: {} {} (PKCS#11 {}.{})",
            config.module.display(),
            info.manufacturer_id().trim(),
            info.library_description().trim(),
            info.cryptoki_version().major(),
            info.cryptoki_version().minor()
        )
    });
    check.steps.push(("pkcs11 module", library.map_err(|e| e.to_string())));
    let token_config = TokenConfig {
        label: config.token_label.clone(),
        slot: config.slot,
        pin,
        mkek_label: config.mkek_label.clone(),
    };
    check_token_steps(&ctx, &token_config, &mut check);
    let _ = ctx.finalize();
    check
}

fn check_token_steps(ctx: &Pkcs11, config: &TokenConfig, check: &mut TokenCheck) {
    let fail = |check: &mut TokenCheck, step, why: String| check.steps.push((step, Err(why)));
    let slot = match find_slot(ctx, config) {
        Ok(slot) => slot,
        Err(e) => return fail(check, "token", e.to_string()),
    };
    match ctx.get_token_info(slot) {
        Ok(info) => {
            check.max_sessions = match info.max_session_count() {
                Limit::Max(n) => Some(n),
                Limit::Infinite | Limit::Unavailable => None,
            };
            let sessions = check.max_sessions.map_or_else(
                || "no stated session limit".to_owned(),
                |n| format!("up to {n} sessions"),
            );
            check.steps.push((
                "token",
                Ok(format!(
                    "{:?} in slot {} ({} {}), {sessions}",
                    info.label().trim(),
                    slot.id(),
                    info.manufacturer_id().trim(),
                    info.model().trim()
                )),
            ));
        }
        Err(e) => return fail(check, "token", e.to_string()),
    }
    let session = match ctx.open_rw_session(slot) {
        Ok(session) => session,
        Err(e) => return fail(check, "login", format!("opening a session: {e}")),
    };
    match session.login(UserType::User, Some(&config.pin)) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
            check.steps.push(("login", Ok("the token accepted the user PIN".into())));
        }
        Err(CryptokiError::Pkcs11(RvError::PinIncorrect, _)) => {
            return fail(
                check,
                "login",
                "the token refused the user PIN (CKR_PIN_INCORRECT)".into(),
            );
        }
        Err(CryptokiError::Pkcs11(RvError::PinLocked, _)) => {
            return fail(
                check,
                "login",
                "the user PIN is locked (CKR_PIN_LOCKED): the token's security officer must \
                 reset it"
                    .into(),
            );
        }
        Err(e) => return fail(check, "login", e.to_string()),
    }
    let label = &config.mkek_label;
    let found = match mkek::scan(&session, label) {
        Ok(Some(mkeks)) => Ok(format!(
            "{label:?}: sensitive, non-extractable AES keys that wrap and unwrap; generation(s) \
             {}, the newest wrapping new KEKs",
            mkeks.generations().iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        )),
        Ok(None) => Err(format!(
            "no master key labelled {label:?} in the token; create it once with \
             `hsm-proxy init-token --config <file>`"
        )),
        Err(e) => Err(e.to_string()),
    };
    check.steps.push(("master key", found));
    let _ = session.logout();
}

/// The wait before the next attempt after `failures` failed ones.
fn reinit_backoff(failures: u32) -> Duration {
    REINIT_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(REINIT_BACKOFF_MAX)
}

fn init_args() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

fn load(module: &Path) -> Result<Pkcs11> {
    let ctx = Pkcs11::new(module).map_err(|e| {
        Error::Token(format!("cannot load PKCS#11 module {}: {e}", module.display()))
    })?;
    match ctx.initialize(init_args()) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
        Err(e) => Err(e.into()),
    }
}

fn find_slot(ctx: &Pkcs11, config: &TokenConfig) -> Result<Slot> {
    let slots = ctx.get_slots_with_token()?;
    if let Some(id) = config.slot {
        return slots
            .into_iter()
            .find(|s| s.id() == id)
            .ok_or_else(|| Error::Token(format!("no token in slot {id}")));
    }
    let Some(label) = &config.label else {
        return slots.into_iter().next().ok_or_else(|| Error::Token("no token present".into()));
    };
    let mut present = Vec::new();
    for slot in slots {
        let found = ctx.get_token_info(slot)?.label().trim().to_owned();
        if found == *label {
            return Ok(slot);
        }
        present.push(format!("{found:?} (slot {})", slot.id()));
    }
    Err(Error::Token(format!(
        "no token labelled {label:?}; tokens present: {}",
        if present.is_empty() { "none".to_owned() } else { present.join(", ") }
    )))
}

fn open_epoch(
    ctx: &Pkcs11,
    config: &TokenConfig,
    slot: Slot,
    number: u64,
    policy: MkekPolicy,
) -> Result<(Epoch, bool)> {
    let keyholder = ctx.open_rw_session_no_drop(slot)?;
    match keyholder.login(UserType::User, Some(&config.pin)) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => {
            let _ = keyholder.close();
            return Err(e.into());
        }
    }
    let found = mkek::scan(&keyholder, &config.mkek_label).and_then(|found| match found {
        Some(mkeks) => Ok((mkeks, false)),
        None if policy == MkekPolicy::Create => {
            mkek::create(&keyholder, &config.mkek_label, 1)?;
            tracing::info!(label = %config.mkek_label, "created the master key (MKEK) in the token");
            let mkeks = mkek::scan(&keyholder, &config.mkek_label)?
                .ok_or_else(|| Error::Token("the master key just created is not found".into()))?;
            Ok((mkeks, true))
        }
        None => Err(Error::Token(format!(
            "no master key labelled {:?} in the token; create it once with \
             `hsm-proxy init-token --config <file>` (or `serve --create-mkek`)",
            config.mkek_label
        ))),
    });
    let (mkeks, created) = match found {
        Ok(found) => found,
        Err(e) => {
            let _ = keyholder.close();
            return Err(e);
        }
    };
    Ok((Epoch::new(number, slot, mkeks, keyholder), created))
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reinitialisation_backs_off_doubling_to_a_cap() {
        let waits: Vec<u128> = (1..=8).map(|n| reinit_backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(reinit_backoff(u32::MAX), REINIT_BACKOFF_MAX);
    }
}
