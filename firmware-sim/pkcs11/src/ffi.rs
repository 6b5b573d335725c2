//! The C ABI: every exported `C_*` function, the function list, and every pointer the caller
//! hands in. This is the only module with `unsafe` code.
//!
//! Pointers become Rust values here, after null and length checks, and nowhere else. Each
//! function body runs inside `guard`, which catches panics (a panic becomes
//! `CKR_GENERAL_ERROR` and never unwinds into C) and turns the `api` functions' errors into
//! `CK_RV` values. The safety contract of every function is PKCS#11's: buffers are as long
//! as their length arguments say and stay valid for the call.

#![allow(non_snake_case)] // the PKCS#11 names

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use cryptoki_sys::*;
use firmware_sim_core::Error;
use firmware_sim_core::attribute::{self, Attribute, Kind, Value};
use firmware_sim_core::command::LABEL_BYTES;
use firmware_sim_core::mechanism::{Mechanism, Param, ckm};

use crate::api::{self, Out, Produced, object_handle, session_handle};
use crate::backend;

type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a function body, catching panics.
fn guard(body: impl FnOnce() -> Result<()>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(e)) => CK_RV::from(e.code()),
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// Declares an exported PKCS#11 function whose body returns `Result<()>`.
macro_rules! pkcs11_fn {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        #[doc = concat!("`", stringify!($name), "`, as PKCS#11 defines it.")]
        $(#[$meta])*
        ///
        /// # Safety
        ///
        /// PKCS#11's contract: every pointer is null or valid for the length given with it.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            guard(|| $body)
        }
    };
}

/// Declares exported functions the module does not implement.
macro_rules! not_supported {
    ($($name:ident($($ty:ty),*);)*) => {
        $(
            #[doc = concat!("`", stringify!($name), "`: not implemented (`CKR_FUNCTION_NOT_SUPPORTED`).")]
            ///
            /// # Safety
            ///
            /// Reads none of its arguments.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($(_: $ty),*) -> CK_RV {
                CKR_FUNCTION_NOT_SUPPORTED
            }
        )*
    };
}

/// Largest single input accepted from a caller.
const MAX_INPUT: usize = firmware_sim::transport::MAX_FRAME / 2;

fn len(value: CK_ULONG) -> Result<usize> {
    usize::try_from(value).map_err(|_| Error::ArgumentsBad)
}

fn ulong(value: usize) -> CK_ULONG {
    CK_ULONG::try_from(value).unwrap_or(CK_UNAVAILABLE_INFORMATION)
}

/// A caller's input buffer.
unsafe fn input<'a>(data: *const CK_BYTE, length: CK_ULONG) -> Result<&'a [u8]> {
    let length = len(length)?;
    if length == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(Error::ArgumentsBad);
    }
    if length > MAX_INPUT {
        return Err(Error::DataLenRange);
    }
    // SAFETY: non-null, and the caller guarantees `length` readable bytes (PKCS#11 contract).
    Ok(unsafe { std::slice::from_raw_parts(data, length) })
}

/// A caller's output buffer and its length: NULL asks for the length only.
unsafe fn output<'a>(data: *mut CK_BYTE, length: *mut CK_ULONG) -> Result<Out<'a>> {
    if length.is_null() {
        return Err(Error::ArgumentsBad);
    }
    if data.is_null() {
        return Ok(Out::Query);
    }
    // SAFETY: `length` is non-null and points at the caller's CK_ULONG.
    let capacity = len(unsafe { *length })?;
    // SAFETY: the caller guarantees `capacity` writable bytes at `data`.
    Ok(Out::Buffer(unsafe { std::slice::from_raw_parts_mut(data, capacity) }))
}

/// Reports what an output call produced through the caller's length.
unsafe fn produced(result: Produced, length: *mut CK_ULONG) -> Result<()> {
    let (n, result) = match result {
        Produced::Written(n) | Produced::Length(n) => (n, Ok(())),
        Produced::TooSmall(n) => (n, Err(Error::BufferTooSmall)),
    };
    // SAFETY: `output` checked that `length` is non-null; it points at the caller's CK_ULONG.
    unsafe { *length = ulong(n) };
    result
}

/// A list answered PKCS#11's way: a NULL `list` asks for the count; a short one gets
/// `CKR_BUFFER_TOO_SMALL` with the count needed.
unsafe fn write_list<T: Copy>(list: *mut T, count: *mut CK_ULONG, items: &[T]) -> Result<()> {
    if count.is_null() {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: `count` is non-null and points at the caller's CK_ULONG.
    let capacity = len(unsafe { *count })?;
    // SAFETY: as above; the caller learns how many items there are.
    unsafe { *count = ulong(items.len()) };
    if list.is_null() {
        return Ok(());
    }
    if capacity < items.len() {
        return Err(Error::BufferTooSmall);
    }
    // SAFETY: the caller guarantees `capacity` >= `items.len()` entries at `list`.
    let out = unsafe { std::slice::from_raw_parts_mut(list, items.len()) };
    out.copy_from_slice(items);
    Ok(())
}

/// Writes one value through a caller's pointer.
unsafe fn write<T>(target: *mut T, value: T) -> Result<()> {
    if target.is_null() {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-null; the caller guarantees it points at a writable T.
    unsafe { ptr::write_unaligned(target, value) };
    Ok(())
}

/// A template from the caller, values in the firmware's canonical encoding.
unsafe fn template(attrs: *const CK_ATTRIBUTE, count: CK_ULONG) -> Result<Vec<Attribute>> {
    let count = len(count)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    if attrs.is_null() || count > 1024 {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-null; the caller guarantees `count` CK_ATTRIBUTEs.
    let attrs = unsafe { std::slice::from_raw_parts(attrs, count) };
    attrs
        .iter()
        .map(|a| {
            // SAFETY: each attribute's value is `ulValueLen` bytes at `pValue`.
            let bytes = unsafe { input(a.pValue as *const CK_BYTE, a.ulValueLen) }?;
            let value = match attribute::kind(a.type_) {
                Kind::Ulong => {
                    let native: [u8; size_of::<CK_ULONG>()] =
                        bytes.try_into().map_err(|_| Error::AttributeValueInvalid)?;
                    CK_ULONG::from_ne_bytes(native).to_le_bytes().to_vec()
                }
                Kind::Bool if bytes.len() != 1 => return Err(Error::AttributeValueInvalid),
                Kind::Bool | Kind::Bytes => bytes.to_vec(),
            };
            Ok(Attribute { kind: a.type_, value })
        })
        .collect()
}

/// A mechanism and its parameter.
unsafe fn mechanism(m: *const CK_MECHANISM) -> Result<Mechanism> {
    if m.is_null() {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-null; the caller guarantees a CK_MECHANISM.
    let m = unsafe { ptr::read_unaligned(m) };
    let param = match m.mechanism {
        ckm::AES_GCM => {
            if m.pParameter.is_null() || len(m.ulParameterLen)? != size_of::<CK_GCM_PARAMS>() {
                return Err(Error::MechanismParamInvalid);
            }
            // SAFETY: non-null and exactly the size of CK_GCM_PARAMS.
            let p = unsafe { ptr::read_unaligned(m.pParameter as *const CK_GCM_PARAMS) };
            let bad = |_| Error::MechanismParamInvalid;
            // SAFETY: the IV is `ulIvLen` bytes at `pIv`.
            let iv = unsafe { input(p.pIv, p.ulIvLen) }.map_err(bad)?;
            // SAFETY: the AAD is `ulAADLen` bytes at `pAAD`.
            let aad = unsafe { input(p.pAAD, p.ulAADLen) }.map_err(bad)?;
            Param::Gcm { iv: iv.to_vec(), aad: aad.to_vec(), tag_bits: p.ulTagBits }
        }
        ckm::RSA_PKCS_PSS
        | ckm::SHA256_RSA_PKCS_PSS
        | ckm::SHA384_RSA_PKCS_PSS
        | ckm::SHA512_RSA_PKCS_PSS => {
            if m.pParameter.is_null()
                || len(m.ulParameterLen)? != size_of::<CK_RSA_PKCS_PSS_PARAMS>()
            {
                return Err(Error::MechanismParamInvalid);
            }
            // SAFETY: non-null and exactly the size of CK_RSA_PKCS_PSS_PARAMS.
            let p = unsafe { ptr::read_unaligned(m.pParameter as *const CK_RSA_PKCS_PSS_PARAMS) };
            Param::Pss { hash: p.hashAlg, mgf: p.mgf, salt_len: p.sLen }
        }
        ckm::ECDH1_DERIVE => {
            if m.pParameter.is_null()
                || len(m.ulParameterLen)? != size_of::<CK_ECDH1_DERIVE_PARAMS>()
            {
                return Err(Error::MechanismParamInvalid);
            }
            // SAFETY: non-null and exactly the size of CK_ECDH1_DERIVE_PARAMS.
            let p = unsafe { ptr::read_unaligned(m.pParameter as *const CK_ECDH1_DERIVE_PARAMS) };
            if p.ulSharedDataLen != 0 {
                return Err(Error::MechanismParamInvalid);
            }
            // SAFETY: the point is `ulPublicDataLen` bytes at `pPublicData`.
            let public = unsafe { input(p.pPublicData, p.ulPublicDataLen) }
                .map_err(|_| Error::MechanismParamInvalid)?;
            Param::Ecdh { kdf: p.kdf, public: public.to_vec() }
        }
        _ if m.pParameter.is_null() || m.ulParameterLen == 0 => Param::None,
        _ => {
            // SAFETY: the parameter is `ulParameterLen` bytes at `pParameter`.
            let bytes = unsafe { input(m.pParameter as *const CK_BYTE, m.ulParameterLen) }?;
            Param::Other(bytes.to_vec())
        }
    };
    Ok(Mechanism { kind: m.mechanism, param })
}

/// Copies `text` into a space-padded PKCS#11 string field.
fn padded<const N: usize>(text: &str) -> [CK_UTF8CHAR; N] {
    let mut out = [b' '; N];
    let bytes = text.as_bytes();
    let n = bytes.len().min(N);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

fn version() -> CK_VERSION {
    let minor = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    let major = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    CK_VERSION { major, minor }
}

const MANUFACTURER: &str = "firmware-sim";

pkcs11_fn! {
    /// Initialises the library: reads `FWSIM_PKCS11_CONF` and reaches the device.
    fn C_Initialize(args: CK_VOID_PTR) {
        if !args.is_null() {
            // SAFETY: non-null; PKCS#11 says it points at CK_C_INITIALIZE_ARGS.
            let args = unsafe { ptr::read_unaligned(args as *const CK_C_INITIALIZE_ARGS) };
            if !args.pReserved.is_null() {
                return Err(Error::ArgumentsBad);
            }
            // The module always uses the OS's locking, which every set of flags allows except
            // "application mutexes only", and that case still permits OS primitives for
            // internal state.
        }
        backend::initialize()
    }
}

pkcs11_fn! {
    /// Ends this library instance: its sessions on the device end with it.
    fn C_Finalize(reserved: CK_VOID_PTR) {
        if !reserved.is_null() {
            return Err(Error::ArgumentsBad);
        }
        backend::finalize()
    }
}

pkcs11_fn! {
    fn C_GetInfo(info: *mut CK_INFO) {
        backend::library()?;
        // SAFETY: `write` checks for null.
        unsafe {
            write(info, CK_INFO {
                cryptokiVersion: CK_VERSION { major: 2, minor: 40 },
                manufacturerID: padded(MANUFACTURER),
                flags: 0,
                libraryDescription: padded("firmware-sim PKCS#11 module"),
                libraryVersion: version(),
            })
        }
    }
}

/// A function list literal of type `$list`: every v2.40 function, then `$extra` fields (the 3.0
/// list's additions).
macro_rules! function_list {
    ($list:ident, $major:literal, $minor:literal, { $($extra:tt)* }) => {
        $list {
            version: CK_VERSION { major: $major, minor: $minor },
            C_Initialize: Some(C_Initialize),
            C_Finalize: Some(C_Finalize),
            C_GetInfo: Some(C_GetInfo),
            C_GetFunctionList: Some(C_GetFunctionList),
            C_GetSlotList: Some(C_GetSlotList),
            C_GetSlotInfo: Some(C_GetSlotInfo),
            C_GetTokenInfo: Some(C_GetTokenInfo),
            C_GetMechanismList: Some(C_GetMechanismList),
            C_GetMechanismInfo: Some(C_GetMechanismInfo),
            C_InitToken: Some(C_InitToken),
            C_InitPIN: Some(C_InitPIN),
            C_SetPIN: Some(C_SetPIN),
            C_OpenSession: Some(C_OpenSession),
            C_CloseSession: Some(C_CloseSession),
            C_CloseAllSessions: Some(C_CloseAllSessions),
            C_GetSessionInfo: Some(C_GetSessionInfo),
            C_GetOperationState: Some(C_GetOperationState),
            C_SetOperationState: Some(C_SetOperationState),
            C_Login: Some(C_Login),
            C_Logout: Some(C_Logout),
            C_CreateObject: Some(C_CreateObject),
            C_CopyObject: Some(C_CopyObject),
            C_DestroyObject: Some(C_DestroyObject),
            C_GetObjectSize: Some(C_GetObjectSize),
            C_GetAttributeValue: Some(C_GetAttributeValue),
            C_SetAttributeValue: Some(C_SetAttributeValue),
            C_FindObjectsInit: Some(C_FindObjectsInit),
            C_FindObjects: Some(C_FindObjects),
            C_FindObjectsFinal: Some(C_FindObjectsFinal),
            C_EncryptInit: Some(C_EncryptInit),
            C_Encrypt: Some(C_Encrypt),
            C_EncryptUpdate: Some(C_EncryptUpdate),
            C_EncryptFinal: Some(C_EncryptFinal),
            C_DecryptInit: Some(C_DecryptInit),
            C_Decrypt: Some(C_Decrypt),
            C_DecryptUpdate: Some(C_DecryptUpdate),
            C_DecryptFinal: Some(C_DecryptFinal),
            C_DigestInit: Some(C_DigestInit),
            C_Digest: Some(C_Digest),
            C_DigestUpdate: Some(C_DigestUpdate),
            C_DigestKey: Some(C_DigestKey),
            C_DigestFinal: Some(C_DigestFinal),
            C_SignInit: Some(C_SignInit),
            C_Sign: Some(C_Sign),
            C_SignUpdate: Some(C_SignUpdate),
            C_SignFinal: Some(C_SignFinal),
            C_SignRecoverInit: Some(C_SignRecoverInit),
            C_SignRecover: Some(C_SignRecover),
            C_VerifyInit: Some(C_VerifyInit),
            C_Verify: Some(C_Verify),
            C_VerifyUpdate: Some(C_VerifyUpdate),
            C_VerifyFinal: Some(C_VerifyFinal),
            C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
            C_VerifyRecover: Some(C_VerifyRecover),
            C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
            C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
            C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
            C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
            C_GenerateKey: Some(C_GenerateKey),
            C_GenerateKeyPair: Some(C_GenerateKeyPair),
            C_WrapKey: Some(C_WrapKey),
            C_UnwrapKey: Some(C_UnwrapKey),
            C_DeriveKey: Some(C_DeriveKey),
            C_SeedRandom: Some(C_SeedRandom),
            C_GenerateRandom: Some(C_GenerateRandom),
            C_GetFunctionStatus: Some(C_GetFunctionStatus),
            C_CancelFunction: Some(C_CancelFunction),
            C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
            $($extra)*
        }
    };
}

/// The function list, PKCS#11 v2.40.
static FUNCTION_LIST: CK_FUNCTION_LIST = function_list!(CK_FUNCTION_LIST, 2, 40, {});

/// The function list, PKCS#11 3.0: the v2.40 functions, the interface functions, and
/// message-based AES-GCM. The other 3.0 functions are absent (NULL), which tells callers so.
static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = function_list!(CK_FUNCTION_LIST_3_0, 3, 0, {
    C_GetInterfaceList: Some(C_GetInterfaceList),
    C_GetInterface: Some(C_GetInterface),
    C_LoginUser: None,
    C_SessionCancel: None,
    C_MessageEncryptInit: Some(C_MessageEncryptInit),
    C_EncryptMessage: Some(C_EncryptMessage),
    C_EncryptMessageBegin: None,
    C_EncryptMessageNext: None,
    C_MessageEncryptFinal: Some(C_MessageEncryptFinal),
    C_MessageDecryptInit: Some(C_MessageDecryptInit),
    C_DecryptMessage: Some(C_DecryptMessage),
    C_DecryptMessageBegin: None,
    C_DecryptMessageNext: None,
    C_MessageDecryptFinal: Some(C_MessageDecryptFinal),
    C_MessageSignInit: None,
    C_SignMessage: None,
    C_SignMessageBegin: None,
    C_SignMessageNext: None,
    C_MessageSignFinal: None,
    C_MessageVerifyInit: None,
    C_VerifyMessage: None,
    C_VerifyMessageBegin: None,
    C_VerifyMessageNext: None,
    C_MessageVerifyFinal: None,
});

/// The interface name PKCS#11 3.0 defines for its function lists.
const INTERFACE_NAME: &[u8] = b"PKCS 11\0";

/// A `CK_INTERFACE` that may live in a static.
struct Interface(CK_INTERFACE);

// SAFETY: the pointers inside point at immutable statics, never written through.
unsafe impl Sync for Interface {}

/// The interfaces offered, the default (3.0) first.
static INTERFACES: [Interface; 2] = [
    Interface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut(),
        pFunctionList: ptr::addr_of!(FUNCTION_LIST_3_0).cast_mut().cast(),
        flags: 0,
    }),
    Interface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut(),
        pFunctionList: ptr::addr_of!(FUNCTION_LIST).cast_mut().cast(),
        flags: 0,
    }),
];

pkcs11_fn! {
    /// The entry point: hands out the function list.
    fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) {
        // SAFETY: `write` checks for null. The list is immutable; PKCS#11 declares the pointer
        // non-const for historical reasons and callers never write through it.
        unsafe { write(list, ptr::addr_of!(FUNCTION_LIST).cast_mut()) }
    }
}

pkcs11_fn! {
    /// PKCS#11 3.0: the interfaces offered (3.0, then 2.40).
    fn C_GetInterfaceList(list: *mut CK_INTERFACE, count: *mut CK_ULONG) {
        let interfaces: Vec<CK_INTERFACE> = INTERFACES.iter().map(|i| i.0).collect();
        // SAFETY: `write_list` checks the pointers; the count and array are the caller's.
        unsafe { write_list(list, count, &interfaces) }
    }
}

pkcs11_fn! {
    /// PKCS#11 3.0: an interface by name and version; with neither, the default (3.0).
    fn C_GetInterface(
        name: *mut CK_UTF8CHAR,
        version: *mut CK_VERSION,
        interface: *mut *mut CK_INTERFACE,
        flags: CK_FLAGS,
    ) {
        if !name.is_null() {
            // SAFETY: a non-null name is a NUL-terminated string (PKCS#11 contract).
            let name = unsafe { std::ffi::CStr::from_ptr(name.cast_const().cast()) };
            if name.to_bytes_with_nul() != INTERFACE_NAME {
                return Err(Error::ArgumentsBad);
            }
        }
        let wanted = if version.is_null() {
            None
        } else {
            // SAFETY: non-null; the caller's CK_VERSION.
            Some(unsafe { ptr::read_unaligned(version) })
        };
        let found = INTERFACES.iter().find(|i| {
            // SAFETY: every interface points at one of the function lists above, each of which
            // starts with its CK_VERSION.
            let v = unsafe { ptr::read(i.0.pFunctionList.cast::<CK_VERSION>()) };
            wanted.is_none_or(|w| w.major == v.major && w.minor == v.minor) && flags & !i.0.flags == 0
        });
        let found = found.ok_or(Error::ArgumentsBad)?;
        // SAFETY: `write` checks for null. The interface is immutable; the API declares the
        // pointer non-const and callers never write through it.
        unsafe { write(interface, ptr::addr_of!(found.0).cast_mut()) }
    }
}

pkcs11_fn! {
    fn C_GetSlotList(_token_present: CK_BBOOL, list: *mut CK_SLOT_ID, count: *mut CK_ULONG) {
        let slots = api::token::slot_list()?;
        // SAFETY: forwarded from the caller.
        unsafe { write_list(list, count, &slots) }
    }
}

pkcs11_fn! {
    fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) {
        api::token::check_slot(slot)?;
        // SAFETY: `write` checks for null.
        unsafe {
            write(info, CK_SLOT_INFO {
                slotDescription: padded("firmware-sim simulated network HSM"),
                manufacturerID: padded(MANUFACTURER),
                flags: CKF_TOKEN_PRESENT | CKF_HW_SLOT,
                hardwareVersion: version(),
                firmwareVersion: version(),
            })
        }
    }
}

pkcs11_fn! {
    fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) {
        let t = api::token::token_info(slot)?;
        let profile = backend::library()?.slot;
        // SAFETY: `write` checks for null.
        unsafe {
            write(info, CK_TOKEN_INFO {
                label: t.label,
                manufacturerID: padded(MANUFACTURER),
                model: padded("fwsim"),
                serialNumber: padded(&format!("{:016}", profile)),
                flags: t.flags,
                ulMaxSessionCount: CK_ULONG::from(t.max_sessions),
                ulSessionCount: CK_ULONG::from(t.sessions),
                ulMaxRwSessionCount: CK_ULONG::from(t.max_sessions),
                ulRwSessionCount: CK_ULONG::from(t.rw_sessions),
                ulMaxPinLen: 64,
                ulMinPinLen: 4,
                ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
                ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
                ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
                ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
                hardwareVersion: version(),
                firmwareVersion: version(),
                utcTime: [b' '; 16],
            })
        }
    }
}

pkcs11_fn! {
    fn C_GetMechanismList(slot: CK_SLOT_ID, list: *mut CK_MECHANISM_TYPE, count: *mut CK_ULONG) {
        let kinds = api::token::mechanism_list(slot)?;
        // SAFETY: forwarded from the caller.
        unsafe { write_list(list, count, &kinds) }
    }
}

pkcs11_fn! {
    fn C_GetMechanismInfo(slot: CK_SLOT_ID, kind: CK_MECHANISM_TYPE, info: *mut CK_MECHANISM_INFO) {
        let m = api::token::mechanism_info(slot, kind)?;
        // SAFETY: `write` checks for null.
        unsafe {
            write(info, CK_MECHANISM_INFO { ulMinKeySize: m.min_key, ulMaxKeySize: m.max_key, flags: m.flags })
        }
    }
}

pkcs11_fn! {
    fn C_InitToken(slot: CK_SLOT_ID, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG, label: *mut CK_UTF8CHAR) {
        // SAFETY: PIN of `pin_len` bytes; the label is 32 bytes (PKCS#11 fixes its size).
        let pin = unsafe { input(pin, pin_len) }?;
        // SAFETY: PKCS#11 fixes the label at 32 bytes.
        let label = unsafe { input(label, LABEL_BYTES as CK_ULONG) }?;
        let label: [u8; LABEL_BYTES] = label.try_into().map_err(|_| Error::ArgumentsBad)?;
        api::token::init_token(slot, pin, label)
    }
}

pkcs11_fn! {
    fn C_InitPIN(session: CK_SESSION_HANDLE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) {
        // SAFETY: PIN of `pin_len` bytes.
        let pin = unsafe { input(pin, pin_len) }?;
        api::token::init_pin(session_handle(session)?, pin)
    }
}

pkcs11_fn! {
    fn C_SetPIN(
        session: CK_SESSION_HANDLE,
        old: *mut CK_UTF8CHAR,
        old_len: CK_ULONG,
        new: *mut CK_UTF8CHAR,
        new_len: CK_ULONG,
    ) {
        // SAFETY: PINs of their stated lengths.
        let old = unsafe { input(old, old_len) }?;
        // SAFETY: as for the old PIN.
        let new = unsafe { input(new, new_len) }?;
        api::token::set_pin(session_handle(session)?, old, new)
    }
}

pkcs11_fn! {
    fn C_OpenSession(
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
        _application: CK_VOID_PTR,
        _notify: CK_NOTIFY,
        session: *mut CK_SESSION_HANDLE,
    ) {
        if session.is_null() {
            return Err(Error::ArgumentsBad);
        }
        let handle = api::session::open(slot, flags)?;
        // SAFETY: checked non-null above.
        unsafe { write(session, CK_SESSION_HANDLE::from(handle)) }
    }
}

pkcs11_fn! {
    fn C_CloseSession(session: CK_SESSION_HANDLE) {
        api::session::close(session_handle(session)?)
    }
}

pkcs11_fn! {
    fn C_CloseAllSessions(slot: CK_SLOT_ID) {
        api::session::close_all(slot)
    }
}

pkcs11_fn! {
    fn C_GetSessionInfo(session: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) {
        let (slot, s) = api::session::info(session_handle(session)?)?;
        let flags = CKF_SERIAL_SESSION | if s.read_write { CKF_RW_SESSION } else { 0 };
        // SAFETY: `write` checks for null.
        unsafe { write(info, CK_SESSION_INFO { slotID: slot, state: s.state, flags, ulDeviceError: 0 }) }
    }
}

pkcs11_fn! {
    fn C_Login(session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) {
        // SAFETY: PIN of `pin_len` bytes.
        let pin = unsafe { input(pin, pin_len) }?;
        api::session::login(session_handle(session)?, user, pin)
    }
}

pkcs11_fn! {
    fn C_Logout(session: CK_SESSION_HANDLE) {
        api::session::logout(session_handle(session)?)
    }
}

pkcs11_fn! {
    fn C_CreateObject(
        session: CK_SESSION_HANDLE,
        attrs: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        object: *mut CK_OBJECT_HANDLE,
    ) {
        if object.is_null() {
            return Err(Error::ArgumentsBad);
        }
        // SAFETY: `count` attributes at `attrs`.
        let template = unsafe { template(attrs, count) }?;
        let handle = api::object::create(session_handle(session)?, template)?;
        // SAFETY: checked non-null above.
        unsafe { write(object, CK_OBJECT_HANDLE::from(handle)) }
    }
}

pkcs11_fn! {
    fn C_DestroyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) {
        api::object::destroy(session_handle(session)?, object_handle(object, Error::ObjectHandleInvalid)?)
    }
}

pkcs11_fn! {
    fn C_GetAttributeValue(
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        attrs: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
    ) {
        let count = len(count)?;
        if attrs.is_null() || count == 0 || count > 1024 {
            return Err(Error::ArgumentsBad);
        }
        // SAFETY: non-null; the caller guarantees `count` CK_ATTRIBUTEs, which we may update.
        let attrs = unsafe { std::slice::from_raw_parts_mut(attrs, count) };
        let kinds: Vec<u64> = attrs.iter().map(|a| a.type_).collect();
        let values = api::object::get(
            session_handle(session)?,
            object_handle(object, Error::ObjectHandleInvalid)?,
            &kinds,
        )?;
        let mut result = Ok(());
        for (a, mut value) in attrs.iter_mut().zip(values) {
            let bytes = match &value {
                Value::Present(_) => zeroize::Zeroizing::new(value.take().unwrap_or_default()),
                Value::Sensitive => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    result = Err(Error::AttributeSensitive);
                    continue;
                }
                Value::Invalid => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    result = Err(Error::AttributeTypeInvalid);
                    continue;
                }
            };
            let bytes = match attribute::kind(a.type_) {
                Kind::Ulong => {
                    let wire: [u8; 8] = bytes.as_slice().try_into().map_err(|_| Error::DeviceError)?;
                    let value = CK_ULONG::try_from(u64::from_le_bytes(wire))
                        .unwrap_or(CK_UNAVAILABLE_INFORMATION);
                    zeroize::Zeroizing::new(value.to_ne_bytes().to_vec())
                }
                Kind::Bool | Kind::Bytes => bytes,
            };
            if a.pValue.is_null() {
                a.ulValueLen = ulong(bytes.len());
            } else if len(a.ulValueLen)? < bytes.len() {
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                result = Err(Error::BufferTooSmall);
            } else {
                // SAFETY: the caller's buffer holds `ulValueLen` >= `bytes.len()` bytes.
                unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), a.pValue as *mut u8, bytes.len()) };
                a.ulValueLen = ulong(bytes.len());
            }
        }
        result
    }
}

pkcs11_fn! {
    fn C_SetAttributeValue(
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        attrs: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
    ) {
        // SAFETY: `count` attributes at `attrs`.
        let template = unsafe { template(attrs, count) }?;
        api::object::set(session_handle(session)?, object_handle(object, Error::ObjectHandleInvalid)?, template)
    }
}

pkcs11_fn! {
    fn C_FindObjectsInit(session: CK_SESSION_HANDLE, attrs: *mut CK_ATTRIBUTE, count: CK_ULONG) {
        // SAFETY: `count` attributes at `attrs`.
        let template = unsafe { template(attrs, count) }?;
        api::object::find_init(session_handle(session)?, template)
    }
}

pkcs11_fn! {
    fn C_FindObjects(
        session: CK_SESSION_HANDLE,
        objects: *mut CK_OBJECT_HANDLE,
        max: CK_ULONG,
        count: *mut CK_ULONG,
    ) {
        if count.is_null() || (objects.is_null() && max > 0) {
            return Err(Error::ArgumentsBad);
        }
        let found = api::object::find(session_handle(session)?, len(max)?)?;
        if !found.is_empty() {
            // SAFETY: the caller's array holds `max` >= `found.len()` handles.
            let out = unsafe { std::slice::from_raw_parts_mut(objects, found.len()) };
            for (o, h) in out.iter_mut().zip(&found) {
                *o = CK_OBJECT_HANDLE::from(*h);
            }
        }
        // SAFETY: checked non-null above.
        unsafe { write(count, ulong(found.len())) }
    }
}

pkcs11_fn! {
    fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) {
        api::object::find_final(session_handle(session)?)
    }
}

/// An `*Init` call: the mechanism and key, handed to `begin`.
unsafe fn init(
    session: CK_SESSION_HANDLE,
    m: *const CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
    begin: fn(u32, Mechanism, u32) -> Result<()>,
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    let m = unsafe { mechanism(m) }?;
    begin(session_handle(session)?, m, object_handle(key, Error::KeyHandleInvalid)?)
}

/// A single-part call (`C_Encrypt`, `C_Decrypt`, `C_Sign`), or a final call with no input.
unsafe fn single(
    session: CK_SESSION_HANDLE,
    data: *const CK_BYTE,
    data_len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
    run: fn(u32, &[u8], Out<'_>) -> Result<Produced>,
) -> Result<()> {
    // SAFETY: buffers of their stated lengths, forwarded from the caller.
    let (data, buf) = unsafe { (input(data, data_len)?, output(out, out_len)?) };
    let result = run(session_handle(session)?, data, buf)?;
    // SAFETY: `output` checked `out_len`.
    unsafe { produced(result, out_len) }
}

/// An `*Update` call: input only, gathered until the final call.
unsafe fn gather(
    session: CK_SESSION_HANDLE,
    data: *const CK_BYTE,
    data_len: CK_ULONG,
    add: fn(u32, &[u8]) -> Result<()>,
) -> Result<()> {
    // SAFETY: input of its stated length, forwarded from the caller.
    let data = unsafe { input(data, data_len) }?;
    add(session_handle(session)?, data)
}

pkcs11_fn! {
    fn C_EncryptInit(session: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: forwarded from the caller.
        unsafe { init(session, m, key, api::encrypt::encrypt_init) }
    }
}

pkcs11_fn! {
    fn C_Encrypt(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        out: *mut CK_BYTE,
        out_len: *mut CK_ULONG,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { single(session, data, data_len, out, out_len, api::encrypt::encrypt) }
    }
}

pkcs11_fn! {
    /// GCM produces its output at the final call: updates only gather input.
    fn C_EncryptUpdate(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        _out: *mut CK_BYTE,
        out_len: *mut CK_ULONG,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { gather(session, data, data_len, api::encrypt::encrypt_update) }?;
        // SAFETY: `write` checks for null.
        unsafe { write(out_len, 0) }
    }
}

pkcs11_fn! {
    fn C_EncryptFinal(session: CK_SESSION_HANDLE, out: *mut CK_BYTE, out_len: *mut CK_ULONG) {
        // SAFETY: forwarded from the caller; the input was gathered by the updates.
        unsafe { single(session, ptr::null(), 0, out, out_len, api::encrypt::encrypt) }
    }
}

pkcs11_fn! {
    fn C_DecryptInit(session: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: forwarded from the caller.
        unsafe { init(session, m, key, api::encrypt::decrypt_init) }
    }
}

pkcs11_fn! {
    fn C_Decrypt(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        out: *mut CK_BYTE,
        out_len: *mut CK_ULONG,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { single(session, data, data_len, out, out_len, api::encrypt::decrypt) }
    }
}

pkcs11_fn! {
    /// GCM produces its output at the final call: updates only gather input.
    fn C_DecryptUpdate(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        _out: *mut CK_BYTE,
        out_len: *mut CK_ULONG,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { gather(session, data, data_len, api::encrypt::decrypt_update) }?;
        // SAFETY: `write` checks for null.
        unsafe { write(out_len, 0) }
    }
}

pkcs11_fn! {
    fn C_DecryptFinal(session: CK_SESSION_HANDLE, out: *mut CK_BYTE, out_len: *mut CK_ULONG) {
        // SAFETY: forwarded from the caller; the input was gathered by the updates.
        unsafe { single(session, ptr::null(), 0, out, out_len, api::encrypt::decrypt) }
    }
}

/// A message-based init: AES-GCM, with no parameter or a `CK_GCM_MESSAGE_PARAMS` (whose
/// contents only matter per message).
unsafe fn message_init(
    session: CK_SESSION_HANDLE,
    m: *const CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
    begin: fn(u32, u64, u32) -> Result<()>,
) -> Result<()> {
    if m.is_null() {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-null; the caller guarantees a CK_MECHANISM.
    let m = unsafe { ptr::read_unaligned(m) };
    let param_len = len(m.ulParameterLen)?;
    if !m.pParameter.is_null() && param_len != size_of::<CK_GCM_MESSAGE_PARAMS>() {
        return Err(Error::MechanismParamInvalid);
    }
    begin(session_handle(session)?, m.mechanism, object_handle(key, Error::KeyHandleInvalid)?)
}

/// One message's `CK_GCM_MESSAGE_PARAMS`: the IV (the caller's, or drawn by the device into
/// the caller's buffer), and where the tag is (read or written).
unsafe fn gcm_message<'a>(
    param: *mut std::ffi::c_void,
    param_len: CK_ULONG,
) -> Result<(api::encrypt::GcmMessage<'a>, *mut CK_BYTE, usize)> {
    if param.is_null() || len(param_len)? != size_of::<CK_GCM_MESSAGE_PARAMS>() {
        return Err(Error::MechanismParamInvalid);
    }
    // SAFETY: non-null and exactly the size of CK_GCM_MESSAGE_PARAMS.
    let p = unsafe { ptr::read_unaligned(param as *const CK_GCM_MESSAGE_PARAMS) };
    if p.pTag.is_null() || p.pIv.is_null() {
        return Err(Error::MechanismParamInvalid);
    }
    let iv = match p.ivGenerator {
        // SAFETY: the IV is `ulIvLen` bytes at `pIv`.
        CKG_NO_GENERATE => api::encrypt::Iv::Given(
            unsafe { input(p.pIv, p.ulIvLen) }.map_err(|_| Error::MechanismParamInvalid)?,
        ),
        // Whole bytes of fixed field only.
        CKG_GENERATE_RANDOM if p.ulIvFixedBits % 8 == 0 => api::encrypt::Iv::Drawn {
            fixed: len(p.ulIvFixedBits / 8)?,
            // SAFETY: the caller's IV buffer, `ulIvLen` bytes at `pIv`, which PKCS#11 has the
            // token write the generated IV into.
            into: unsafe { std::slice::from_raw_parts_mut(p.pIv, len(p.ulIvLen)?) },
        },
        _ => return Err(Error::MechanismParamInvalid),
    };
    let tag_len = len(p.ulTagBits / 8)?;
    Ok((api::encrypt::GcmMessage { iv, tag_bits: p.ulTagBits }, p.pTag, tag_len))
}

pkcs11_fn! {
    /// PKCS#11 3.0.
    fn C_MessageEncryptInit(session: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: forwarded from the caller.
        unsafe { message_init(session, m, key, api::encrypt::message_encrypt_init) }
    }
}

pkcs11_fn! {
    /// PKCS#11 3.0: one message; the tag is written where the parameters say.
    fn C_EncryptMessage(
        session: CK_SESSION_HANDLE,
        param: *mut std::ffi::c_void,
        param_len: CK_ULONG,
        aad: *mut CK_BYTE,
        aad_len: CK_ULONG,
        plaintext: *mut CK_BYTE,
        plaintext_len: CK_ULONG,
        out: *mut CK_BYTE,
        out_len: *mut CK_ULONG,
    ) {
        // SAFETY: the parameter, buffers and lengths are the caller's, as PKCS#11 defines them.
        let (mut params, tag_ptr, tag_len) = unsafe { gcm_message(param, param_len) }?;
        // SAFETY: as above.
        let (aad, plaintext, buf) = unsafe {
            (input(aad, aad_len)?, input(plaintext, plaintext_len)?, output(out, out_len)?)
        };
        // SAFETY: `gcm_message` checked the tag pointer; it holds `ulTagBits / 8` bytes.
        let tag = unsafe { std::slice::from_raw_parts_mut(tag_ptr, tag_len) };
        let result = api::encrypt::encrypt_message(
            session_handle(session)?,
            &mut params,
            tag,
            aad,
            plaintext,
            buf,
        )?;
        // SAFETY: `output` checked `out_len`.
        unsafe { produced(result, out_len) }
    }
}

pkcs11_fn! {
    /// PKCS#11 3.0.
    fn C_MessageEncryptFinal(session: CK_SESSION_HANDLE) {
        api::encrypt::message_encrypt_final(session_handle(session)?)
    }
}

pkcs11_fn! {
    /// PKCS#11 3.0.
    fn C_MessageDecryptInit(session: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: forwarded from the caller.
        unsafe { message_init(session, m, key, api::encrypt::message_decrypt_init) }
    }
}

pkcs11_fn! {
    /// PKCS#11 3.0: one message; the tag is read from the parameters.
    fn C_DecryptMessage(
        session: CK_SESSION_HANDLE,
        param: *mut std::ffi::c_void,
        param_len: CK_ULONG,
        aad: *mut CK_BYTE,
        aad_len: CK_ULONG,
        ciphertext: *mut CK_BYTE,
        ciphertext_len: CK_ULONG,
        out: *mut CK_BYTE,
        out_len: *mut CK_ULONG,
    ) {
        // SAFETY: the parameter, buffers and lengths are the caller's, as PKCS#11 defines them.
        let (params, tag_ptr, tag_len) = unsafe { gcm_message(param, param_len) }?;
        // SAFETY: as above.
        let (aad, ciphertext, buf) = unsafe {
            (input(aad, aad_len)?, input(ciphertext, ciphertext_len)?, output(out, out_len)?)
        };
        // SAFETY: `gcm_message` checked the tag pointer; it holds `ulTagBits / 8` bytes.
        let tag = unsafe { std::slice::from_raw_parts(tag_ptr.cast_const(), tag_len) };
        let result = api::encrypt::decrypt_message(
            session_handle(session)?,
            &params,
            tag,
            aad,
            ciphertext,
            buf,
        )?;
        // SAFETY: `output` checked `out_len`.
        unsafe { produced(result, out_len) }
    }
}

pkcs11_fn! {
    /// PKCS#11 3.0.
    fn C_MessageDecryptFinal(session: CK_SESSION_HANDLE) {
        api::encrypt::message_decrypt_final(session_handle(session)?)
    }
}

pkcs11_fn! {
    fn C_SignInit(session: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: forwarded from the caller.
        unsafe { init(session, m, key, api::sign::sign_init) }
    }
}

pkcs11_fn! {
    fn C_Sign(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        out: *mut CK_BYTE,
        out_len: *mut CK_ULONG,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { single(session, data, data_len, out, out_len, api::sign::sign) }
    }
}

pkcs11_fn! {
    fn C_SignUpdate(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, data_len: CK_ULONG) {
        // SAFETY: forwarded from the caller.
        unsafe { gather(session, data, data_len, api::sign::sign_update) }
    }
}

pkcs11_fn! {
    fn C_SignFinal(session: CK_SESSION_HANDLE, out: *mut CK_BYTE, out_len: *mut CK_ULONG) {
        // SAFETY: forwarded from the caller; the input was gathered by the updates.
        unsafe { single(session, ptr::null(), 0, out, out_len, api::sign::sign) }
    }
}

pkcs11_fn! {
    fn C_VerifyInit(session: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: forwarded from the caller.
        unsafe { init(session, m, key, api::sign::verify_init) }
    }
}

pkcs11_fn! {
    fn C_Verify(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: CK_ULONG,
    ) {
        // SAFETY: buffers of their stated lengths.
        let (data, signature) = unsafe { (input(data, data_len)?, input(signature, signature_len)?) };
        api::sign::verify(session_handle(session)?, data, signature)
    }
}

pkcs11_fn! {
    fn C_VerifyUpdate(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, data_len: CK_ULONG) {
        // SAFETY: forwarded from the caller.
        unsafe { gather(session, data, data_len, api::sign::verify_update) }
    }
}

pkcs11_fn! {
    fn C_VerifyFinal(session: CK_SESSION_HANDLE, signature: *mut CK_BYTE, signature_len: CK_ULONG) {
        // SAFETY: the signature of its stated length.
        let signature = unsafe { input(signature, signature_len) }?;
        api::sign::verify(session_handle(session)?, &[], signature)
    }
}

pkcs11_fn! {
    fn C_GenerateKey(
        session: CK_SESSION_HANDLE,
        m: *mut CK_MECHANISM,
        attrs: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    ) {
        if key.is_null() {
            return Err(Error::ArgumentsBad);
        }
        // SAFETY: forwarded from the caller.
        let (m, template) = unsafe { (mechanism(m)?, template(attrs, count)?) };
        let handle = api::keys::generate_key(session_handle(session)?, m, template)?;
        // SAFETY: checked non-null above.
        unsafe { write(key, CK_OBJECT_HANDLE::from(handle)) }
    }
}

pkcs11_fn! {
    fn C_GenerateKeyPair(
        session: CK_SESSION_HANDLE,
        m: *mut CK_MECHANISM,
        public_attrs: *mut CK_ATTRIBUTE,
        public_count: CK_ULONG,
        private_attrs: *mut CK_ATTRIBUTE,
        private_count: CK_ULONG,
        public_key: *mut CK_OBJECT_HANDLE,
        private_key: *mut CK_OBJECT_HANDLE,
    ) {
        if public_key.is_null() || private_key.is_null() {
            return Err(Error::ArgumentsBad);
        }
        // SAFETY: forwarded from the caller.
        let (m, public, private) = unsafe {
            (mechanism(m)?, template(public_attrs, public_count)?, template(private_attrs, private_count)?)
        };
        let (p, s) = api::keys::generate_key_pair(session_handle(session)?, m, public, private)?;
        // SAFETY: checked non-null above.
        unsafe {
            write(public_key, CK_OBJECT_HANDLE::from(p))?;
            write(private_key, CK_OBJECT_HANDLE::from(s))
        }
    }
}

pkcs11_fn! {
    fn C_WrapKey(
        session: CK_SESSION_HANDLE,
        m: *mut CK_MECHANISM,
        wrapping_key: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        out: *mut CK_BYTE,
        out_len: *mut CK_ULONG,
    ) {
        // SAFETY: forwarded from the caller.
        let (m, buf) = unsafe { (mechanism(m)?, output(out, out_len)?) };
        let result = api::keys::wrap(
            session_handle(session)?,
            m,
            object_handle(wrapping_key, Error::WrappingKeyHandleInvalid)?,
            object_handle(key, Error::KeyHandleInvalid)?,
            buf,
        )?;
        // SAFETY: `output` checked `out_len`.
        unsafe { produced(result, out_len) }
    }
}

pkcs11_fn! {
    fn C_DeriveKey(
        session: CK_SESSION_HANDLE,
        m: *mut CK_MECHANISM,
        base: CK_OBJECT_HANDLE,
        attrs: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    ) {
        if key.is_null() {
            return Err(Error::ArgumentsBad);
        }
        // SAFETY: forwarded from the caller.
        let (m, template) = unsafe { (mechanism(m)?, template(attrs, count)?) };
        let handle = api::keys::derive(
            session_handle(session)?,
            m,
            object_handle(base, Error::KeyHandleInvalid)?,
            template,
        )?;
        // SAFETY: checked non-null above.
        unsafe { write(key, CK_OBJECT_HANDLE::from(handle)) }
    }
}

pkcs11_fn! {
    fn C_UnwrapKey(
        session: CK_SESSION_HANDLE,
        m: *mut CK_MECHANISM,
        unwrapping_key: CK_OBJECT_HANDLE,
        wrapped: *mut CK_BYTE,
        wrapped_len: CK_ULONG,
        attrs: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    ) {
        if key.is_null() {
            return Err(Error::ArgumentsBad);
        }
        // SAFETY: forwarded from the caller.
        let (m, wrapped, template) =
            unsafe { (mechanism(m)?, input(wrapped, wrapped_len)?, template(attrs, count)?) };
        let handle = api::keys::unwrap(
            session_handle(session)?,
            m,
            object_handle(unwrapping_key, Error::UnwrappingKeyHandleInvalid)?,
            wrapped,
            template,
        )?;
        // SAFETY: checked non-null above.
        unsafe { write(key, CK_OBJECT_HANDLE::from(handle)) }
    }
}

pkcs11_fn! {
    fn C_GenerateRandom(session: CK_SESSION_HANDLE, out: *mut CK_BYTE, out_len: CK_ULONG) {
        let n = len(out_len)?;
        if n == 0 {
            return Ok(());
        }
        if out.is_null() {
            return Err(Error::ArgumentsBad);
        }
        if n > MAX_INPUT {
            return Err(Error::DataLenRange);
        }
        // SAFETY: non-null; the caller guarantees `n` writable bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(out, n) };
        api::keys::random(session_handle(session)?, buf)
    }
}

pkcs11_fn! {
    fn C_SeedRandom(session: CK_SESSION_HANDLE, _seed: *mut CK_BYTE, _seed_len: CK_ULONG) {
        session_handle(session)?;
        // The device's generator takes no outside entropy, as FIPS modules do not.
        Err(Error::RandomSeedNotSupported)
    }
}

pkcs11_fn! {
    fn C_GetFunctionStatus(_session: CK_SESSION_HANDLE) {
        Err(Error::FunctionNotParallel)
    }
}

pkcs11_fn! {
    fn C_CancelFunction(_session: CK_SESSION_HANDLE) {
        Err(Error::FunctionNotParallel)
    }
}

not_supported! {
    C_GetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_SetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE);
    C_CopyObject(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_GetObjectSize(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ULONG);
    C_DigestInit(CK_SESSION_HANDLE, *mut CK_MECHANISM);
    C_Digest(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DigestUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG);
    C_DigestKey(CK_SESSION_HANDLE, CK_OBJECT_HANDLE);
    C_DigestFinal(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_SignRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_SignRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_VerifyRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_VerifyRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DigestEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptDigestUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_SignEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptVerifyUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_WaitForSlotEvent(CK_FLAGS, *mut CK_SLOT_ID, CK_VOID_PTR);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_the_ckr_value_of_its_name() {
        let expected: &[(Error, CK_RV)] = &[
            (Error::HostMemory, CKR_HOST_MEMORY),
            (Error::SlotIdInvalid, CKR_SLOT_ID_INVALID),
            (Error::GeneralError, CKR_GENERAL_ERROR),
            (Error::FunctionFailed, CKR_FUNCTION_FAILED),
            (Error::ArgumentsBad, CKR_ARGUMENTS_BAD),
            (Error::ActionProhibited, CKR_ACTION_PROHIBITED),
            (Error::AttributeReadOnly, CKR_ATTRIBUTE_READ_ONLY),
            (Error::AttributeSensitive, CKR_ATTRIBUTE_SENSITIVE),
            (Error::AttributeTypeInvalid, CKR_ATTRIBUTE_TYPE_INVALID),
            (Error::AttributeValueInvalid, CKR_ATTRIBUTE_VALUE_INVALID),
            (Error::DataInvalid, CKR_DATA_INVALID),
            (Error::DataLenRange, CKR_DATA_LEN_RANGE),
            (Error::DeviceError, CKR_DEVICE_ERROR),
            (Error::DeviceMemory, CKR_DEVICE_MEMORY),
            (Error::DeviceRemoved, CKR_DEVICE_REMOVED),
            (Error::EncryptedDataInvalid, CKR_ENCRYPTED_DATA_INVALID),
            (Error::EncryptedDataLenRange, CKR_ENCRYPTED_DATA_LEN_RANGE),
            (Error::FunctionNotParallel, CKR_FUNCTION_NOT_PARALLEL),
            (Error::FunctionNotSupported, CKR_FUNCTION_NOT_SUPPORTED),
            (Error::KeyHandleInvalid, CKR_KEY_HANDLE_INVALID),
            (Error::KeySizeRange, CKR_KEY_SIZE_RANGE),
            (Error::KeyTypeInconsistent, CKR_KEY_TYPE_INCONSISTENT),
            (Error::KeyFunctionNotPermitted, CKR_KEY_FUNCTION_NOT_PERMITTED),
            (Error::KeyNotWrappable, CKR_KEY_NOT_WRAPPABLE),
            (Error::KeyUnextractable, CKR_KEY_UNEXTRACTABLE),
            (Error::MechanismInvalid, CKR_MECHANISM_INVALID),
            (Error::MechanismParamInvalid, CKR_MECHANISM_PARAM_INVALID),
            (Error::ObjectHandleInvalid, CKR_OBJECT_HANDLE_INVALID),
            (Error::OperationActive, CKR_OPERATION_ACTIVE),
            (Error::OperationNotInitialized, CKR_OPERATION_NOT_INITIALIZED),
            (Error::PinIncorrect, CKR_PIN_INCORRECT),
            (Error::PinInvalid, CKR_PIN_INVALID),
            (Error::PinLenRange, CKR_PIN_LEN_RANGE),
            (Error::PinLocked, CKR_PIN_LOCKED),
            (Error::SessionClosed, CKR_SESSION_CLOSED),
            (Error::SessionCount, CKR_SESSION_COUNT),
            (Error::SessionHandleInvalid, CKR_SESSION_HANDLE_INVALID),
            (Error::SessionParallelNotSupported, CKR_SESSION_PARALLEL_NOT_SUPPORTED),
            (Error::SessionReadOnly, CKR_SESSION_READ_ONLY),
            (Error::SessionExists, CKR_SESSION_EXISTS),
            (Error::SessionReadOnlyExists, CKR_SESSION_READ_ONLY_EXISTS),
            (Error::SessionReadWriteSoExists, CKR_SESSION_READ_WRITE_SO_EXISTS),
            (Error::SignatureInvalid, CKR_SIGNATURE_INVALID),
            (Error::SignatureLenRange, CKR_SIGNATURE_LEN_RANGE),
            (Error::TemplateIncomplete, CKR_TEMPLATE_INCOMPLETE),
            (Error::TemplateInconsistent, CKR_TEMPLATE_INCONSISTENT),
            (Error::TokenNotPresent, CKR_TOKEN_NOT_PRESENT),
            (Error::TokenNotRecognized, CKR_TOKEN_NOT_RECOGNIZED),
            (Error::UnwrappingKeyHandleInvalid, CKR_UNWRAPPING_KEY_HANDLE_INVALID),
            (Error::UnwrappingKeyTypeInconsistent, CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
            (Error::UserAlreadyLoggedIn, CKR_USER_ALREADY_LOGGED_IN),
            (Error::UserNotLoggedIn, CKR_USER_NOT_LOGGED_IN),
            (Error::UserPinNotInitialized, CKR_USER_PIN_NOT_INITIALIZED),
            (Error::UserTypeInvalid, CKR_USER_TYPE_INVALID),
            (Error::UserAnotherAlreadyLoggedIn, CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
            (Error::WrappedKeyInvalid, CKR_WRAPPED_KEY_INVALID),
            (Error::WrappedKeyLenRange, CKR_WRAPPED_KEY_LEN_RANGE),
            (Error::WrappingKeyHandleInvalid, CKR_WRAPPING_KEY_HANDLE_INVALID),
            (Error::WrappingKeyTypeInconsistent, CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
            (Error::RandomSeedNotSupported, CKR_RANDOM_SEED_NOT_SUPPORTED),
            (Error::CurveNotSupported, CKR_CURVE_NOT_SUPPORTED),
            (Error::BufferTooSmall, CKR_BUFFER_TOO_SMALL),
            (Error::CryptokiNotInitialized, CKR_CRYPTOKI_NOT_INITIALIZED),
            (Error::CryptokiAlreadyInitialized, CKR_CRYPTOKI_ALREADY_INITIALIZED),
        ];
        assert_eq!(expected.len(), Error::ALL.len(), "every variant is listed");
        for (e, rv) in expected {
            assert_eq!(CK_RV::from(e.code()), *rv, "{e:?}");
        }
    }

    #[test]
    fn a_panic_becomes_general_error() {
        assert_eq!(guard(|| panic!("boom")), CKR_GENERAL_ERROR);
        assert_eq!(guard(|| Err(Error::PinLocked)), CKR_PIN_LOCKED);
        assert_eq!(guard(|| Ok(())), CKR_OK);
    }
}
