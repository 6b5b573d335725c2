//! The firmware: token state, the object table and sessions, and the command dispatcher that
//! enforces PKCS#11's access and attribute rules before any mechanism runs.

use alloc::vec::Vec;

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};

use crate::attribute::{Attribute, Template, Value, cka, ckk, cko};
use crate::command::{
    Command, LABEL_BYTES, Response, SessionInfo, TokenInfo, UserType, token_flags,
};
use crate::error::{Error, Result};
use crate::mechanism::{self, Mechanism, ckm};
use crate::object::{Curve, Flags, Material, Object, ObjectTable, SecretBytes};
use crate::session::{Login, MAX_APPLICATIONS, MAX_SESSIONS, Pin, Session};

/// Objects the table holds unless a profile says fewer.
pub const DEFAULT_OBJECTS: usize = 2048;

/// Limits a device profile sets below the firmware's compiled capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sessions open at once, across applications.
    pub sessions: usize,
    /// Objects held, token and session.
    pub objects: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { sessions: MAX_SESSIONS, objects: DEFAULT_OBJECTS }
    }
}

/// What the token enforces beyond PKCS#11's own rules: a device setting, as FIPS mode is on a
/// real HSM, not part of the token's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// PKCS#11 as SoftHSM2 implements it.
    #[default]
    Standard,
    /// What FIPS 140-3 validated HSMs enforce in their approved mode: GCM encryption IVs drawn
    /// by the device (a caller's is `CKR_MECHANISM_PARAM_INVALID`); secret and private keys
    /// always sensitive, never imported in the clear, and exported only by wrapping under a key
    /// that cannot leave the device itself; one purpose per key (encryption, wrapping, signing
    /// or derivation), with no usage unless the template names it; approved sizes only.
    Fips,
}

/// The usages of each purpose a key may serve, one only in FIPS mode (SP 800-57 5.2):
/// encryption, key wrapping, signature, derivation.
const PURPOSES: [&[Flags]; 4] = [
    &[Flags::ENCRYPT, Flags::DECRYPT],
    &[Flags::WRAP, Flags::UNWRAP],
    &[Flags::SIGN, Flags::VERIFY],
    &[Flags::DERIVE],
];

/// The smallest generic secret (an HMAC key) in FIPS mode: 112 bits of strength.
const FIPS_MIN_SECRET_BYTES: usize = 14;

/// What survives a restart: the token's label, PINs and token objects.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenImage {
    /// The label, or `None` for a token never initialised.
    pub label: Option<[u8; LABEL_BYTES]>,
    /// The SO PIN.
    pub so_pin: Option<Pin>,
    /// The user PIN.
    pub user_pin: Option<Pin>,
    /// Token objects.
    pub objects: Vec<Object>,
    /// The next object handle, so that handles are never reused.
    pub next_handle: u32,
}

/// The firmware of one token. `N` is the object table's compiled capacity.
#[derive(Debug)]
pub struct Firmware<R, const N: usize = DEFAULT_OBJECTS> {
    rng: R,
    label: Option<[u8; LABEL_BYTES]>,
    so_pin: Option<Pin>,
    user_pin: Option<Pin>,
    objects: ObjectTable<N>,
    sessions: heapless::Vec<Session, MAX_SESSIONS>,
    logins: heapless::Vec<Login, MAX_APPLICATIONS>,
    limits: Limits,
    policy: Policy,
    next_session: u32,
    dirty: bool,
}

/// A session command's context: the session and its application's login.
#[derive(Clone, Copy)]
struct Ctx {
    session: Session,
    user: Option<UserType>,
}

impl Ctx {
    fn logged_in(&self) -> bool {
        self.user == Some(UserType::User)
    }
}

impl<R: CryptoRngCore, const N: usize> Firmware<R, N> {
    /// A blank, uninitialised token.
    pub fn new(rng: R, limits: Limits) -> Self {
        Firmware {
            rng,
            label: None,
            so_pin: None,
            user_pin: None,
            objects: ObjectTable::new(limits.objects),
            sessions: heapless::Vec::new(),
            logins: heapless::Vec::new(),
            limits: Limits {
                sessions: limits.sessions.min(MAX_SESSIONS),
                objects: limits.objects.min(N),
            },
            policy: Policy::Standard,
            next_session: 1,
            dirty: false,
        }
    }

    /// The same firmware enforcing `policy`.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The policy enforced.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A token restored from its image.
    pub fn restore(rng: R, limits: Limits, image: TokenImage) -> Result<Self> {
        let mut fw = Self::new(rng, limits);
        fw.label = image.label;
        fw.so_pin = image.so_pin;
        fw.user_pin = image.user_pin;
        for object in image.objects {
            fw.objects.restore(object)?;
        }
        fw.objects.restore_next_handle(image.next_handle);
        Ok(fw)
    }

    /// The persistent part of the token.
    pub fn image(&self) -> TokenImage {
        TokenImage {
            label: self.label,
            so_pin: self.so_pin.clone(),
            user_pin: self.user_pin.clone(),
            objects: self.objects.iter().filter(|o| o.is_token()).cloned().collect(),
            next_handle: self.objects.next_handle(),
        }
    }

    /// Whether persistent state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        core::mem::take(&mut self.dirty)
    }

    /// Marks persistent state as changed (a save failed and must be retried).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Ends every session of `app` and forgets its login (its connection or process is gone).
    pub fn release(&mut self, app: u64) {
        let gone: Vec<u32> =
            self.sessions.iter().filter(|s| s.app == app).map(|s| s.handle).collect();
        for handle in gone {
            self.close_session(handle);
        }
        self.logins.retain(|l| l.app != app);
    }

    /// Closes one session as if the device had lost it (fault injection).
    pub fn drop_session(&mut self, session: u32) -> bool {
        let known = self.sessions.iter().any(|s| s.handle == session);
        if known {
            self.close_session(session);
        }
        known
    }

    /// A tamper response: every key and session is wiped. PINs and the label stay, so the
    /// token can be provisioned again.
    pub fn tamper(&mut self) {
        self.objects.clear();
        self.sessions.clear();
        self.logins.clear();
        self.dirty = true;
    }

    /// Objects held.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// Sessions open.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Runs one command for application `app`.
    pub fn execute(&mut self, app: u64, command: Command) -> Result<Response> {
        match command {
            Command::TokenInfo => Ok(Response::TokenInfo(self.token_info())),
            Command::InitToken { so_pin, label } => self.init_token(so_pin.expose(), label),
            Command::OpenSession { read_write } => self.open_session(app, read_write),
            Command::CloseAllSessions => {
                self.release(app);
                Ok(Response::Done)
            }
            command => {
                let session = command.session().ok_or(Error::ArgumentsBad)?;
                let cx = self.context(app, session)?;
                self.session_command(cx, command)
            }
        }
    }

    fn context(&self, app: u64, handle: u32) -> Result<Ctx> {
        let session = *self
            .sessions
            .iter()
            .find(|s| s.handle == handle && s.app == app)
            .ok_or(Error::SessionHandleInvalid)?;
        let user = self.logins.iter().find(|l| l.app == app).map(|l| l.user);
        Ok(Ctx { session, user })
    }

    fn session_command(&mut self, cx: Ctx, command: Command) -> Result<Response> {
        match command {
            Command::CloseSession { session } => {
                self.close_session(session);
                Ok(Response::Done)
            }
            Command::SessionInfo { .. } => {
                let rw = cx.session.read_write;
                let state = match (cx.user, rw) {
                    (None, false) => 0,
                    (Some(UserType::User), false) => 1,
                    (None, true) => 2,
                    (Some(UserType::User), true) => 3,
                    (Some(UserType::So), _) => 4,
                };
                Ok(Response::SessionInfo(SessionInfo { state, read_write: rw }))
            }
            Command::Login { user, pin, .. } => self.login(cx, user, pin.expose()),
            Command::Logout { .. } => {
                if cx.user.is_none() {
                    return Err(Error::UserNotLoggedIn);
                }
                self.logins.retain(|l| l.app != cx.session.app);
                let app = cx.session.app;
                // Private session objects of the application become unreachable: destroy them.
                let owned: Vec<u32> =
                    self.sessions.iter().filter(|s| s.app == app).map(|s| s.handle).collect();
                self.objects
                    .retain(|o| !(o.is_private() && o.owner.is_some_and(|s| owned.contains(&s))));
                Ok(Response::Done)
            }
            Command::InitPin { pin, .. } => {
                if cx.user != Some(UserType::So) || !cx.session.read_write {
                    return Err(Error::UserNotLoggedIn);
                }
                let salt = self.salt();
                self.user_pin = Some(Pin::new(salt, pin.expose())?);
                self.dirty = true;
                Ok(Response::Done)
            }
            Command::SetPin { old, new, .. } => self.set_pin(cx, old.expose(), new.expose()),
            Command::CreateObject { template, .. } => self.create_object(cx, &template),
            Command::DestroyObject { object, .. } => {
                let o = self.visible(cx, object)?;
                if !o.flags.contains(Flags::DESTROYABLE) {
                    return Err(Error::ActionProhibited);
                }
                if o.is_token() && !cx.session.read_write {
                    return Err(Error::SessionReadOnly);
                }
                let token = o.is_token();
                self.objects.remove(object);
                self.dirty |= token;
                Ok(Response::Done)
            }
            Command::GetAttributes { object, kinds, .. } => {
                let o = self.visible(cx, object)?;
                Ok(Response::Attributes(kinds.iter().map(|k| read_attribute(o, *k)).collect()))
            }
            Command::SetAttributes { object, template, .. } => {
                self.set_attributes(cx, object, &template)
            }
            Command::FindObjects { template, .. } => {
                let template = Template(&template);
                let found = self
                    .objects
                    .iter()
                    .filter(|o| self.may_see(cx, o))
                    .filter(|o| matches(o, template))
                    .map(|o| o.handle)
                    .collect();
                Ok(Response::Objects(found))
            }
            Command::GenerateKey { mechanism, template, .. } => {
                self.generate_key(cx, &mechanism, &template)
            }
            Command::GenerateKeyPair { mechanism, public, private, .. } => {
                self.generate_key_pair(cx, &mechanism, &public, &private)
            }
            Command::Encrypt { mechanism, key, data, .. } => {
                self.encrypt(cx, &mechanism, key, data.expose())
            }
            Command::Decrypt { mechanism, key, data, .. } => {
                let (iv, aad, tag_bits) = gcm(&mechanism)?;
                let key = self.key(cx, key, Flags::DECRYPT)?;
                let value = key.secret(ckk::AES, Error::KeyTypeInconsistent)?;
                let out = mechanism::aes::gcm_decrypt(value, iv, aad, tag_bits, &data)?;
                Ok(Response::Data(SecretBytes::new(out)))
            }
            Command::Sign { mechanism, key, data, .. } => self.sign(cx, &mechanism, key, &data),
            Command::Verify { mechanism, key, data, signature, .. } => {
                let key = self.key(cx, key, Flags::VERIFY)?;
                match &key.material {
                    Material::RsaPublic { modulus, exponent }
                        if mechanism::rsa::is_signature(mechanism.kind) =>
                    {
                        mechanism::rsa::verify(modulus, exponent, &mechanism, &data, &signature)?
                    }
                    Material::EcPublic { curve, point }
                        if mechanism::ec::is_signature(mechanism.kind) =>
                    {
                        mechanism::ec::verify(*curve, point, mechanism.kind, &data, &signature)?
                    }
                    Material::RsaPublic { .. } | Material::EcPublic { .. }
                        if mechanism::info(mechanism.kind).is_none() =>
                    {
                        return Err(Error::MechanismInvalid);
                    }
                    _ => return Err(Error::KeyTypeInconsistent),
                }
                Ok(Response::Done)
            }
            Command::WrapKey { mechanism, wrapping_key, key, .. } => {
                self.wrap(cx, &mechanism, wrapping_key, key)
            }
            Command::UnwrapKey { mechanism, unwrapping_key, wrapped, template, .. } => {
                self.unwrap(cx, &mechanism, unwrapping_key, &wrapped, &template)
            }
            Command::DeriveKey { mechanism, base, template, .. } => {
                self.derive(cx, &mechanism, base, &template)
            }
            Command::Random { len, .. } => {
                if len > 1 << 20 {
                    return Err(Error::DataLenRange);
                }
                let mut out = alloc::vec![0u8; len as usize];
                self.rng.fill_bytes(&mut out);
                Ok(Response::Data(SecretBytes::new(out)))
            }
            Command::TokenInfo
            | Command::InitToken { .. }
            | Command::OpenSession { .. }
            | Command::CloseAllSessions => Err(Error::ArgumentsBad),
        }
    }

    /// AES-GCM encryption, under the caller's IV (refused in FIPS mode) or under one the
    /// device draws, which then leads the output.
    fn encrypt(
        &mut self,
        cx: Ctx,
        mechanism: &Mechanism,
        key: u32,
        data: &[u8],
    ) -> Result<Response> {
        let (iv, aad, tag_bits, drawn) = match (&mechanism.kind, &mechanism.param) {
            (&ckm::AES_GCM, mechanism::Param::GcmGenerated { fixed, aad, tag_bits }) => {
                let mut iv = [0u8; mechanism::aes::IV_BYTES];
                let (head, tail) =
                    iv.split_at_mut_checked(fixed.len()).ok_or(Error::MechanismParamInvalid)?;
                head.copy_from_slice(fixed);
                self.rng.fill_bytes(tail);
                (iv.to_vec(), aad.as_slice(), *tag_bits, true)
            }
            (&ckm::AES_GCM, mechanism::Param::Gcm { .. }) if self.policy == Policy::Fips => {
                return Err(Error::MechanismParamInvalid);
            }
            _ => {
                let (iv, aad, tag_bits) = gcm(mechanism)?;
                (iv.to_vec(), aad, tag_bits, false)
            }
        };
        let value =
            self.key(cx, key, Flags::ENCRYPT)?.secret(ckk::AES, Error::KeyTypeInconsistent)?;
        let sealed = mechanism::aes::gcm_encrypt(value, &iv, aad, tag_bits, data)?;
        if !drawn {
            return Ok(Response::Data(SecretBytes::new(sealed)));
        }
        let mut out = Vec::with_capacity(iv.len() + sealed.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(Response::Data(SecretBytes::new(out)))
    }

    /// Whether the policy lets `object` be stored (made, unwrapped, imported or changed).
    fn admit(&self, object: &Object) -> Result<()> {
        if self.policy != Policy::Fips {
            return Ok(());
        }
        let class = object.class();
        if matches!(class, cko::SECRET_KEY | cko::PRIVATE_KEY)
            && !object.flags.contains(Flags::SENSITIVE)
        {
            return Err(Error::TemplateInconsistent);
        }
        let used = |purpose: &[Flags]| purpose.iter().any(|f| object.flags.contains(*f));
        let count = PURPOSES.iter().filter(|p| used(p)).count();
        if count > 1 {
            return Err(Error::TemplateInconsistent);
        }
        if let (Material::Secret(value), Some(ckk::GENERIC_SECRET)) =
            (&object.material, object.key_type)
            && value.expose().len() < FIPS_MIN_SECRET_BYTES
        {
            return Err(Error::KeySizeRange);
        }
        Ok(())
    }

    /// The class defaults under the policy: in FIPS mode a key has no usage its template does
    /// not name, so that its one purpose is chosen, never defaulted.
    fn defaults(&self, class: u64, generated: bool) -> Defaults {
        let mut defaults = Defaults::for_class(class, generated);
        if self.policy == Policy::Fips {
            for f in PURPOSES.iter().flat_map(|p| p.iter()) {
                defaults.flags.set(*f, false);
            }
        }
        defaults
    }

    fn salt(&mut self) -> [u8; 16] {
        let mut salt = [0u8; 16];
        self.rng.fill_bytes(&mut salt);
        salt
    }

    fn token_info(&self) -> TokenInfo {
        let mut flags = token_flags::RNG | token_flags::LOGIN_REQUIRED;
        let label = match self.label {
            Some(label) => {
                flags |= token_flags::TOKEN_INITIALIZED;
                label
            }
            None => [b' '; LABEL_BYTES],
        };
        if let Some(pin) = &self.user_pin {
            flags |= token_flags::USER_PIN_INITIALIZED;
            flags |= pin_flags(pin, token_flags::USER_PIN_COUNT_LOW);
        }
        if let Some(pin) = &self.so_pin {
            flags |= pin_flags(pin, token_flags::SO_PIN_COUNT_LOW);
        }
        TokenInfo {
            label,
            flags,
            sessions: self.sessions.len() as u32,
            max_sessions: self.limits.sessions as u32,
            rw_sessions: self.sessions.iter().filter(|s| s.read_write).count() as u32,
            objects: self.objects.len() as u32,
            object_capacity: self.objects.capacity() as u32,
        }
    }

    fn init_token(&mut self, so_pin: &[u8], label: [u8; LABEL_BYTES]) -> Result<Response> {
        if !self.sessions.is_empty() {
            return Err(Error::SessionExists);
        }
        match &mut self.so_pin {
            Some(pin) => {
                let result = pin.check(so_pin);
                self.dirty = true;
                result?;
            }
            None => {
                let salt = self.salt();
                self.so_pin = Some(Pin::new(salt, so_pin)?);
            }
        }
        // Initialising destroys every object and the user PIN, as on a real token.
        self.objects.clear();
        self.user_pin = None;
        self.label = Some(label);
        self.dirty = true;
        Ok(Response::Done)
    }

    fn open_session(&mut self, app: u64, read_write: bool) -> Result<Response> {
        if self.label.is_none() {
            return Err(Error::TokenNotRecognized);
        }
        if self.sessions.len() >= self.limits.sessions {
            return Err(Error::SessionCount);
        }
        let so = self.logins.iter().any(|l| l.app == app && l.user == UserType::So);
        if so && !read_write {
            return Err(Error::SessionReadWriteSoExists);
        }
        let handle = self.next_session;
        self.next_session = self.next_session.checked_add(1).unwrap_or(1);
        self.sessions.push(Session { handle, app, read_write }).map_err(|_| Error::SessionCount)?;
        Ok(Response::Session(handle))
    }

    fn close_session(&mut self, handle: u32) {
        let Some(index) = self.sessions.iter().position(|s| s.handle == handle) else {
            return;
        };
        let session = self.sessions.swap_remove(index);
        self.objects.retain(|o| o.owner != Some(handle));
        // The last session of an application ends its login.
        if !self.sessions.iter().any(|s| s.app == session.app) {
            self.logins.retain(|l| l.app != session.app);
        }
    }

    fn login(&mut self, cx: Ctx, user: UserType, pin: &[u8]) -> Result<Response> {
        match cx.user {
            Some(u) if u == user => return Err(Error::UserAlreadyLoggedIn),
            Some(_) => return Err(Error::UserAnotherAlreadyLoggedIn),
            None => {}
        }
        let app = cx.session.app;
        if user == UserType::So && self.sessions.iter().any(|s| s.app == app && !s.read_write) {
            return Err(Error::SessionReadOnlyExists);
        }
        let stored = match user {
            UserType::So => self.so_pin.as_mut(),
            UserType::User => self.user_pin.as_mut(),
        };
        let Some(stored) = stored else {
            return Err(Error::UserPinNotInitialized);
        };
        let before = stored.failures();
        let result = stored.check(pin);
        // The failure counter is persistent, so that a restart does not reset a lockout.
        self.dirty |= stored.failures() != before;
        result?;
        self.logins.push(Login { app, user }).map_err(|_| Error::DeviceMemory)?;
        Ok(Response::Done)
    }

    fn set_pin(&mut self, cx: Ctx, old: &[u8], new: &[u8]) -> Result<Response> {
        if !cx.session.read_write {
            return Err(Error::SessionReadOnly);
        }
        let salt = self.salt();
        let stored = match cx.user {
            Some(UserType::So) => self.so_pin.as_mut(),
            _ => self.user_pin.as_mut(),
        }
        .ok_or(Error::UserPinNotInitialized)?;
        let result = stored.check(old);
        self.dirty = true;
        result?;
        *stored = Pin::new(salt, new)?;
        Ok(Response::Done)
    }

    /// Whether `cx` may see `o`: its own session objects, token objects, and private objects
    /// only once the user is logged in.
    fn may_see(&self, cx: Ctx, o: &Object) -> bool {
        if o.is_private() && !cx.logged_in() {
            return false;
        }
        match o.owner {
            None => true,
            Some(owner) => {
                self.sessions.iter().any(|s| s.handle == owner && s.app == cx.session.app)
            }
        }
    }

    fn visible(&self, cx: Ctx, handle: u32) -> Result<&Object> {
        self.objects.get(handle).filter(|o| self.may_see(cx, o)).ok_or(Error::ObjectHandleInvalid)
    }

    fn key(&self, cx: Ctx, handle: u32, usage: Flags) -> Result<&Object> {
        let o = self.objects.get(handle).filter(|o| self.may_see(cx, o));
        let o = o.ok_or(Error::KeyHandleInvalid)?;
        if o.class() == cko::DATA {
            return Err(Error::KeyHandleInvalid);
        }
        o.permits(usage, Error::KeyFunctionNotPermitted)?;
        Ok(o)
    }

    /// Checks that `cx` may create an object with `flags`, and gives its owner.
    fn creatable(&self, cx: Ctx, flags: Flags) -> Result<Option<u32>> {
        if flags.contains(Flags::TOKEN) && !cx.session.read_write {
            return Err(Error::SessionReadOnly);
        }
        if flags.contains(Flags::PRIVATE) && !cx.logged_in() {
            return Err(Error::UserNotLoggedIn);
        }
        Ok(if flags.contains(Flags::TOKEN) { None } else { Some(cx.session.handle) })
    }

    fn insert(&mut self, object: Object) -> Result<u32> {
        let token = object.is_token();
        let handle = self.objects.insert(object)?;
        self.dirty |= token;
        Ok(handle)
    }

    fn create_object(&mut self, cx: Ctx, template: &[Attribute]) -> Result<Response> {
        let t = Template::checked(template)?;
        let class = t.ulong(cka::CLASS)?.ok_or(Error::TemplateIncomplete)?;
        let key_type = t.ulong(cka::KEY_TYPE)?;
        let material = match (class, key_type) {
            (cko::DATA, None) => Material::Data(t.bytes(cka::VALUE).unwrap_or_default().to_vec()),
            (cko::SECRET_KEY, Some(ckk::AES)) => {
                let value = t.bytes(cka::VALUE).ok_or(Error::TemplateIncomplete)?;
                if !matches!(value.len(), 16 | 32) {
                    return Err(Error::AttributeValueInvalid);
                }
                Material::Secret(SecretBytes::new(value.to_vec()))
            }
            (cko::SECRET_KEY, Some(ckk::GENERIC_SECRET)) => {
                let value = t.bytes(cka::VALUE).ok_or(Error::TemplateIncomplete)?;
                Material::Secret(SecretBytes::new(value.to_vec()))
            }
            (cko::PUBLIC_KEY, Some(ckk::RSA)) => Material::RsaPublic {
                modulus: t.bytes(cka::MODULUS).ok_or(Error::TemplateIncomplete)?.to_vec(),
                exponent: t.bytes(cka::PUBLIC_EXPONENT).ok_or(Error::TemplateIncomplete)?.to_vec(),
            },
            (cko::PUBLIC_KEY, Some(ckk::EC)) => {
                let curve =
                    Curve::from_params(t.bytes(cka::EC_PARAMS).ok_or(Error::TemplateIncomplete)?)?;
                let point =
                    ec_point(curve, t.bytes(cka::EC_POINT).ok_or(Error::TemplateIncomplete)?);
                mechanism::ec::verify_point(curve, point)?;
                Material::EcPublic { curve, point: point.to_vec() }
            }
            (cko::PRIVATE_KEY, Some(ckk::EC)) => {
                let curve =
                    Curve::from_params(t.bytes(cka::EC_PARAMS).ok_or(Error::TemplateIncomplete)?)?;
                let scalar = t.bytes(cka::VALUE).ok_or(Error::TemplateIncomplete)?;
                mechanism::ec::public_point(curve, scalar)
                    .map_err(|_| Error::AttributeValueInvalid)?;
                Material::EcPrivate { curve, scalar: SecretBytes::new(scalar.to_vec()) }
            }
            (cko::DATA | cko::SECRET_KEY | cko::PUBLIC_KEY | cko::PRIVATE_KEY, _) => {
                return Err(Error::TemplateInconsistent);
            }
            _ => return Err(Error::AttributeValueInvalid),
        };
        // Keys in the clear never enter a FIPS-mode device: they come in wrapped.
        if self.policy == Policy::Fips && matches!(class, cko::SECRET_KEY | cko::PRIVATE_KEY) {
            return Err(Error::ActionProhibited);
        }
        let defaults = self.defaults(class, false);
        let mut object = build(&t, key_type, material, defaults, None)?;
        object.flags.set(Flags::LOCAL, false);
        self.admit(&object)?;
        object.owner = self.creatable(cx, object.flags)?;
        let handle = self.insert(object)?;
        Ok(Response::Object(handle))
    }

    fn set_attributes(&mut self, cx: Ctx, handle: u32, template: &[Attribute]) -> Result<Response> {
        let read_write = cx.session.read_write;
        let o = self.visible(cx, handle)?;
        if o.is_token() && !read_write {
            return Err(Error::SessionReadOnly);
        }
        if !o.flags.contains(Flags::MODIFIABLE) {
            return Err(Error::AttributeReadOnly);
        }
        let mut updated = o.clone();
        let t = Template::checked(template)?;
        for kind in t.kinds() {
            match kind {
                cka::LABEL => set_bounded(&mut updated.label, t.bytes(kind))?,
                cka::ID => set_bounded(&mut updated.id, t.bytes(kind))?,
                cka::SENSITIVE => {
                    // Sensitive may be turned on, never off.
                    if t.bool(kind)? == Some(false) && updated.flags.contains(Flags::SENSITIVE) {
                        return Err(Error::AttributeReadOnly);
                    }
                    updated.flags.set(Flags::SENSITIVE, true);
                }
                cka::EXTRACTABLE => {
                    // Extractable may be turned off, never on.
                    if t.bool(kind)? == Some(true) && !updated.flags.contains(Flags::EXTRACTABLE) {
                        return Err(Error::AttributeReadOnly);
                    }
                    updated.flags.set(Flags::EXTRACTABLE, false);
                }
                cka::ENCRYPT
                | cka::DECRYPT
                | cka::WRAP
                | cka::UNWRAP
                | cka::SIGN
                | cka::VERIFY
                | cka::DERIVE => {
                    let on = t.bool(kind)?.unwrap_or(false);
                    updated.flags.set(usage_flag(kind), on);
                }
                cka::CLASS
                | cka::KEY_TYPE
                | cka::TOKEN
                | cka::PRIVATE
                | cka::VALUE
                | cka::MODULUS
                | cka::PUBLIC_EXPONENT
                | cka::EC_PARAMS
                | cka::EC_POINT
                | cka::LOCAL
                | cka::ALWAYS_SENSITIVE
                | cka::NEVER_EXTRACTABLE
                | cka::MODIFIABLE
                | cka::VALUE_LEN
                | cka::MODULUS_BITS => {
                    return Err(Error::AttributeReadOnly);
                }
                _ => return Err(Error::AttributeTypeInvalid),
            }
        }
        self.admit(&updated)?;
        let token = updated.is_token();
        if let Some(slot) = self.objects.get_mut(handle) {
            *slot = updated;
        }
        self.dirty |= token;
        Ok(Response::Done)
    }

    fn generate_key(
        &mut self,
        cx: Ctx,
        mechanism: &Mechanism,
        template: &[Attribute],
    ) -> Result<Response> {
        let t = Template::checked(template)?;
        let (key_type, allowed): (u64, &[usize]) = match mechanism.kind {
            ckm::AES_KEY_GEN => (ckk::AES, &[16, 32]),
            ckm::GENERIC_SECRET_KEY_GEN => (ckk::GENERIC_SECRET, &[]),
            _ => return Err(Error::MechanismInvalid),
        };
        if t.ulong(cka::CLASS)?.is_some_and(|c| c != cko::SECRET_KEY)
            || t.ulong(cka::KEY_TYPE)?.is_some_and(|k| k != key_type)
        {
            return Err(Error::TemplateInconsistent);
        }
        let len = t.ulong(cka::VALUE_LEN)?.ok_or(Error::TemplateIncomplete)?;
        let len = usize::try_from(len).map_err(|_| Error::AttributeValueInvalid)?;
        let ok =
            if allowed.is_empty() { (1..=1024).contains(&len) } else { allowed.contains(&len) };
        if !ok {
            return Err(Error::AttributeValueInvalid);
        }
        let mut value = alloc::vec![0u8; len];
        self.rng.fill_bytes(&mut value);
        let material = Material::Secret(SecretBytes::new(value));
        let defaults = self.defaults(cko::SECRET_KEY, true);
        let mut object = build(&t, Some(key_type), material, defaults, Some(mechanism.kind))?;
        self.admit(&object)?;
        object.owner = self.creatable(cx, object.flags)?;
        let handle = self.insert(object)?;
        Ok(Response::Object(handle))
    }

    fn generate_key_pair(
        &mut self,
        cx: Ctx,
        mechanism: &Mechanism,
        public: &[Attribute],
        private: &[Attribute],
    ) -> Result<Response> {
        let (pt, st) = (Template::checked(public)?, Template::checked(private)?);
        let (key_type, public_material, private_material) = match mechanism.kind {
            ckm::RSA_PKCS_KEY_PAIR_GEN => {
                let bits = pt.ulong(cka::MODULUS_BITS)?.ok_or(Error::TemplateIncomplete)?;
                let exponent = pt.bytes(cka::PUBLIC_EXPONENT).unwrap_or(&[1, 0, 1]);
                let (pkcs8, modulus, exponent) =
                    mechanism::rsa::generate(&mut self.rng, bits, exponent)?;
                (ckk::RSA, Material::RsaPublic { modulus, exponent }, Material::RsaPrivate(pkcs8))
            }
            ckm::EC_KEY_PAIR_GEN => {
                let params = pt.bytes(cka::EC_PARAMS).ok_or(Error::TemplateIncomplete)?;
                let curve = Curve::from_params(params)?;
                let (scalar, point) = mechanism::ec::generate(&mut self.rng, curve);
                (
                    ckk::EC,
                    Material::EcPublic { curve, point },
                    Material::EcPrivate { curve, scalar },
                )
            }
            _ => return Err(Error::MechanismInvalid),
        };
        for (t, class) in [(pt, cko::PUBLIC_KEY), (st, cko::PRIVATE_KEY)] {
            if t.ulong(cka::CLASS)?.is_some_and(|c| c != class)
                || t.ulong(cka::KEY_TYPE)?.is_some_and(|k| k != key_type)
            {
                return Err(Error::TemplateInconsistent);
            }
        }
        let mut public = build(
            &pt,
            Some(key_type),
            public_material,
            self.defaults(cko::PUBLIC_KEY, true),
            Some(mechanism.kind),
        )?;
        let mut private = build(
            &st,
            Some(key_type),
            private_material,
            self.defaults(cko::PRIVATE_KEY, true),
            Some(mechanism.kind),
        )?;
        self.admit(&public)?;
        self.admit(&private)?;
        public.owner = self.creatable(cx, public.flags)?;
        private.owner = self.creatable(cx, private.flags)?;
        if self.objects.len() + 2 > self.objects.capacity() {
            return Err(Error::DeviceMemory);
        }
        let public = self.insert(public)?;
        let private = self.insert(private)?;
        Ok(Response::Pair { public, private })
    }

    fn sign(&mut self, cx: Ctx, mechanism: &Mechanism, key: u32, data: &[u8]) -> Result<Response> {
        let key =
            self.objects.get(key).filter(|o| self.may_see(cx, o)).ok_or(Error::KeyHandleInvalid)?;
        key.permits(Flags::SIGN, Error::KeyFunctionNotPermitted)?;
        let out = match &key.material {
            Material::RsaPrivate(pkcs8) if mechanism::rsa::is_signature(mechanism.kind) => {
                mechanism::rsa::sign(&mut self.rng, pkcs8.expose(), mechanism, data)?
            }
            Material::EcPrivate { curve, scalar }
                if mechanism::ec::is_signature(mechanism.kind) =>
            {
                mechanism::ec::sign(*curve, scalar.expose(), mechanism.kind, data)?
            }
            _ if mechanism::info(mechanism.kind).is_none() => return Err(Error::MechanismInvalid),
            _ => return Err(Error::KeyTypeInconsistent),
        };
        Ok(Response::Data(SecretBytes::new(out)))
    }

    fn wrap(
        &mut self,
        cx: Ctx,
        mechanism: &Mechanism,
        wrapping: u32,
        key: u32,
    ) -> Result<Response> {
        let padded = padded_wrap(mechanism)?;
        let kek = self.kek(cx, wrapping, Flags::WRAP)?;
        if self.policy == Policy::Fips && !self.kept_inside(wrapping) {
            // A key leaves only under one that cannot follow it out.
            return Err(Error::WrappingKeyTypeInconsistent);
        }
        let key =
            self.objects.get(key).filter(|o| self.may_see(cx, o)).ok_or(Error::KeyHandleInvalid)?;
        key.permits(Flags::EXTRACTABLE, Error::KeyUnextractable)?;
        let plain = match &key.material {
            Material::Secret(v) => SecretBytes::new(v.expose().to_vec()),
            Material::RsaPrivate(pkcs8) => SecretBytes::new(pkcs8.expose().to_vec()),
            Material::EcPrivate { curve, scalar } => {
                mechanism::ec::to_pkcs8(*curve, scalar.expose())?
            }
            _ => return Err(Error::KeyNotWrappable),
        };
        let out = if padded {
            mechanism::kwp::wrap(kek, plain.expose())?
        } else {
            mechanism::kwp::wrap_unpadded(kek, plain.expose())?
        };
        Ok(Response::Data(SecretBytes::new(out)))
    }

    /// Whether the key `handle` can never leave the device: sensitive and not extractable.
    fn kept_inside(&self, handle: u32) -> bool {
        self.objects.get(handle).is_some_and(|o| {
            o.flags.contains(Flags::SENSITIVE) && !o.flags.contains(Flags::EXTRACTABLE)
        })
    }

    /// The value of an AES key wrapping (`usage` WRAP) or unwrapping keys, with the error
    /// codes PKCS#11 gives each case.
    fn kek(&self, cx: Ctx, handle: u32, usage: Flags) -> Result<&[u8]> {
        let (invalid, inconsistent) = if usage == Flags::WRAP {
            (Error::WrappingKeyHandleInvalid, Error::WrappingKeyTypeInconsistent)
        } else {
            (Error::UnwrappingKeyHandleInvalid, Error::UnwrappingKeyTypeInconsistent)
        };
        let kek = self.objects.get(handle).filter(|o| self.may_see(cx, o)).ok_or(invalid)?;
        kek.permits(usage, Error::KeyFunctionNotPermitted)?;
        kek.secret(ckk::AES, inconsistent)
    }

    fn unwrap(
        &mut self,
        cx: Ctx,
        mechanism: &Mechanism,
        unwrapping: u32,
        wrapped: &[u8],
        template: &[Attribute],
    ) -> Result<Response> {
        let padded = padded_wrap(mechanism)?;
        let t = Template::checked(template)?;
        let class = t.ulong(cka::CLASS)?.ok_or(Error::TemplateIncomplete)?;
        let key_type = t.ulong(cka::KEY_TYPE)?.ok_or(Error::TemplateIncomplete)?;
        let kek = self.kek(cx, unwrapping, Flags::UNWRAP)?;
        let plain = SecretBytes::new(if padded {
            mechanism::kwp::unwrap(kek, wrapped)?
        } else {
            mechanism::kwp::unwrap_unpadded(kek, wrapped)?
        });
        let material = match (class, key_type) {
            (cko::SECRET_KEY, ckk::AES) if matches!(plain.expose().len(), 16 | 32) => {
                Material::Secret(plain)
            }
            (cko::SECRET_KEY, ckk::AES) => return Err(Error::WrappedKeyInvalid),
            (cko::SECRET_KEY, ckk::GENERIC_SECRET) => Material::Secret(plain),
            (cko::PRIVATE_KEY, ckk::RSA) => {
                mechanism::rsa::private_key(plain.expose())?;
                Material::RsaPrivate(plain)
            }
            (cko::PRIVATE_KEY, ckk::EC) => {
                let (curve, scalar) = mechanism::ec::from_pkcs8(plain.expose())?;
                Material::EcPrivate { curve, scalar }
            }
            _ => return Err(Error::TemplateInconsistent),
        };
        let mut object = build(&t, Some(key_type), material, self.defaults(class, false), None)?;
        // An unwrapped key was outside the device: it was never always-sensitive.
        object.flags.set(Flags::LOCAL, false);
        object.flags.set(Flags::ALWAYS_SENSITIVE, false);
        object.flags.set(Flags::NEVER_EXTRACTABLE, false);
        self.admit(&object)?;
        object.owner = self.creatable(cx, object.flags)?;
        let handle = self.insert(object)?;
        Ok(Response::Object(handle))
    }
}

impl<R: CryptoRngCore, const N: usize> Firmware<R, N> {
    /// ECDH (`CKM_ECDH1_DERIVE` with `CKD_NULL`): a secret key whose value is the leading
    /// `CKA_VALUE_LEN` bytes of the shared secret's x-coordinate.
    fn derive(
        &mut self,
        cx: Ctx,
        mechanism: &Mechanism,
        base: u32,
        template: &[Attribute],
    ) -> Result<Response> {
        let (kdf, public) = match (&mechanism.kind, &mechanism.param) {
            (&ckm::ECDH1_DERIVE, mechanism::Param::Ecdh { kdf, public }) => (*kdf, public),
            (&ckm::ECDH1_DERIVE, _) => return Err(Error::MechanismParamInvalid),
            _ => return Err(Error::MechanismInvalid),
        };
        if kdf != mechanism::ckd::NULL {
            return Err(Error::MechanismParamInvalid);
        }
        let t = Template::checked(template)?;
        let key_type = t.ulong(cka::KEY_TYPE)?.ok_or(Error::TemplateIncomplete)?;
        if t.ulong(cka::CLASS)?.is_some_and(|c| c != cko::SECRET_KEY) {
            return Err(Error::TemplateInconsistent);
        }
        let len = t.ulong(cka::VALUE_LEN)?.ok_or(Error::TemplateIncomplete)?;
        let len = usize::try_from(len).map_err(|_| Error::AttributeValueInvalid)?;
        match key_type {
            ckk::AES if matches!(len, 16 | 32) => {}
            ckk::GENERIC_SECRET if len > 0 => {}
            ckk::AES | ckk::GENERIC_SECRET => return Err(Error::AttributeValueInvalid),
            _ => return Err(Error::TemplateInconsistent),
        }
        let shared = {
            let key = self.key(cx, base, Flags::DERIVE)?;
            let Material::EcPrivate { curve, scalar } = &key.material else {
                return Err(Error::KeyTypeInconsistent);
            };
            let point = ec_point(*curve, public);
            mechanism::ec::verify_point(*curve, point).map_err(|_| Error::MechanismParamInvalid)?;
            mechanism::ec::shared_x(*curve, scalar.expose(), point)?
        };
        let value = shared.expose().get(..len).ok_or(Error::AttributeValueInvalid)?;
        let material = Material::Secret(SecretBytes::new(value.to_vec()));
        let defaults = self.defaults(cko::SECRET_KEY, false);
        let mut object = build(&t, Some(key_type), material, defaults, Some(mechanism.kind))?;
        self.admit(&object)?;
        object.owner = self.creatable(cx, object.flags)?;
        let handle = self.insert(object)?;
        Ok(Response::Object(handle))
    }
}

/// Whether a key-wrap mechanism pads (RFC 5649) or not (RFC 3394).
fn padded_wrap(mechanism: &Mechanism) -> Result<bool> {
    match mechanism.kind {
        ckm::AES_KEY_WRAP_PAD => Ok(true),
        ckm::AES_KEY_WRAP => Ok(false),
        _ => Err(Error::MechanismInvalid),
    }
}

fn pin_flags(pin: &Pin, count_low: u64) -> u64 {
    // The three flags sit at count_low, count_low << 1 (final try), count_low << 2 (locked).
    let failures = pin.failures();
    if pin.locked() {
        count_low << 2
    } else if failures + 1 == crate::session::MAX_PIN_FAILURES {
        count_low | (count_low << 1)
    } else if failures > 0 {
        count_low
    } else {
        0
    }
}

fn gcm(mechanism: &Mechanism) -> Result<(&[u8], &[u8], u64)> {
    match (&mechanism.kind, &mechanism.param) {
        (&ckm::AES_GCM, mechanism::Param::Gcm { iv, aad, tag_bits }) => Ok((iv, aad, *tag_bits)),
        (&ckm::AES_GCM, _) => Err(Error::MechanismParamInvalid),
        _ => Err(Error::MechanismInvalid),
    }
}

/// Flag defaults by class. Usage flags default on (as SoftHSM2 does); secret and private keys
/// default to private, sensitive and non-extractable, the safe choice for an HSM.
#[derive(Clone, Copy)]
struct Defaults {
    flags: Flags,
}

impl Defaults {
    fn for_class(class: u64, generated: bool) -> Defaults {
        let mut flags = Flags::MODIFIABLE;
        flags.set(Flags::DESTROYABLE, true);
        flags.set(Flags::COPYABLE, true);
        flags.set(Flags::LOCAL, generated);
        match class {
            cko::SECRET_KEY => {
                for f in [
                    Flags::PRIVATE,
                    Flags::SENSITIVE,
                    Flags::ENCRYPT,
                    Flags::DECRYPT,
                    Flags::WRAP,
                    Flags::UNWRAP,
                    Flags::SIGN,
                    Flags::VERIFY,
                ] {
                    flags.set(f, true);
                }
            }
            cko::PRIVATE_KEY => {
                for f in
                    [Flags::PRIVATE, Flags::SENSITIVE, Flags::SIGN, Flags::DECRYPT, Flags::UNWRAP]
                {
                    flags.set(f, true);
                }
            }
            cko::PUBLIC_KEY => {
                for f in [Flags::VERIFY, Flags::ENCRYPT, Flags::WRAP] {
                    flags.set(f, true);
                }
            }
            _ => {}
        }
        Defaults { flags }
    }
}

fn usage_flag(kind: u64) -> Flags {
    match kind {
        cka::ENCRYPT => Flags::ENCRYPT,
        cka::DECRYPT => Flags::DECRYPT,
        cka::WRAP => Flags::WRAP,
        cka::UNWRAP => Flags::UNWRAP,
        cka::SIGN => Flags::SIGN,
        cka::VERIFY => Flags::VERIFY,
        _ => Flags::DERIVE,
    }
}

fn set_bounded<const M: usize>(
    field: &mut heapless::Vec<u8, M>,
    value: Option<&[u8]>,
) -> Result<()> {
    *field = heapless::Vec::from_slice(value.unwrap_or_default())
        .map_err(|_| Error::AttributeValueInvalid)?;
    Ok(())
}

/// Attributes a template may carry that the firmware accepts and does not keep.
const IGNORED: &[u64] = &[
    0x101,       // CKA_SUBJECT
    0x110,       // CKA_START_DATE
    0x111,       // CKA_END_DATE
    0x4000_0600, // CKA_ALLOWED_MECHANISMS
    cka::SIGN_RECOVER,
    cka::VERIFY_RECOVER,
    cka::ALWAYS_AUTHENTICATE,
    cka::WRAP_WITH_TRUSTED,
];

/// Builds an object from a template over class defaults, rejecting unknown attributes.
fn build(
    t: &Template<'_>,
    key_type: Option<u64>,
    material: Material,
    defaults: Defaults,
    key_gen_mechanism: Option<u64>,
) -> Result<Object> {
    let mut flags = defaults.flags;
    let mut label = heapless::Vec::new();
    let mut id = heapless::Vec::new();
    for kind in t.kinds() {
        match kind {
            cka::TOKEN => flags.set(Flags::TOKEN, t.bool(kind)?.unwrap_or(false)),
            cka::PRIVATE => flags.set(Flags::PRIVATE, t.bool(kind)?.unwrap_or(false)),
            cka::SENSITIVE => flags.set(Flags::SENSITIVE, t.bool(kind)?.unwrap_or(false)),
            cka::EXTRACTABLE => flags.set(Flags::EXTRACTABLE, t.bool(kind)?.unwrap_or(false)),
            cka::MODIFIABLE => flags.set(Flags::MODIFIABLE, t.bool(kind)?.unwrap_or(false)),
            cka::DESTROYABLE => flags.set(Flags::DESTROYABLE, t.bool(kind)?.unwrap_or(false)),
            cka::COPYABLE => flags.set(Flags::COPYABLE, t.bool(kind)?.unwrap_or(false)),
            cka::ENCRYPT
            | cka::DECRYPT
            | cka::WRAP
            | cka::UNWRAP
            | cka::SIGN
            | cka::VERIFY
            | cka::DERIVE => flags.set(usage_flag(kind), t.bool(kind)?.unwrap_or(false)),
            cka::LABEL => set_bounded(&mut label, t.bytes(kind))?,
            cka::ID => set_bounded(&mut id, t.bytes(kind))?,
            // Consumed by the caller (class, type, sizes, values, curve).
            cka::CLASS
            | cka::KEY_TYPE
            | cka::VALUE
            | cka::VALUE_LEN
            | cka::MODULUS_BITS
            | cka::PUBLIC_EXPONENT
            | cka::MODULUS
            | cka::EC_PARAMS
            | cka::EC_POINT => {}
            cka::LOCAL
            | cka::ALWAYS_SENSITIVE
            | cka::NEVER_EXTRACTABLE
            | cka::KEY_GEN_MECHANISM => return Err(Error::AttributeReadOnly),
            k if IGNORED.contains(&k) => {}
            _ => return Err(Error::AttributeTypeInvalid),
        }
    }
    let secret = matches!(material.class(), cko::SECRET_KEY | cko::PRIVATE_KEY);
    if !secret {
        flags.set(Flags::SENSITIVE, false);
        flags.set(Flags::EXTRACTABLE, false);
    }
    flags.set(Flags::ALWAYS_SENSITIVE, secret && flags.contains(Flags::SENSITIVE));
    flags.set(Flags::NEVER_EXTRACTABLE, secret && !flags.contains(Flags::EXTRACTABLE));
    Ok(Object { handle: 0, key_type, label, id, flags, key_gen_mechanism, owner: None, material })
}

/// Whether `o` matches every attribute of a search template.
fn matches(o: &Object, template: Template<'_>) -> bool {
    template.0.iter().all(|a| match &read_attribute(o, a.kind) {
        Value::Present(v) => *v == a.value,
        // A search on a withheld or absent attribute finds nothing.
        Value::Sensitive | Value::Invalid => false,
    })
}

/// An EC point given either raw (SEC 1) or DER-wrapped in an OCTET STRING, as tokens accept
/// both. Raw is tried first: a raw uncompressed P-256 point whose x-coordinate starts with 0x3f
/// also reads as an OCTET STRING header (`04 3f`), and must not be cut.
fn ec_point(curve: Curve, value: &[u8]) -> &[u8] {
    if mechanism::ec::verify_point(curve, value).is_ok() { value } else { der_octet_string(value) }
}

/// A DER OCTET STRING's content (CKA_EC_POINT), or the input if it is a raw point.
fn der_octet_string(value: &[u8]) -> &[u8] {
    match value {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest,
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
        _ => value,
    }
}

fn der_wrap_octet_string(point: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(point.len() + 3);
    out.push(0x04);
    if point.len() < 0x80 {
        out.push(point.len() as u8);
    } else {
        out.push(0x81);
        out.push(point.len() as u8);
    }
    out.extend_from_slice(point);
    out
}

/// The flag behind an attribute that only secret and private keys carry.
fn secret_key_flag(kind: u64) -> Option<Flags> {
    Some(match kind {
        cka::DECRYPT => Flags::DECRYPT,
        cka::SIGN => Flags::SIGN,
        cka::UNWRAP => Flags::UNWRAP,
        cka::SENSITIVE => Flags::SENSITIVE,
        cka::EXTRACTABLE => Flags::EXTRACTABLE,
        cka::ALWAYS_SENSITIVE => Flags::ALWAYS_SENSITIVE,
        cka::NEVER_EXTRACTABLE => Flags::NEVER_EXTRACTABLE,
        _ => return None,
    })
}

/// One attribute's value as the object gives it out.
fn read_attribute(o: &Object, kind: u64) -> Value {
    let flag = |f: Flags| Value::Present(alloc::vec![u8::from(o.flags.contains(f))]);
    let ulong = |v: u64| Value::Present(v.to_le_bytes().to_vec());
    let is_key = o.class() != cko::DATA;
    let withheld = o.flags.contains(Flags::SENSITIVE) || !o.flags.contains(Flags::EXTRACTABLE);
    if let Some(f) = secret_key_flag(kind) {
        // Attributes only secret and private keys have.
        let secret = matches!(o.class(), cko::SECRET_KEY | cko::PRIVATE_KEY);
        return if secret { flag(f) } else { Value::Invalid };
    }
    match (kind, &o.material) {
        (cka::CLASS, _) => ulong(o.class()),
        (cka::TOKEN, _) => flag(Flags::TOKEN),
        (cka::PRIVATE, _) => flag(Flags::PRIVATE),
        (cka::MODIFIABLE, _) => flag(Flags::MODIFIABLE),
        (cka::DESTROYABLE, _) => flag(Flags::DESTROYABLE),
        (cka::COPYABLE, _) => flag(Flags::COPYABLE),
        (cka::LABEL, _) => Value::Present(o.label.to_vec()),
        (cka::VALUE, Material::Data(v)) => Value::Present(v.clone()),
        (_, Material::Data(_)) => Value::Invalid,
        (cka::KEY_TYPE, _) => o.key_type.map_or(Value::Invalid, ulong),
        (cka::ID, _) => Value::Present(o.id.to_vec()),
        (cka::LOCAL, _) => flag(Flags::LOCAL),
        (cka::KEY_GEN_MECHANISM, _) => ulong(o.key_gen_mechanism.unwrap_or(u64::MAX)),
        (cka::DERIVE, _) => flag(Flags::DERIVE),
        (cka::ENCRYPT, _) => flag(Flags::ENCRYPT),
        (cka::VERIFY, _) => flag(Flags::VERIFY),
        (cka::WRAP, _) => flag(Flags::WRAP),
        (
            cka::SIGN_RECOVER
            | cka::VERIFY_RECOVER
            | cka::WRAP_WITH_TRUSTED
            | cka::ALWAYS_AUTHENTICATE,
            _,
        ) if is_key => Value::Present(alloc::vec![0]),
        (cka::VALUE, Material::Secret(v)) => {
            if withheld {
                Value::Sensitive
            } else {
                Value::Present(v.expose().to_vec())
            }
        }
        (cka::VALUE_LEN, Material::Secret(v)) => ulong(v.expose().len() as u64),
        (cka::MODULUS, Material::RsaPublic { modulus, .. }) => Value::Present(modulus.clone()),
        (cka::PUBLIC_EXPONENT, Material::RsaPublic { exponent, .. }) => {
            Value::Present(exponent.clone())
        }
        (cka::MODULUS_BITS, Material::RsaPublic { modulus, .. }) => ulong(modulus.len() as u64 * 8),
        (cka::MODULUS | cka::PUBLIC_EXPONENT, Material::RsaPrivate(pkcs8)) => {
            match mechanism::rsa::public_parts(pkcs8.expose()) {
                Ok((n, e)) => Value::Present(if kind == cka::MODULUS { n } else { e }),
                Err(_) => Value::Invalid,
            }
        }
        (
            cka::PRIVATE_EXPONENT
            | cka::PRIME_1
            | cka::PRIME_2
            | cka::EXPONENT_1
            | cka::EXPONENT_2
            | cka::COEFFICIENT,
            Material::RsaPrivate(pkcs8),
        ) => {
            if withheld {
                return Value::Sensitive;
            }
            let index = (kind - cka::PRIVATE_EXPONENT) as usize;
            match mechanism::rsa::private_parts(pkcs8.expose()) {
                Ok(parts) => Value::Present(parts[index].expose().to_vec()),
                Err(_) => Value::Invalid,
            }
        }
        (cka::EC_PARAMS, Material::EcPublic { curve, .. } | Material::EcPrivate { curve, .. }) => {
            Value::Present(curve.params().to_vec())
        }
        (cka::EC_POINT, Material::EcPublic { point, .. }) => {
            Value::Present(der_wrap_octet_string(point))
        }
        (cka::VALUE, Material::EcPrivate { scalar, .. }) => {
            if withheld {
                Value::Sensitive
            } else {
                Value::Present(scalar.expose().to_vec())
            }
        }
        _ => Value::Invalid,
    }
}
