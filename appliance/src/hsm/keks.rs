//! Project KEKs as the appliance uses them: each project's active KEK, charged on its durable
//! encryption counter and replaced once it is too old or has sealed too much, and any KEK by id.
//!
//! Encryptions are reserved on the counter a block at a time and spent from memory, so the
//! stored count only ever overstates. An appliance re-reads which KEK is active at least every
//! `[keys] refresh_ms`, so a rotation another appliance made reaches it that fast; a retired
//! KEK outlives that (`retired_grace_ms`) before its job may destroy it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hsm_proxy_proto::op::{GenerateKek, Kek};

use super::{Hsm, HsmError, hex, lock, to_kek};
use crate::config::KeysConfig;
use crate::metrics::{KekMetrics, RotationReason};
use appliance_store::{KekRow, Store, now_micros};

/// When project KEKs are replaced, and how often the active one is re-read.
#[derive(Clone, Debug)]
pub(crate) struct KekPolicy {
    /// Replace a KEK older than this; `None`: never by age.
    pub(crate) max_age: Option<Duration>,
    /// Replace a KEK charged this many encryptions.
    pub(crate) max_encryptions: u64,
    /// Encryptions reserved on the counter at a time.
    pub(crate) reserve_block: u64,
    /// Longest a cached active KEK is used without asking the database.
    pub(crate) refresh: Duration,
}

impl KekPolicy {
    pub(crate) fn from_config(c: &KeysConfig) -> KekPolicy {
        let max_age = (c.max_age_days > 0.0)
            .then(|| Duration::try_from_secs_f64(c.max_age_days * 86_400.0).ok())
            .flatten();
        KekPolicy {
            max_age,
            max_encryptions: c.max_encryptions,
            reserve_block: c.reserve_block.max(1),
            refresh: Duration::from_millis(c.refresh_ms),
        }
    }

    fn too_old(&self, created_micros: i64) -> bool {
        let Some(max_age) = self.max_age else { return false };
        let age = now_micros().saturating_sub(created_micros).max(0).unsigned_abs();
        age >= u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX)
    }
}

/// A project's active KEK as this appliance last read it, with encryptions reserved for it.
#[derive(Debug)]
struct Active {
    id: String,
    kek: Kek,
    checked: Instant,
    reserved: u64,
}

/// The KEKs this appliance has read (wrapped blobs are not secret).
#[derive(Debug)]
pub(crate) struct Keks {
    policy: KekPolicy,
    active: Mutex<HashMap<String, Active>>,
    by_id: Mutex<HashMap<String, Kek>>,
    metrics: Option<Arc<KekMetrics>>,
}

impl Keks {
    pub(crate) fn new(policy: KekPolicy, metrics: Option<Arc<KekMetrics>>) -> Keks {
        Keks {
            policy,
            active: Mutex::new(HashMap::new()),
            by_id: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Spends `n` reserved encryptions on the project's cached active KEK, if it was read
    /// recently enough and has them.
    fn spend(&self, project_id: &str, n: u64) -> Option<(String, Kek)> {
        let mut active = lock(&self.active);
        let a = active.get_mut(project_id)?;
        if a.checked.elapsed() >= self.policy.refresh || a.reserved < n {
            return None;
        }
        a.reserved -= n;
        Some((a.id.clone(), a.kek.clone()))
    }

    /// Records that `id` is the project's active KEK as of now, keeping what is reserved on it.
    /// Its blob is taken afresh: the same KEK is stored anew when the master key is rotated.
    fn checked(&self, project_id: &str, id: &str, kek: &Kek) {
        let mut active = lock(&self.active);
        match active.get_mut(project_id) {
            Some(a) if a.id == id => {
                a.checked = Instant::now();
                if a.kek.wrapped != kek.wrapped {
                    a.kek = kek.clone();
                }
            }
            _ => {
                let a = Active {
                    id: id.to_owned(),
                    kek: kek.clone(),
                    checked: Instant::now(),
                    reserved: 0,
                };
                active.insert(project_id.to_owned(), a);
            }
        }
        lock(&self.by_id).insert(id.to_owned(), kek.clone());
    }

    /// Adds `n` encryptions reserved on the counter of `id`, if it is still the one cached.
    fn reserved(&self, project_id: &str, id: &str, n: u64) {
        if let Some(a) = lock(&self.active).get_mut(project_id)
            && a.id == id
        {
            a.reserved = a.reserved.saturating_add(n);
        }
    }

    /// Forgets the project's active KEK: the next use reads it again.
    fn forget_project(&self, project_id: &str) {
        lock(&self.active).remove(project_id);
    }
}

/// Rounds of reading, reserving and rotating before a write gives up: each round that does
/// not end in a KEK saw another appliance rotate, which does not happen several times a
/// second.
const ATTEMPTS: usize = 5;

impl Hsm {
    /// The project's active KEK, with one encryption charged to it: generated in the HSM and
    /// stored (wrapped) on first use, replaced first if it is too old or has sealed too much.
    pub(crate) async fn project_kek(
        &self,
        store: &Store,
        project_id: &str,
    ) -> Result<(String, Kek), HsmError> {
        self.project_kek_for(store, project_id, 1).await
    }

    /// The project's active KEK, with `n` encryptions charged to it.
    pub(crate) async fn project_kek_for(
        &self,
        store: &Store,
        project_id: &str,
        n: u64,
    ) -> Result<(String, Kek), HsmError> {
        let keks = &self.keks;
        if let Some(hit) = keks.spend(project_id, n) {
            return Ok(hit);
        }
        for _ in 0..ATTEMPTS {
            let Some(active) = store.active_kek(project_id).await? else {
                self.first_kek(store, project_id).await?;
                continue;
            };
            let id = active.row.id.clone();
            if keks.policy.too_old(active.created) {
                self.rotate_kek(store, project_id, &id, RotationReason::Age).await?;
                continue;
            }
            let kek = to_kek(&active.row)?;
            keks.checked(project_id, &id, &kek);
            if let Some(hit) = keks.spend(project_id, n) {
                return Ok(hit);
            }
            let block = keks.policy.reserve_block.max(n);
            let charged = i64::try_from(block).unwrap_or(i64::MAX);
            let Some(count) = store.reserve_encryptions(&id, charged).await? else {
                // Rotated by another appliance since it was read.
                keks.forget_project(project_id);
                continue;
            };
            if u64::try_from(count).unwrap_or(u64::MAX) > keks.policy.max_encryptions {
                self.rotate_kek(store, project_id, &id, RotationReason::Encryptions).await?;
                continue;
            }
            keks.reserved(project_id, &id, block);
            if let Some(hit) = keks.spend(project_id, n) {
                return Ok(hit);
            }
        }
        Err(HsmError::Unavailable(format!(
            "the project's KEK kept changing while it was read ({ATTEMPTS} attempts)"
        )))
    }

    /// Generates and stores the project's first KEK; another appliance's may win the race,
    /// which is as good.
    async fn first_kek(&self, store: &Store, project_id: &str) -> Result<(), HsmError> {
        let kek = self.call(GenerateKek).await?;
        let row = KekRow { id: hex(&kek.id), wrapped: kek.wrapped };
        if store.insert_kek(project_id, &row).await? {
            tracing::info!(kek = %row.id, "new project KEK created in the HSM");
        }
        Ok(())
    }

    /// Replaces the project's active KEK `old` by a new one generated in the HSM; new data is
    /// sealed under the new one from now on, and the rewrap job moves the old data over.
    /// `false` when `old` was no longer active (another appliance rotated it first).
    pub(crate) async fn rotate_kek(
        &self,
        store: &Store,
        project_id: &str,
        old: &str,
        reason: RotationReason,
    ) -> Result<bool, HsmError> {
        let kek = self.call(GenerateKek).await?;
        let row = KekRow { id: hex(&kek.id), wrapped: kek.wrapped };
        let rotated = store.rotate_kek(project_id, old, &row).await?;
        self.keks.forget_project(project_id);
        if rotated {
            tracing::info!(
                project = project_id,
                retired = old,
                kek = %row.id,
                reason = reason.as_str(),
                "project KEK rotated"
            );
            if let Some(m) = &self.keks.metrics {
                m.rotated(reason);
            }
        }
        Ok(rotated)
    }

    /// A KEK by its stored id.
    pub(crate) async fn kek(&self, store: &Store, id: &str) -> Result<Kek, HsmError> {
        if let Some(kek) = lock(&self.keks.by_id).get(id) {
            return Ok(kek.clone());
        }
        let row = store
            .kek(id)
            .await?
            .ok_or_else(|| HsmError::Failed(format!("KEK {id} is not in the database")))?;
        let kek = to_kek(&row)?;
        lock(&self.keks.by_id).insert(id.to_owned(), kek.clone());
        Ok(kek)
    }

    /// Forgets a destroyed KEK.
    pub(crate) fn forget_kek(&self, id: &str) {
        lock(&self.keks.by_id).remove(id);
    }
}
