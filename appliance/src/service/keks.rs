//! The KEK lifecycle's background work, which every appliance runs: replacing project KEKs
//! past `[keys] max_age_days` (idle projects too), and the rewrap jobs.
//!
//! A retired KEK is a job in the database queue, leased by one appliance at a time. Its job
//! moves each payload sealed under it to the project's active KEK with the proxy's `Rewrap`
//! (the plaintext stays in the HSM proxy, never reaching the appliance), at most
//! `rewrap_per_second`, each row changed only if it still holds the payload read. Once nothing
//! is sealed under the KEK and its grace period has passed, the job destroys it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hsm_proxy_proto::op::{Blob, Rewrap, Sealed};
use tokio::task::JoinSet;

use crate::config::KeysConfig;
use crate::hsm::{HsmError, payload_aad};
use crate::metrics::RotationReason;
use crate::service::App;
use appliance_store::{RetiredKek, Rewrapped, now_micros};

/// Most aged KEKs replaced per poll: the rest wait for the next.
const AGED_PER_POLL: i64 = 100;

/// How this appliance runs the KEK jobs.
#[derive(Clone, Debug)]
pub(crate) struct KekJobs {
    /// Identifies this appliance's leases.
    owner: String,
    lease: Duration,
    poll: Duration,
    per_second: u32,
    batch: u32,
    grace: Duration,
    max_age: Option<Duration>,
}

impl KekJobs {
    pub(crate) fn from_config(c: &KeysConfig) -> KekJobs {
        let policy = crate::hsm::KekPolicy::from_config(c);
        KekJobs {
            owner: format!("appliance-{}", uuid::Uuid::new_v4()),
            lease: Duration::from_millis(c.lease_ms.max(1)),
            poll: Duration::from_millis(c.poll_ms.max(1)),
            per_second: c.rewrap_per_second,
            batch: c.rewrap_batch.max(1),
            grace: Duration::from_millis(c.retired_grace_ms),
            max_age: policy.max_age,
        }
    }

    fn until(&self, d: Duration) -> i64 {
        now_micros().saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }
}

/// Polls for work until the API is dropped: the age sweep and the rewrap jobs each on a
/// ticker of their own, so that a long job does not hold the sweep back.
pub(crate) async fn run(app: Weak<App>, jobs: KekJobs) {
    let sweep = {
        let (app, jobs) = (app.clone(), jobs.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(jobs.poll);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(app) = app.upgrade() else { return };
                replace_aged(&app, &jobs).await;
            }
        })
    };
    if jobs.per_second > 0 {
        let mut ticker = tokio::time::interval(jobs.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(app) = app.upgrade() else { break };
            loop {
                match app.store.claim_retired_kek(&jobs.owner, jobs.until(jobs.lease)).await {
                    Ok(Some(kek)) => rewrap(&app, &jobs, kek).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot poll for rewrap jobs");
                        break;
                    }
                }
            }
        }
    }
    let _ = sweep.await;
}

/// Replaces active KEKs older than `max_age`, for projects that have not written since.
async fn replace_aged(app: &App, jobs: &KekJobs) {
    let Some(max_age) = jobs.max_age else { return };
    let cutoff = now_micros().saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(0));
    let aged = match app.store.aged_keks(cutoff, AGED_PER_POLL).await {
        Ok(aged) => aged,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for KEKs past their age");
            return;
        }
    };
    for (project, id) in aged {
        if let Err(e) = app.hsm.rotate_kek(&app.store, &project, &id, RotationReason::Age).await {
            tracing::warn!(project, kek = id, error = %e, "cannot replace a KEK past its age");
            return;
        }
    }
}

/// How one pass over a retired KEK's payloads ended.
enum Pass {
    /// Every batch done: how many payloads moved and how many the HSM refused.
    Done { moved: u64, refused: u64 },
    /// The lease went to another appliance, or the HSM or database is unavailable: leave it.
    Stopped,
}

/// Runs the job of one retired KEK under this appliance's lease until it is destroyed or can
/// go no further for now (then it is released, to be taken up again later).
async fn rewrap(app: &Arc<App>, jobs: &KekJobs, kek: RetiredKek) {
    let id = kek.row.id.clone();
    let retired_for =
        Duration::from_micros(u64::try_from(now_micros().saturating_sub(kek.retired)).unwrap_or(0));
    loop {
        let (moved, refused) = match pass(app, jobs, &kek).await {
            Pass::Done { moved, refused } => (moved, refused),
            Pass::Stopped => return,
        };
        if moved > 0 {
            tracing::info!(kek = id, moved, "rewrap pass moved payloads to the active KEK");
        }
        if retired_for < jobs.grace {
            // Appliances that have not yet seen the rotation may still write under it.
            let retry = jobs.until(jobs.grace - retired_for);
            let _ = app.store.release_kek(&id, &jobs.owner, retry).await;
            return;
        }
        match app.store.destroy_kek(&id, &jobs.owner).await {
            Ok(true) => {
                app.hsm.forget_kek(&id);
                if let Some(m) = app.metrics() {
                    m.keks.destroyed.inc();
                }
                tracing::info!(
                    kek = id,
                    project = kek.project_id,
                    "retired KEK destroyed: nothing is sealed under it any more"
                );
                return;
            }
            Ok(false) if moved > 0 => continue,
            Ok(false) => {
                // What is left cannot be moved now: refused payloads, or a waiting order's
                // passphrase that goes with its order.
                if refused > 0 {
                    tracing::warn!(
                        kek = id,
                        refused,
                        "payloads under a retired KEK could not be rewrapped; it is kept"
                    );
                }
                let _ = app.store.release_kek(&id, &jobs.owner, jobs.until(jobs.lease)).await;
                return;
            }
            Err(e) => {
                tracing::warn!(kek = id, error = %e, "cannot destroy a retired KEK");
                let _ = app.store.release_kek(&id, &jobs.owner, jobs.until(jobs.poll)).await;
                return;
            }
        }
    }
}

/// One pass over the payloads sealed under `kek`, in id order, a batch at a time.
async fn pass(app: &Arc<App>, jobs: &KekJobs, kek: &RetiredKek) -> Pass {
    let id = &kek.row.id;
    // Read afresh each pass: the blob changes when the master key is rotated.
    app.hsm.forget_kek(id);
    let old = match app.hsm.kek(&app.store, id).await {
        Ok(old) => old,
        Err(e) => {
            tracing::warn!(kek = %id, error = %e, "cannot read a retired KEK");
            return Pass::Stopped;
        }
    };
    let started = Instant::now();
    let (mut after, mut moved, mut refused) = (String::new(), 0u64, 0u64);
    let stop = |e: &dyn std::fmt::Display| {
        tracing::warn!(kek = %id, error = %e, "rewrap job paused; it will be taken up again");
        Pass::Stopped
    };
    loop {
        let limit = i64::from(jobs.batch);
        let batch = match app.store.sealed_under(id, &after, limit).await {
            Ok(batch) if batch.is_empty() => return Pass::Done { moved, refused },
            Ok(batch) => batch,
            Err(e) => {
                let _ = app.store.release_kek(id, &jobs.owner, jobs.until(jobs.poll)).await;
                return stop(&e);
            }
        };
        // Paced to `per_second` from the pass's start.
        let due = started
            + Duration::from_secs_f64((moved + refused) as f64 / f64::from(jobs.per_second));
        tokio::time::sleep_until(due.into()).await;
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        let (new_id, new) = match app.hsm.project_kek_for(&app.store, &kek.project_id, n).await {
            Ok(active) => active,
            Err(e) => {
                let _ = app.store.release_kek(id, &jobs.owner, jobs.until(jobs.poll)).await;
                return stop(&e);
            }
        };
        let mut calls = JoinSet::new();
        for (i, payload) in batch.iter().enumerate() {
            let Ok(iv) = payload.iv.as_slice().try_into() else {
                refused += 1;
                continue;
            };
            let Ok(tag) = payload.tag.as_slice().try_into() else {
                refused += 1;
                continue;
            };
            let sealed = Sealed { ciphertext: payload.ciphertext.clone(), iv, tag };
            let op = Rewrap {
                old: old.clone(),
                new: new.clone(),
                blob: Blob::Sealed {
                    sealed,
                    aad: payload_aad(&kek.project_id, &payload.secret_id),
                },
            };
            let app = app.clone();
            calls.spawn(async move { (i, app.hsm.call(op).await) });
        }
        let mut rewrapped = Vec::with_capacity(batch.len());
        let mut unavailable = None;
        while let Some(joined) = calls.join_next().await {
            let Ok((i, result)) = joined else { continue };
            let Some(payload) = batch.get(i) else { continue };
            match result {
                Ok(Blob::Sealed { sealed, .. }) => rewrapped.push(Rewrapped {
                    secret_id: payload.secret_id.clone(),
                    old_iv: payload.iv.clone(),
                    kek_id: new_id.clone(),
                    ciphertext: sealed.ciphertext,
                    iv: sealed.iv.to_vec(),
                    tag: sealed.tag.to_vec(),
                }),
                Err(HsmError::Unavailable(e)) => unavailable = Some(e),
                Ok(_) | Err(_) => {
                    refused += 1;
                    if let Some(m) = app.metrics() {
                        m.keks.rewrap_failures.inc();
                    }
                    tracing::warn!(kek = %id, secret = payload.secret_id, "the HSM refused to rewrap a payload");
                }
            }
        }
        match app.store.rewrap(id, &jobs.owner, &rewrapped).await {
            Ok(Some(count)) => {
                moved += count;
                if let Some(m) = app.metrics() {
                    m.keks.rewrapped.inc_by(count);
                }
            }
            Ok(None) => {
                tracing::info!(kek = %id, "rewrap job lease lost to another appliance");
                return Pass::Stopped;
            }
            Err(e) => {
                let _ = app.store.release_kek(id, &jobs.owner, jobs.until(jobs.poll)).await;
                return stop(&e);
            }
        }
        if let Some(e) = unavailable {
            let _ = app.store.release_kek(id, &jobs.owner, jobs.until(jobs.poll)).await;
            return stop(&e);
        }
        match app.store.renew_kek_lease(id, &jobs.owner, jobs.until(jobs.lease)).await {
            Ok(true) => {}
            Ok(false) => return Pass::Stopped,
            Err(e) => return stop(&e),
        }
        match batch.last() {
            Some(last) => after.clone_from(&last.secret_id),
            None => return Pass::Done { moved, refused },
        }
    }
}
