//! The KEK cache: project KEKs unwrapped into the HSM once and reused by handle.
//!
//! Its capacity is learned from the token: it starts at `[keys] kek_cache_capacity`, and when
//! the token has no room for another object (`CKR_DEVICE_MEMORY` from an unwrap, or from any
//! operation's call that makes an object) it shrinks to seven eighths of what it holds and the
//! call is retried; after as many unwraps as it holds without running out, it grows back by an
//! eighth, up to the configured capacity.
//!
//! Unwrapped KEKs are session objects owned by the key-holder session, so they survive the loss
//! of any worker session and are visible to all of them. The cache is bounded (least recently
//! used first out) because HSM object slots are. An evicted KEK is destroyed only once no worker
//! still holds it: the last reference moves its handle to a graveyard that the next miss empties,
//! so no handle is destroyed under a running operation. Each entry carries the stamp of the
//! key-holder session that owns its object; a key-holder the token dropped took its KEKs with it.
//!
//! A KEK serves one purpose, named in its blob's header ([`KekBlob`]): data (encrypt and
//! decrypt) or keys (wrap and unwrap), and is unwrapped with that purpose's usages only.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use hsm_proxy_proto::Status;
use hsm_proxy_proto::op::{Kek, KekId};
use lru::LruCache;

use crate::hsm::failure::{At, Failure, Step};
use crate::hsm::{Epoch, Keyholder, Stale, Stamp, Token};
use crate::metrics::Metrics;

/// What a project KEK is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// AES-GCM encryption and decryption of data (payloads, generated keys' bytes).
    Data,
    /// Wrapping and unwrapping keys (key pairs' private keys).
    Wrapping,
    /// A blob from before purposes were named: both, except on a FIPS-mode token, where one
    /// key serves one purpose and such blobs are data KEKs (the appliance never wrapped keys
    /// under them).
    Unnamed,
}

/// The stored form of a project KEK: a header, then the key wrapped under a master key (RFC
/// 5649).
///
/// - Format 2: `K`, 2, the purpose (0 unnamed, 1 data, 2 wrapping), the master key generation
///   (8 bytes, big-endian), the wrapped key.
/// - Format 1, under master key generation 0 only: `K`, 1, the purpose (1 or 2), the wrapped
///   key.
/// - No header: a blob from before purposes were named, under generation 0.
///
/// Wrapped keys are a multiple of 8 bytes long, so a blob without the header is told apart by
/// its length. Blobs under generation 0 are still written in the older forms, which every
/// proxy reads.
#[derive(Debug)]
pub(crate) struct KekBlob<'a> {
    pub(crate) purpose: Purpose,
    /// The master key generation it is wrapped under.
    pub(crate) mkek: u64,
    pub(crate) wrapped: &'a [u8],
}

const BLOB_MAGIC: u8 = b'K';

impl<'a> KekBlob<'a> {
    /// Reads a stored blob; `None` for one that is none of the forms.
    pub(crate) fn parse(blob: &'a [u8]) -> Option<KekBlob<'a>> {
        let purpose = |code: u8| match code {
            1 => Some(Purpose::Data),
            2 => Some(Purpose::Wrapping),
            _ => None,
        };
        match blob {
            [BLOB_MAGIC, 2, code, rest @ ..] if rest.len() >= 8 && (rest.len() - 8) % 8 == 0 => {
                let (generation, wrapped) = rest.split_at(8);
                let purpose = if *code == 0 { Purpose::Unnamed } else { purpose(*code)? };
                let mkek = u64::from_be_bytes(generation.try_into().ok()?);
                Some(KekBlob { purpose, mkek, wrapped })
            }
            [BLOB_MAGIC, 1, code, wrapped @ ..] if wrapped.len() % 8 == 0 => {
                Some(KekBlob { purpose: purpose(*code)?, mkek: 0, wrapped })
            }
            wrapped if wrapped.len() % 8 == 0 => {
                Some(KekBlob { purpose: Purpose::Unnamed, mkek: 0, wrapped })
            }
            _ => None,
        }
    }

    /// The stored form of `wrapped`, a KEK of `purpose` wrapped under master key generation
    /// `mkek`.
    pub(crate) fn encode(purpose: Purpose, mkek: u64, wrapped: &[u8]) -> Vec<u8> {
        let code = match purpose {
            Purpose::Unnamed => 0,
            Purpose::Data => 1,
            Purpose::Wrapping => 2,
        };
        let mut blob = Vec::with_capacity(11 + wrapped.len());
        match (mkek, purpose) {
            (0, Purpose::Unnamed) => {}
            (0, _) => blob.extend_from_slice(&[BLOB_MAGIC, 1, code]),
            _ => {
                blob.extend_from_slice(&[BLOB_MAGIC, 2, code]);
                blob.extend_from_slice(&mkek.to_be_bytes());
            }
        }
        blob.extend_from_slice(wrapped);
        blob
    }
}

/// What a KEK unwrapped into the HSM may do.
pub(crate) struct Usage {
    /// Encrypt and decrypt.
    pub(crate) data: bool,
    /// Wrap and unwrap.
    pub(crate) keys: bool,
    /// Be wrapped once more (under a newer master key, `RewrapKek`); never for a cached KEK.
    pub(crate) extractable: bool,
}

/// The template a KEK is unwrapped with: a sensitive AES session object with `usage` only.
pub(crate) fn unwrapped_kek(usage: Usage) -> [Attribute; 10] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(usage.extractable),
        Attribute::Encrypt(usage.data),
        Attribute::Decrypt(usage.data),
        Attribute::Wrap(usage.keys),
        Attribute::Unwrap(usage.keys),
    ]
}

/// A KEK unwrapped in the HSM.
#[derive(Debug)]
pub(crate) struct KekEntry {
    pub(crate) handle: ObjectHandle,
    /// What it may be used for: its object has that purpose's usages only.
    purpose: Purpose,
    stamp: Stamp,
    /// The blob it came from: a request naming this id with another blob unwraps that one.
    wrapped: Vec<u8>,
    /// The master key generation the blob is under: its entries go when that key is destroyed.
    mkek: u64,
    /// Unwrapped ahead of its operation, which has not looked it up yet.
    unused: AtomicBool,
    graveyard: Arc<Mutex<Vec<(Stamp, ObjectHandle)>>>,
}

impl KekEntry {
    /// Refuses an operation of `needed` under a KEK of another purpose.
    pub(crate) fn serves(&self, needed: Purpose) -> Result<(), Failure> {
        match (self.purpose, needed) {
            (Purpose::Unnamed, _) | (Purpose::Data, Purpose::Data) => Ok(()),
            (Purpose::Wrapping, Purpose::Wrapping) => Ok(()),
            _ => Err(Failure::Status(Status::InvalidArgument)),
        }
    }
}

impl Drop for KekEntry {
    fn drop(&mut self) {
        lock(&self.graveyard).push((self.stamp, self.handle));
    }
}

/// The cache of unwrapped KEKs, shared by all workers.
#[derive(Debug)]
pub(crate) struct KekCache {
    entries: Mutex<LruCache<KekId, Arc<KekEntry>>>,
    graveyard: Arc<Mutex<Vec<(Stamp, ObjectHandle)>>>,
    /// The configured capacity: the most it ever holds.
    ceiling: usize,
    /// Unwraps since the token last ran out of room, towards growing back.
    roomy_unwraps: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// How often, at most, the token's master keys are read again on a KEK operation.
pub(crate) const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often, at most, they are read again for a blob under a generation this proxy does not
/// know: often enough that a generation made elsewhere is seen at once, seldom enough that
/// blobs naming a bogus one cannot keep the token busy.
pub(crate) const RESCAN_UNKNOWN: std::time::Duration = std::time::Duration::from_millis(100);

/// KEKs a prefetch unwraps under one hold of the key-holder before letting others have it.
const PREFETCH_HOLD: usize = 16;

/// Why a KEK is looked up: for an operation to use now, or to unwrap it ahead of its share.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    ForUse,
    Ahead,
}

/// The fewest KEKs the cache shrinks to: below that, the token's room is taken by something
/// else, and shrinking further would only turn hits into unwraps.
const MIN_CAPACITY: usize = 16;

impl KekCache {
    pub(crate) fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        metrics.kek_cache_capacity.set(gauge(cap.get()));
        Self {
            entries: Mutex::new(LruCache::new(cap)),
            graveyard: Arc::new(Mutex::new(Vec::new())),
            ceiling: cap.get(),
            roomy_unwraps: AtomicUsize::new(0),
            metrics,
        }
    }

    /// The most KEKs it holds now.
    pub(crate) fn capacity(&self) -> usize {
        lock(&self.entries).cap().get()
    }

    /// The token had no room for another object: holds an eighth fewer KEKs (no fewer than
    /// [`MIN_CAPACITY`]); `false` when it cannot shrink further.
    fn shrink(&self) -> bool {
        let mut entries = lock(&self.entries);
        let before = entries.cap().get();
        let target = (entries.len() * 7 / 8).max(MIN_CAPACITY);
        let Some(cap) = NonZeroUsize::new(target).filter(|c| c.get() < before) else {
            return false;
        };
        // Evicted entries go to the graveyard (or later, when their last user lets go).
        entries.resize(cap);
        self.metrics.kek_cache_entries.set(gauge(entries.len()));
        self.metrics.kek_cache_capacity.set(gauge(cap.get()));
        self.roomy_unwraps.store(0, Ordering::Relaxed);
        drop(entries);
        tracing::warn!(
            from = before,
            to = cap.get(),
            "the token has no room for another object: the KEK cache holds fewer KEKs"
        );
        true
    }

    /// Another operation found no room for an object in the token: the cache holds an eighth
    /// fewer KEKs, destroyed now with the key-holder of `epoch`, so that its retry finds room.
    pub(crate) fn make_room(&self, epoch: &Epoch) {
        let holder = lock(&epoch.keyholder);
        if self.shrink() {
            self.bury(&holder.session, (epoch.number, holder.generation));
        }
    }

    /// After an unwrap the token had room for: grows back by an eighth once it has had room for
    /// as many unwraps as the cache holds.
    fn had_room(&self) {
        let roomy = self.roomy_unwraps.fetch_add(1, Ordering::Relaxed) + 1;
        let mut entries = lock(&self.entries);
        let cap = entries.cap().get();
        if cap >= self.ceiling || roomy < cap {
            return;
        }
        let grown = (cap + cap.div_ceil(8)).min(self.ceiling);
        if let Some(grown) = NonZeroUsize::new(grown) {
            entries.resize(grown);
            self.metrics.kek_cache_capacity.set(gauge(grown.get()));
            self.roomy_unwraps.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// The handle of `kek` in this epoch, unwrapping it under the MKEK on a miss. A key-holder
    /// session that the token dropped is replaced here, under its lock, and the failure is
    /// returned for the operation to be retried.
    pub(crate) fn resolve(
        &self,
        kek: &Kek,
        token: &Token,
        epoch: &Epoch,
    ) -> Result<Arc<KekEntry>, Failure> {
        if let Some(entry) = self.lookup(kek, epoch.stamp())? {
            self.count_hit(&entry);
            return Ok(entry);
        }
        let mut holder = lock(&epoch.keyholder);
        self.resolve_held(kek, token, epoch, &mut holder, Lookup::ForUse)
    }

    /// Counts a lookup served by handle, unless it is the first use of a KEK unwrapped ahead of
    /// its operation, whose miss is already counted.
    fn count_hit(&self, entry: &KekEntry) {
        // Read first: a hit on a KEK in use writes nothing to the entry other workers share.
        let first_use =
            entry.unused.load(Ordering::Relaxed) && entry.unused.swap(false, Ordering::Relaxed);
        if !first_use {
            self.metrics.kek_cache_hits.inc();
        }
    }

    /// Unwraps the KEKs of a share's operations that are not cached, [`PREFETCH_HOLD`] at a
    /// time under one hold of the key-holder, so that a share of many cold projects waits for
    /// the key-holder a few times rather than once per KEK, while other workers' misses still
    /// get their turn between holds. No more than half the cache's capacity is unwrapped ahead
    /// (more would evict what was just unwrapped), and nothing once `deadline` has passed.
    /// Failures are left for each operation to meet and report; a single miss is left to its
    /// operation as well.
    pub(crate) fn prefetch(&self, keks: &[&Kek], token: &Token, epoch: &Epoch, deadline: Instant) {
        let stamp = epoch.stamp();
        let room = self.capacity() / 2;
        let mut missing: Vec<&Kek> = Vec::new();
        for kek in keks {
            if missing.len() >= room {
                break;
            }
            if matches!(self.lookup(kek, stamp), Ok(None))
                && !missing.iter().any(|m| m.id == kek.id)
            {
                missing.push(kek);
            }
        }
        if missing.len() < 2 {
            return;
        }
        for held in missing.chunks(PREFETCH_HOLD) {
            if Instant::now() >= deadline {
                return;
            }
            let mut holder = lock(&epoch.keyholder);
            for kek in held {
                match self.resolve_held(kek, token, epoch, &mut holder, Lookup::Ahead) {
                    Ok(_) => {}
                    // The token's trouble, not the blob's: the operations recover on their own.
                    Err(f)
                        if matches!(
                            f.status(),
                            Status::HsmUnavailable | Status::HsmResourceExhausted
                        ) =>
                    {
                        return;
                    }
                    // A blob refused: its operation meets the refusal again and reports it.
                    Err(_) => {}
                }
            }
        }
    }

    /// [`KekCache::resolve`] past the fast path, with the key-holder held.
    fn resolve_held(
        &self,
        kek: &Kek,
        token: &Token,
        epoch: &Epoch,
        holder: &mut Keyholder,
        lookup: Lookup,
    ) -> Result<Arc<KekEntry>, Failure> {
        let stamp = (epoch.number, holder.generation);
        // Another worker may have unwrapped it while we waited for the key-holder.
        if let Some(entry) = self.lookup(kek, stamp)? {
            if lookup == Lookup::ForUse {
                self.count_hit(&entry);
            }
            return Ok(entry);
        }
        self.metrics.kek_cache_misses.inc();
        let Some(blob) = KekBlob::parse(&kek.wrapped) else {
            return Err(Failure::Status(Status::KekInvalid));
        };
        let purpose = match blob.purpose {
            Purpose::Unnamed if token.fips => Purpose::Data,
            other => other,
        };
        let data = matches!(purpose, Purpose::Data | Purpose::Unnamed);
        let keys = matches!(purpose, Purpose::Wrapping | Purpose::Unnamed);
        let template = unwrapped_kek(Usage { data, keys, extractable: false });
        let mkek = self.mkek_handle(epoch, &holder.session, token.mkek_label(), blob.mkek)?;
        let unwrap = |session: &cryptoki::session::Session| {
            session
                .unwrap_key(&Mechanism::AesKeyWrapPad, mkek, blob.wrapped, &template)
                .at(Step::KekUnwrap)
        };
        let mut unwrapped = unwrap(&holder.session);
        if unwrapped.as_ref().is_err_and(Failure::out_of_room) && self.shrink() {
            // Make the room: destroy what the shrinking evicted, then try once more.
            self.bury(&holder.session, stamp);
            unwrapped = unwrap(&holder.session);
        }
        if unwrapped.is_ok() {
            self.had_room();
        }
        let handle = match unwrapped {
            Ok(handle) => handle,
            Err(failure) => {
                let failure = self.mkek_failed(
                    epoch,
                    &holder.session,
                    token.mkek_label(),
                    blob.mkek,
                    failure,
                );
                if failure.keyholder_lost() {
                    self.clear();
                    if let Err(e) = token.renew_keyholder(epoch, holder) {
                        // The next unwrap finds the same dead session and tries again.
                        tracing::warn!(error = %e, "replacing the key-holder session failed");
                    }
                }
                return Err(failure);
            }
        };
        let entry = Arc::new(KekEntry {
            handle,
            purpose,
            stamp,
            wrapped: kek.wrapped.clone(),
            mkek: blob.mkek,
            unused: AtomicBool::new(lookup == Lookup::Ahead),
            graveyard: self.graveyard.clone(),
        });
        if lookup == Lookup::Ahead {
            self.metrics.kek_cache_prefetched.inc();
        }
        let evicted = {
            let mut entries = lock(&self.entries);
            let evicted = entries.push(kek.id, entry.clone());
            self.metrics.kek_cache_entries.set(gauge(entries.len()));
            evicted
        };
        if evicted.is_some() {
            self.metrics.kek_cache_evictions.inc();
        }
        // Dropping the evicted entry (outside the cache lock) sends it to the graveyard if no
        // worker holds it; then the graveyard is emptied with the key-holder we hold.
        drop(evicted);
        self.bury(&holder.session, stamp);
        Ok(entry)
    }

    /// Destroys the graveyard's objects with the key-holder session of `stamp`, which the
    /// caller holds.
    fn bury(&self, keyholder: &cryptoki::session::Session, stamp: Stamp) {
        let dead: Vec<_> = lock(&self.graveyard).drain(..).collect();
        for (dead_stamp, handle) in dead {
            // Objects of an earlier epoch or key-holder died with it; their handle numbers may
            // have been reused since.
            if dead_stamp == stamp {
                let _ = keyholder.destroy_object(handle);
            }
        }
    }

    fn lookup(&self, kek: &Kek, stamp: Stamp) -> Result<Option<Arc<KekEntry>>, Failure> {
        let mut entries = lock(&self.entries);
        match entries.get(&kek.id) {
            // Another blob under the same id (the KEK rewrapped under a newer master key, or a
            // forgery): a miss, so the entry is always the key of the blob presented.
            Some(entry) if entry.wrapped != kek.wrapped => Ok(None),
            Some(entry) if entry.stamp == stamp => Ok(Some(entry.clone())),
            _ => Ok(None),
        }
    }

    /// Forgets one KEK whose handle turned out to be invalid.
    pub(crate) fn evict(&self, id: &KekId) {
        let mut entries = lock(&self.entries);
        entries.pop(id);
        self.metrics.kek_cache_entries.set(gauge(entries.len()));
    }

    /// The handle of master key `generation`. One this proxy has not seen may have been made
    /// since it last read the token (`hsm-proxy mkek rotate`, perhaps on another host): the
    /// token is read again, at most every [`RESCAN_UNKNOWN`], and a generation newer than any
    /// known is answered as a passing condition (`HsmUnavailable`), an older one as a blob no
    /// master key here opens (`KekInvalid`).
    pub(crate) fn mkek_handle(
        &self,
        epoch: &Epoch,
        session: &Session,
        label: &str,
        generation: u64,
    ) -> Result<ObjectHandle, Failure> {
        if let Some(handle) = epoch.mkek(generation) {
            return Ok(handle);
        }
        self.reread_mkeks(epoch, session, label, Stale::OlderThan(RESCAN_UNKNOWN));
        match epoch.mkek(generation) {
            Some(handle) => Ok(handle),
            None if generation > epoch.active_mkek().0 => {
                Err(Failure::Status(Status::HsmUnavailable))
            }
            None => Err(Failure::Status(Status::KekInvalid)),
        }
    }

    /// What a call that failed with master key `generation`'s handle means. A handle no longer
    /// valid because the key was destroyed (the token, read again, lists it no more) is a blob
    /// no master key here opens, `KekInvalid`, not a lost device to initialise again.
    pub(crate) fn mkek_failed(
        &self,
        epoch: &Epoch,
        session: &Session,
        label: &str,
        generation: u64,
        failure: Failure,
    ) -> Failure {
        if !failure.handle_invalid() {
            return failure;
        }
        self.reread_mkeks(epoch, session, label, Stale::OlderThan(std::time::Duration::ZERO));
        if epoch.mkek(generation).is_none() { Failure::Status(Status::KekInvalid) } else { failure }
    }

    /// Reads the token's master keys again if the last read is `stale`, and forgets the KEKs
    /// unwrapped under any that is gone.
    pub(crate) fn reread_mkeks(&self, epoch: &Epoch, session: &Session, label: &str, stale: Stale) {
        for gone in epoch.rescan_mkeks(session, label, stale) {
            self.evict_mkek(gone);
        }
    }

    /// Forgets the KEKs unwrapped under a master key that is gone: a cached copy must not
    /// outlive it.
    pub(crate) fn evict_mkek(&self, generation: u64) {
        let mut entries = lock(&self.entries);
        let gone: Vec<KekId> =
            entries.iter().filter(|(_, e)| e.mkek == generation).map(|(id, _)| *id).collect();
        for id in &gone {
            entries.pop(id);
        }
        self.metrics.kek_cache_entries.set(gauge(entries.len()));
    }

    /// Forgets every KEK (the library was re-initialised, or the key-holder lost: their objects
    /// are gone).
    pub(crate) fn clear(&self) {
        let mut entries = lock(&self.entries);
        entries.clear();
        self.metrics.kek_cache_entries.set(0);
        drop(entries);
        lock(&self.graveyard).clear();
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Locks a mutex; a worker that panicked while holding one leaves data that is still
/// consistent (every critical section here is a single map or vector update).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRAPPED: [u8; 40] = [0xa5; 40];

    fn parsed(blob: &[u8]) -> Option<(Purpose, u64, usize)> {
        KekBlob::parse(blob).map(|b| (b.purpose, b.mkek, b.wrapped.len()))
    }

    /// Blobs under master key generation 0 keep the forms older proxies write and read; blobs
    /// under a later generation name it.
    #[test]
    fn blobs_name_their_purpose_and_master_key() {
        let data0 = KekBlob::encode(Purpose::Data, 0, &WRAPPED);
        assert_eq!(data0[..3], [b'K', 1, 1]);
        assert_eq!(parsed(&data0), Some((Purpose::Data, 0, 40)));
        let unnamed0 = KekBlob::encode(Purpose::Unnamed, 0, &WRAPPED);
        assert_eq!(unnamed0, WRAPPED);
        assert_eq!(parsed(&unnamed0), Some((Purpose::Unnamed, 0, 40)));

        let keys7 = KekBlob::encode(Purpose::Wrapping, 7, &WRAPPED);
        assert_eq!(keys7[..11], [b'K', 2, 2, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(parsed(&keys7), Some((Purpose::Wrapping, 7, 40)));
        let unnamed7 = KekBlob::encode(Purpose::Unnamed, 7, &WRAPPED);
        assert_eq!(parsed(&unnamed7), Some((Purpose::Unnamed, 7, 40)));
        let big = KekBlob::encode(Purpose::Data, u64::MAX, &WRAPPED);
        assert_eq!(parsed(&big), Some((Purpose::Data, u64::MAX, 40)));
    }

    #[test]
    fn malformed_blobs_are_none_of_the_forms() {
        let blob = KekBlob::encode(Purpose::Data, 3, &WRAPPED);
        // Cut inside the generation, or one byte short of the wrapped key.
        assert_eq!(parsed(&blob[..9]), None);
        assert_eq!(parsed(&blob[..blob.len() - 1]), None);
        // An unknown purpose code, in either headed format.
        let mut odd = blob.clone();
        odd[2] = 3;
        assert_eq!(parsed(&odd), None);
        let mut odd = KekBlob::encode(Purpose::Data, 0, &WRAPPED);
        odd[2] = 0;
        assert_eq!(parsed(&odd), None);
        // Neither headed nor a multiple of 8 bytes.
        assert_eq!(parsed(&WRAPPED[..39]), None);
    }
}
