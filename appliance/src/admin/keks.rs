//! `appliance kek status` and `kek rotate`: where each project's KEKs stand (the active one,
//! retired ones and their rewrap jobs), and replacing projects' active KEKs on demand. The
//! serving appliances' rewrap jobs then move the data over. `kek rewrap-master` wraps every
//! stored KEK again under the token's newest master key, after `hsm-proxy mkek rotate`.

use std::fmt::Write as _;

use appliance_store::{KekStatus, Store};

use super::open_store as open;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::RotationReason;
use crate::timefmt::format_micros;

/// Which projects `kek rotate` replaces the KEK of.
#[derive(Clone, Debug)]
pub enum Target {
    /// These projects.
    Projects(Vec<String>),
    /// Every project with a KEK.
    All,
}

/// `appliance kek status`: every KEK (or one project's) as a table, then totals.
pub async fn status(config: &Config, project: Option<&str>) -> Result<String> {
    let store = open(config).await?;
    let keks = store.kek_status(project).await;
    store.close().await;
    Ok(table(&keks?))
}

fn table(keks: &[KekStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<32} {:<8} {:<26} {:>12} {:>8} {:>9}  JOB",
        "PROJECT", "KEK", "STATE", "CREATED", "ENCRYPTIONS", "SEALED", "REWRAPPED"
    );
    for k in keks {
        let state = if k.active { "active" } else { "retired" };
        let job = match (&k.retired, &k.lease) {
            (None, _) => "-".to_owned(),
            (Some(_), Some((owner, until))) => {
                format!("leased by {owner} until {}Z", format_micros(*until))
            }
            (Some(retired), None) => format!("waiting since {}Z", format_micros(*retired)),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:<8} {:<26} {:>12} {:>8} {:>9}  {job}",
            k.project_id,
            k.id,
            state,
            format!("{}Z", format_micros(k.created)),
            k.encryptions,
            k.sealed,
            k.rewrapped,
        );
    }
    let projects: std::collections::BTreeSet<&str> =
        keks.iter().map(|k| k.project_id.as_str()).collect();
    let retired: Vec<&KekStatus> = keks.iter().filter(|k| !k.active).collect();
    let _ = writeln!(
        out,
        "{} project(s); {} retired KEK(s) still holding {} payload(s)",
        projects.len(),
        retired.len(),
        retired.iter().map(|k| k.sealed).sum::<i64>()
    );
    out
}

/// `appliance kek rotate`: replaces the active KEK of each target project by a new one
/// generated in the HSM; one line per project says what happened.
pub async fn rotate(config: &Config, target: Target) -> Result<Vec<String>> {
    let store = open(config).await?;
    let result = rotate_on(config, &store, target).await;
    store.close().await;
    result
}

async fn rotate_on(config: &Config, store: &Store, target: Target) -> Result<Vec<String>> {
    let projects = match target {
        Target::Projects(projects) => projects,
        Target::All => {
            let keks = store.kek_status(None).await?;
            keks.into_iter().filter(|k| k.active).map(|k| k.project_id).collect()
        }
    };
    let hsm = crate::connect_hsm(config, None)?;
    let mut lines = Vec::with_capacity(projects.len());
    for project in projects {
        let Some(active) = store.active_kek(&project).await? else {
            lines.push(format!("{project}: no KEK yet (one is made at its first secret)"));
            continue;
        };
        let old = active.row.id;
        let rotated = hsm
            .rotate_kek(store, &project, &old, RotationReason::Requested)
            .await
            .map_err(|e| Error::KeyOperation(format!("project {project}: {e}")))?;
        let now = store.active_kek(&project).await?.map(|a| a.row.id).unwrap_or_default();
        lines.push(if rotated {
            format!("{project}: KEK {old} retired; new KEK {now} active")
        } else {
            format!("{project}: KEK {old} was rotated meanwhile by another appliance; {now} active")
        });
    }
    Ok(lines)
}

/// What `kek rewrap-master` did.
#[derive(Debug, Default)]
pub struct MasterRewrap {
    /// KEKs whose blob was replaced by one under the newest master key.
    pub rewrapped: u64,
    /// KEKs read in the last pass, all of them then under the newest master key.
    pub keks: u64,
    /// Passes over the KEKs: another follows any pass that changed something, for KEKs made
    /// meanwhile by a proxy that had not yet seen the new master key.
    pub passes: u32,
    /// The KEKs the proxy refused, with why.
    pub failed: Vec<String>,
}

impl std::fmt::Display for MasterRewrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} KEK(s) rewrapped under the newest master key in {} pass(es); all {} KEK(s) are \
             under it",
            self.rewrapped, self.passes, self.keks
        )?;
        for failure in &self.failed {
            write!(f, "\n  failed: {failure}")?;
        }
        Ok(())
    }
}

/// Rows read at a time.
const PAGE: i64 = 256;

/// `appliance kek rewrap-master`: every stored KEK (active and retired) wrapped again, inside
/// the HSM, under the token's newest master key, each row replaced only if it still holds the
/// blob that was read. Serving goes on meanwhile: proxies unwrap both generations. Once it
/// reports no failure, the older master key can be destroyed (`hsm-proxy mkek destroy`).
pub async fn rewrap_master(config: &Config) -> Result<MasterRewrap> {
    let store = open(config).await?;
    let result = rewrap_master_on(config, &store).await;
    store.close().await;
    result
}

async fn rewrap_master_on(config: &Config, store: &Store) -> Result<MasterRewrap> {
    let hsm = std::sync::Arc::new(crate::connect_hsm(config, None)?);
    let mut done = MasterRewrap::default();
    loop {
        let (mut after, mut changed, mut keks) = (String::new(), 0u64, 0u64);
        done.failed.clear();
        loop {
            let page = store.keks_after(&after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after.clone_from(&last.id);
            // A page at a time, all at once: they travel in few frames, and the proxy reads the
            // token's master keys once for a frame.
            let mut calls = tokio::task::JoinSet::new();
            for (i, row) in page.iter().enumerate() {
                let (hsm, row) = (hsm.clone(), row.clone());
                calls.spawn(async move { (i, hsm.rewrap_under_newest_mkek(&row).await) });
            }
            let mut answers: Vec<Option<std::result::Result<Vec<u8>, String>>> =
                vec![None; page.len()];
            while let Some(joined) = calls.join_next().await {
                if let Ok((i, answer)) = joined
                    && let Some(slot) = answers.get_mut(i)
                {
                    *slot = Some(answer.map_err(|e| e.to_string()));
                }
            }
            for (row, answer) in page.iter().zip(answers) {
                keks += 1;
                let new = match answer {
                    Some(Ok(new)) => new,
                    Some(Err(e)) => {
                        done.failed.push(format!("KEK {}: {e}", row.id));
                        continue;
                    }
                    None => {
                        done.failed.push(format!("KEK {}: the call was lost", row.id));
                        continue;
                    }
                };
                if new != row.wrapped && store.replace_kek_blob(&row.id, &row.wrapped, &new).await?
                {
                    changed += 1;
                }
            }
        }
        done.passes += 1;
        done.rewrapped += changed;
        done.keks = keks;
        if changed == 0 {
            break;
        }
        if done.passes >= 5 {
            return Err(Error::KeyOperation(format!(
                "{done}\nKEKs were still being rewrapped in the last of {} passes (new ones keep \
                 coming under an older master key: is a proxy not yet upgraded?); do not destroy \
                 the older master key; run the command again",
                done.passes
            )));
        }
    }
    if !done.failed.is_empty() {
        return Err(Error::KeyOperation(format!(
            "{done}\nthe KEKs that failed are still under an older master key: do not destroy \
             it; run the command again once the cause is fixed"
        )));
    }
    tracing::info!(
        rewrapped = done.rewrapped,
        keks = done.keks,
        "KEKs rewrapped under the newest master key"
    );
    Ok(done)
}
