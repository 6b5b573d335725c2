//! The library instance behind the C API: the device it talks to (a running `fwsim`, or one
//! in this process), this instance's application id, and per-session operation state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use firmware_sim::config::{ModuleConfig, Target};
use firmware_sim::transport::{Connection, Endpoint};
use firmware_sim::{Device, DeviceOptions, Profile};
use firmware_sim_core::attribute::Value;
use firmware_sim_core::mechanism::Mechanism;
use firmware_sim_core::object::SecretBytes;
use firmware_sim_core::{Command, Error, Response};
use zeroize::Zeroizing;

/// The initialised library, if any.
static LIBRARY: RwLock<Option<Arc<Library>>> = RwLock::new(None);

/// In-process devices outlive C_Finalize, as a real device outlives its driver: a re-initialised
/// library finds its token as it left it. Keyed by configuration, so that two configurations
/// in one process get two devices.
static DEVICES: Mutex<Vec<(ModuleConfig, Arc<Device>)>> = Mutex::new(Vec::new());

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A multi-part or size-queried operation in progress.
#[derive(Debug)]
pub(crate) struct Operation {
    pub(crate) mechanism: Mechanism,
    pub(crate) key: u32,
    /// Input gathered by `*Update` calls.
    pub(crate) input: Zeroizing<Vec<u8>>,
    /// The result, kept between a size query and the call that collects it.
    pub(crate) output: Option<SecretBytes>,
}

impl Operation {
    pub(crate) fn new(mechanism: Mechanism, key: u32) -> Operation {
        Operation { mechanism, key, input: Zeroizing::new(Vec::new()), output: None }
    }
}

/// What a session has in progress on this side of the wire.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    pub(crate) find: Option<VecDeque<u32>>,
    pub(crate) encrypt: Option<Operation>,
    pub(crate) decrypt: Option<Operation>,
    /// Message-based (PKCS#11 3.0) AES-GCM: the key stays set for many messages.
    pub(crate) message_encrypt: Option<Operation>,
    pub(crate) message_decrypt: Option<Operation>,
    pub(crate) sign: Option<Operation>,
    pub(crate) verify: Option<Operation>,
    /// The last attribute read, so that the usual length-then-value pair of C_GetAttributeValue
    /// calls costs one device round trip.
    pub(crate) attributes: Option<(u32, Vec<(u64, Value)>)>,
    /// The last wrap, for the same reason.
    pub(crate) wrapped: Option<(u32, u32, Mechanism, SecretBytes)>,
}

enum Backend {
    InProcess(Arc<Device>),
    Remote { endpoint: Endpoint, timeout: Duration, pool: Mutex<Vec<Connection>> },
}

/// One initialised library instance.
pub(crate) struct Library {
    backend: Backend,
    app: u64,
    pub(crate) slot: u64,
    pub(crate) sessions: Mutex<HashMap<u32, SessionState>>,
}

impl Library {
    fn open() -> Result<Library, String> {
        let config = ModuleConfig::from_env().map_err(|e| e.to_string())?;
        let mut app = [0u8; 8];
        getrandom_app(&mut app);
        let app = u64::from_le_bytes(app);
        let backend = match config.target().map_err(|e| e.to_string())? {
            Target::Remote(endpoint) => {
                let timeout = Duration::from_millis(config.timeout_ms);
                // One connection now, so that a missing device is reported at C_Initialize.
                let first = Connection::open(&endpoint, app, timeout)
                    .map_err(|e| format!("cannot reach the device at {endpoint}: {e}"))?;
                Backend::Remote { endpoint, timeout, pool: Mutex::new(vec![first]) }
            }
            Target::InProcess(local) => {
                let mut devices = lock(&DEVICES);
                let existing =
                    devices.iter().find(|(c, _)| *c == config).map(|(_, d)| Arc::clone(d));
                let device = match existing {
                    Some(device) => device,
                    None => {
                        let profile = Profile::load(&local.profile).map_err(|e| e.to_string())?;
                        let device = Device::open(DeviceOptions {
                            profile,
                            state_file: local.state_file.clone(),
                            policy: local.policy,
                        })
                        .map_err(|e| e.to_string())?;
                        devices.push((config.clone(), Arc::clone(&device)));
                        device
                    }
                };
                device.attach(app);
                Backend::InProcess(device)
            }
        };
        Ok(Library { backend, app, slot: config.slot_id, sessions: Mutex::new(HashMap::new()) })
    }

    /// Runs a command on the device.
    pub(crate) fn execute(&self, command: Command) -> Result<Response, Error> {
        match &self.backend {
            Backend::InProcess(device) => device.execute(self.app, command),
            Backend::Remote { endpoint, timeout, pool } => {
                let pooled = lock(pool).pop();
                let mut connection = match pooled {
                    Some(c) => c,
                    None => Connection::open(endpoint, self.app, *timeout)
                        .map_err(|_| Error::DeviceRemoved)?,
                };
                match connection.command(command) {
                    Ok(result) => {
                        lock(pool).push(connection);
                        result
                    }
                    // The connection is dropped; the device may or may not have run the command.
                    Err(_) => Err(Error::DeviceError),
                }
            }
        }
    }

    /// Runs `f` on a session's local state.
    pub(crate) fn session<T>(&self, session: u32, f: impl FnOnce(&mut SessionState) -> T) -> T {
        let mut sessions = lock(&self.sessions);
        f(sessions.entry(session).or_default())
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        match &self.backend {
            Backend::InProcess(device) => device.detach(self.app),
            // Closing the connections ends this application's sessions on the device.
            Backend::Remote { pool, .. } => lock(pool).clear(),
        }
    }
}

fn getrandom_app(out: &mut [u8; 8]) {
    // Application ids only need to differ between library instances: time and pid suffice
    // where no OS randomness is available.
    if firmware_sim::state::fill_random(out).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        *out = (t ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
}

/// C_Initialize.
pub(crate) fn initialize() -> Result<(), Error> {
    let mut library = LIBRARY.write().unwrap_or_else(|p| p.into_inner());
    if library.is_some() {
        return Err(Error::CryptokiAlreadyInitialized);
    }
    match Library::open() {
        Ok(opened) => {
            *library = Some(Arc::new(opened));
            Ok(())
        }
        Err(why) => {
            // A PKCS#11 caller sees only CKR_GENERAL_ERROR; the operator needs the reason.
            eprintln!("firmware-sim PKCS#11 module: {why}");
            Err(Error::GeneralError)
        }
    }
}

/// C_Finalize.
pub(crate) fn finalize() -> Result<(), Error> {
    let mut library = LIBRARY.write().unwrap_or_else(|p| p.into_inner());
    library.take().map(drop).ok_or(Error::CryptokiNotInitialized)
}

/// The initialised library.
pub(crate) fn library() -> Result<Arc<Library>, Error> {
    LIBRARY
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .cloned()
        .ok_or(Error::CryptokiNotInitialized)
}
