//! What the appliance tells of its own state: whether it takes requests (`/healthcheck`),
//! whether what it needs answers (the database and every proxy: the readiness check), and the
//! figures a metrics scrape reads from the store and the HSM client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_proxy_proto::op::HealthReport;

use super::App;
use crate::hsm::Probe;
use crate::metrics::Metrics;
use crate::timefmt::now_micros;

/// How long a readiness answer is reused: a load balancer (or anyone, as the check needs no
/// credentials) asking often costs the database and the proxies at most one check a second.
const READINESS_REUSED_FOR: Duration = Duration::from_secs(1);

/// `[health]`, as the services use it.
#[derive(Clone, Debug)]
pub(crate) struct HealthSettings {
    /// While this file exists, the appliance says it is not healthy.
    pub(crate) disable_file: Option<PathBuf>,
    /// Time each readiness check is given.
    pub(crate) timeout: Duration,
}

/// The last readiness answer, and when it was made.
pub(crate) type ReadinessCache = tokio::sync::Mutex<Option<(Instant, Arc<Readiness>)>>;

/// What the readiness check found.
#[derive(Debug)]
pub(crate) struct Readiness {
    /// The database answered.
    pub(crate) database: Check<()>,
    /// Each proxy, in `[hsm] endpoints` order.
    pub(crate) proxies: Vec<(String, Check<HealthReport>)>,
}

/// One check's outcome.
#[derive(Debug)]
pub(crate) struct Check<T> {
    /// How long it took.
    pub(crate) took: Duration,
    /// What it found, or why it failed.
    pub(crate) answer: Result<T, String>,
}

impl Readiness {
    /// Everything answered: the database and every proxy. One proxy down is enough to say no,
    /// so that the operator hears of it while the others carry the traffic.
    pub(crate) fn ready(&self) -> bool {
        self.database.answer.is_ok() && self.proxies.iter().all(|(_, p)| p.answer.is_ok())
    }
}

impl App {
    /// `Err` with the reason when the appliance should not be sent requests: its disable file
    /// exists.
    pub(crate) fn liveness(&self) -> Result<(), &'static str> {
        match &self.settings.health.disable_file {
            Some(file) if file.exists() => Err("DISABLED BY FILE"),
            _ => Ok(()),
        }
    }

    /// Checks the database and every proxy, at most once a second whoever asks: callers at the
    /// same moment share one check.
    pub(crate) async fn readiness(&self) -> Arc<Readiness> {
        let mut last = self.readiness.lock().await;
        if let Some((at, readiness)) = last.as_ref()
            && at.elapsed() < READINESS_REUSED_FOR
        {
            return readiness.clone();
        }
        let timeout = self.settings.health.timeout;
        let database = async {
            let started = Instant::now();
            let answer = match tokio::time::timeout(timeout, self.store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            };
            Check { took: started.elapsed(), answer }
        };
        let (database, probes) = tokio::join!(database, self.hsm.probe(timeout));
        let proxies = probes
            .into_iter()
            .map(|Probe { endpoint, took, answer }| (endpoint, Check { took, answer }))
            .collect();
        let readiness = Arc::new(Readiness { database, proxies });
        if !readiness.ready() {
            tracing::warn!(?readiness, "readiness check failed");
        }
        *last = Some((Instant::now(), readiness.clone()));
        readiness
    }

    /// The metrics, unless `[metrics] listen = "off"`.
    pub(crate) fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_deref()
    }

    /// Every metric in Prometheus's text format, the figures the store and the HSM client
    /// keep read now; `None` with metrics off.
    pub async fn metrics_text(&self) -> Option<String> {
        let metrics = self.metrics()?;
        let pool = self.store.pool_stats();
        metrics.db.in_use.set(i64::from(pool.open.saturating_sub(pool.idle)));
        metrics.db.idle.set(i64::from(pool.idle));
        metrics.db.max.set(i64::from(pool.max));
        metrics.hsm.queued.set(i64::try_from(self.hsm.queued()).unwrap_or(i64::MAX));
        metrics.hsm.set_active(self.hsm.active_endpoint());
        match self.store.pending_orders().await {
            Ok(pending) => {
                metrics.orders.pending.set(pending.count);
                let age = pending.oldest_created.map_or(0, |c| now_micros().saturating_sub(c));
                metrics.orders.oldest_pending_age.set(age.max(0) as f64 / 1e6);
            }
            Err(e) => tracing::debug!(error = %e, "the order queue could not be read for metrics"),
        }
        match self.store.retired_keks().await {
            Ok((keks, payloads)) => {
                metrics.keks.retired.set(keks);
                metrics.keks.retired_payloads.set(payloads);
            }
            Err(e) => tracing::debug!(error = %e, "retired KEKs could not be counted for metrics"),
        }
        Some(metrics.render())
    }
}
