//! The appliance's Prometheus metrics: every series it exports, the handles the hot paths use
//! (made once, so that a request neither looks a label up nor allocates one), and the text a
//! scrape gets. Nothing here knows of requests or services: the layers above record into it.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hsm_proxy_proto::client::{Error as ClientError, Observer as ClientObserver};
use hsm_proxy_proto::{Outcome, Reply};
use hyper::{Method, StatusCode};
use prometheus::core::Collector;
use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 100 µs (a cached lookup) to 10 s (the longest HSM deadline).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Operations per frame: the coalescer sends at most 32.
const FRAME_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

/// The request methods with series of their own; any other is counted as `other`.
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"];
/// The statuses the API answers with, whose series are made on first use without a lookup;
/// any other goes through the label lookup.
const STATUSES: [u16; 18] =
    [200, 201, 202, 204, 300, 400, 401, 403, 404, 405, 406, 408, 409, 413, 415, 500, 502, 503];

/// Every metric the appliance exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// The HTTP API.
    pub(crate) http: HttpMetrics,
    /// Traffic to the proxies, told by their client.
    pub(crate) hsm: Arc<HsmMetrics>,
    /// The order queue.
    pub(crate) orders: OrderMetrics,
    /// Project KEK rotation and the rewrap job.
    pub(crate) keks: Arc<KekMetrics>,
    /// The database, told by the store.
    pub(crate) db: Arc<DbMetrics>,
    process: ProcessMetrics,
}

impl Metrics {
    /// Registers every metric: HTTP series for `routes` (route templates, the last one for
    /// paths no route matches), HSM series for each proxy of `endpoints`.
    pub(crate) fn new(
        routes: &'static [&'static str],
        endpoints: &[String],
        keystone: Option<&KeystoneMetrics>,
    ) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let metrics = Metrics {
            http: HttpMetrics::new(&registry, routes)?,
            hsm: Arc::new(HsmMetrics::new(&registry, endpoints)?),
            orders: OrderMetrics::new(&registry)?,
            keks: Arc::new(KekMetrics::new(&registry)?),
            db: Arc::new(DbMetrics::new(&registry)?),
            process: ProcessMetrics::new(&registry)?,
            registry,
        };
        if let Some(keystone) = keystone {
            keystone.register(&metrics.registry)?;
        }
        Ok(metrics)
    }

    /// Every metric in Prometheus's text format, the process's own read now.
    pub(crate) fn render(&self) -> String {
        self.process.refresh();
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Registers a metric, giving it back.
fn registered<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> prometheus::Result<C> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(registry, HistogramVec::new(opts, labels)?)
}

/// `appliance_http_*`.
#[derive(Debug)]
pub(crate) struct HttpMetrics {
    in_flight: IntGauge,
    duration: HistogramVec,
    routes: &'static [&'static str],
    /// A series per route, method and status of [`STATUSES`], made on first use.
    slots: Box<[OnceLock<Histogram>]>,
}

impl HttpMetrics {
    fn new(registry: &Registry, routes: &'static [&'static str]) -> prometheus::Result<Self> {
        let slots =
            (0..routes.len() * METHODS.len() * STATUSES.len()).map(|_| OnceLock::new()).collect();
        Ok(HttpMetrics {
            in_flight: registered(
                registry,
                IntGauge::new("appliance_http_requests_in_flight", "API requests being answered")?,
            )?,
            duration: histogram_vec(
                registry,
                "appliance_http_request_duration_seconds",
                "Time to answer an API request, from its head to its answer, by route template, \
                 method and status",
                LATENCY_BUCKETS,
                &["route", "method", "status"],
            )?,
            routes,
            slots,
        })
    }

    /// The index of `method` for [`HttpMetrics::observe`].
    pub(crate) fn method(method: &Method) -> usize {
        let index = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PUT => 3,
            Method::PATCH => 4,
            Method::DELETE => 5,
            Method::OPTIONS => 6,
            _ => 7,
        };
        index.min(METHODS.len() - 1)
    }

    /// Counts a request in flight until the guard is dropped (answered, or its client gone).
    pub(crate) fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Records an answered request: `route` indexes the templates given at start, `method`
    /// comes from [`HttpMetrics::method`].
    pub(crate) fn observe(&self, route: usize, method: usize, status: StatusCode, took: Duration) {
        let route = route.min(self.routes.len().saturating_sub(1));
        let seconds = took.as_secs_f64();
        let code = status.as_u16();
        let known = STATUSES.iter().position(|s| *s == code);
        let slot = known
            .and_then(|s| self.slots.get((route * METHODS.len() + method) * STATUSES.len() + s));
        let labels = |status: &str| {
            let route = self.routes.get(route).copied().unwrap_or("other");
            let method = METHODS.get(method).copied().unwrap_or("other");
            self.duration.get_metric_with_label_values(&[route, method, status])
        };
        match slot {
            Some(slot) => {
                if let Some(h) = slot.get() {
                    h.observe(seconds);
                } else if let Ok(h) = labels(status.as_str()) {
                    h.observe(seconds);
                    let _ = slot.set(h);
                }
            }
            None => {
                if let Ok(h) = labels(status.as_str()) {
                    h.observe(seconds);
                }
            }
        }
    }
}

/// A request in flight; counted out when dropped.
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `appliance_hsm_*`: per proxy endpoint, as the proxies' client tells them.
#[derive(Debug)]
pub(crate) struct HsmMetrics {
    endpoints: Vec<EndpointMetrics>,
    errors: IntCounterVec,
    /// Operations waiting for a frame in the coalescer.
    pub(crate) queued: IntGauge,
}

#[derive(Debug)]
struct EndpointMetrics {
    name: String,
    frames: IntCounter,
    round_trip: Histogram,
    operations: Histogram,
    active: IntGauge,
}

impl HsmMetrics {
    fn new(registry: &Registry, endpoints: &[String]) -> prometheus::Result<Self> {
        let frames = registered(
            registry,
            IntCounterVec::new(
                Opts::new("appliance_hsm_frames_total", "Frames of operations sent to a proxy"),
                &["endpoint"],
            )?,
        )?;
        let round_trip = histogram_vec(
            registry,
            "appliance_hsm_round_trip_seconds",
            "Time from sending a frame to a proxy to its answer",
            LATENCY_BUCKETS,
            &["endpoint"],
        )?;
        let operations = histogram_vec(
            registry,
            "appliance_hsm_frame_operations",
            "Operations per frame sent to a proxy",
            FRAME_BUCKETS,
            &["endpoint"],
        )?;
        let active = registered(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "appliance_hsm_endpoint_active",
                    "1 for the proxy that new connections go to (the last that accepted one)",
                ),
                &["endpoint"],
            )?,
        )?;
        let errors = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "appliance_hsm_errors_total",
                    "Operations a proxy failed, by status, and frames that failed as a whole \
                     (timeout, connection_lost, connect_failed, protocol, or the proxy's status)",
                ),
                &["endpoint", "status"],
            )?,
        )?;
        let endpoints = endpoints
            .iter()
            .map(|name| {
                let label = [name.as_str()];
                Ok(EndpointMetrics {
                    name: name.clone(),
                    frames: frames.get_metric_with_label_values(&label)?,
                    round_trip: round_trip.get_metric_with_label_values(&label)?,
                    operations: operations.get_metric_with_label_values(&label)?,
                    active: active.get_metric_with_label_values(&label)?,
                })
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        let queued = registered(
            registry,
            IntGauge::new(
                "appliance_hsm_queued_operations",
                "HSM operations waiting for a frame to a proxy",
            )?,
        )?;
        Ok(HsmMetrics { endpoints, errors, queued })
    }

    /// Marks `index` as the endpoint in use, the others not.
    pub(crate) fn set_active(&self, index: usize) {
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            endpoint.active.set(i64::from(i == index));
        }
    }

    fn error(&self, endpoint: &str, status: &str) {
        if let Ok(c) = self.errors.get_metric_with_label_values(&[endpoint, status]) {
            c.inc();
        }
    }
}

impl ClientObserver for HsmMetrics {
    fn frame(
        &self,
        endpoint: usize,
        ops: usize,
        round_trip: Duration,
        result: &Result<Vec<Outcome<Reply>>, ClientError>,
    ) {
        let Some(m) = self.endpoints.get(endpoint) else { return };
        m.frames.inc();
        m.operations.observe(ops as f64);
        match result {
            Ok(outcomes) => {
                m.round_trip.observe(round_trip.as_secs_f64());
                for outcome in outcomes {
                    if let Err(status) = outcome {
                        self.error(&m.name, status.name());
                    }
                }
            }
            Err(e) => {
                let status = match e {
                    ClientError::Refused(status) => status.name(),
                    ClientError::Protocol(_) => "protocol",
                    ClientError::Timeout => "timeout",
                    ClientError::ConnectionLost => "connection_lost",
                    _ => "failed",
                };
                self.error(&m.name, status);
            }
        }
    }

    fn connect_failed(&self, endpoint: usize) {
        if let Some(m) = self.endpoints.get(endpoint) {
            self.error(&m.name, "connect_failed");
        }
    }
}

/// `appliance_orders_*`.
#[derive(Debug)]
pub(crate) struct OrderMetrics {
    /// PENDING orders in the whole queue.
    pub(crate) pending: IntGauge,
    /// Age of the oldest of them.
    pub(crate) oldest_pending_age: Gauge,
    active: IntCounter,
    error: IntCounter,
    postponed: IntCounter,
    lost: IntCounter,
}

/// How processing an order ended here.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OrderOutcome {
    /// ACTIVE: its secrets were stored.
    Active,
    /// ERROR for good.
    Error,
    /// The HSM or database was unavailable: released to be tried again.
    Postponed,
    /// Its lease had passed to another appliance: the result was discarded.
    Lost,
}

impl OrderMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let outcomes = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "appliance_orders_processed_total",
                    "Orders this appliance processed, by outcome (active, error, postponed: \
                     to be retried, lost: another appliance had taken its lease)",
                ),
                &["outcome"],
            )?,
        )?;
        let outcome = |name: &str| outcomes.get_metric_with_label_values(&[name]);
        Ok(OrderMetrics {
            pending: registered(
                registry,
                IntGauge::new(
                    "appliance_orders_pending",
                    "PENDING orders in the queue (every appliance's), as of the last scrape",
                )?,
            )?,
            oldest_pending_age: registered(
                registry,
                Gauge::new(
                    "appliance_orders_oldest_pending_age_seconds",
                    "Age of the oldest PENDING order; 0 with none",
                )?,
            )?,
            active: outcome("active")?,
            error: outcome("error")?,
            postponed: outcome("postponed")?,
            lost: outcome("lost")?,
        })
    }

    /// Counts an order processed here.
    pub(crate) fn processed(&self, outcome: OrderOutcome) {
        match outcome {
            OrderOutcome::Active => &self.active,
            OrderOutcome::Error => &self.error,
            OrderOutcome::Postponed => &self.postponed,
            OrderOutcome::Lost => &self.lost,
        }
        .inc();
    }
}

/// `appliance_kek_*`: project KEK rotations and the rewrap job.
#[derive(Debug)]
pub(crate) struct KekMetrics {
    rotations: IntCounterVec,
    /// Payloads this appliance's rewrap job moved to their project's active KEK.
    pub(crate) rewrapped: IntCounter,
    /// Payloads it could not move (the HSM refused them); they stay under their KEK.
    pub(crate) rewrap_failures: IntCounter,
    /// Retired KEKs it destroyed once nothing was sealed under them.
    pub(crate) destroyed: IntCounter,
    /// Retired KEKs not yet destroyed (every appliance's).
    pub(crate) retired: IntGauge,
    /// Payloads still sealed under them.
    pub(crate) retired_payloads: IntGauge,
}

/// Why a project KEK was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RotationReason {
    /// An operator asked (`appliance kek rotate`).
    Requested,
    /// It reached `[keys] max_age_days`.
    Age,
    /// It reached `[keys] max_encryptions`.
    Encryptions,
}

impl RotationReason {
    /// As logged and labelled.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RotationReason::Requested => "requested",
            RotationReason::Age => "age",
            RotationReason::Encryptions => "encryptions",
        }
    }
}

impl KekMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| registered(registry, IntCounter::new(name, help)?);
        let gauge = |name: &str, help: &str| registered(registry, IntGauge::new(name, help)?);
        let rotations = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "appliance_kek_rotations_total",
                    "Project KEKs this appliance replaced, by reason (requested, age, encryptions)",
                ),
                &["reason"],
            )?,
        )?;
        for reason in [RotationReason::Requested, RotationReason::Age, RotationReason::Encryptions]
        {
            rotations.get_metric_with_label_values(&[reason.as_str()])?;
        }
        Ok(KekMetrics {
            rotations,
            rewrapped: counter(
                "appliance_kek_rewrapped_total",
                "Payloads this appliance's rewrap job moved to their project's active KEK",
            )?,
            rewrap_failures: counter(
                "appliance_kek_rewrap_failures_total",
                "Payloads the rewrap job could not move (the HSM refused them)",
            )?,
            destroyed: counter(
                "appliance_kek_destroyed_total",
                "Retired KEKs this appliance destroyed once nothing was sealed under them",
            )?,
            retired: gauge(
                "appliance_kek_retired",
                "Retired project KEKs not yet destroyed, as of the last scrape",
            )?,
            retired_payloads: gauge(
                "appliance_kek_retired_payloads",
                "Payloads still sealed under retired KEKs, as of the last scrape",
            )?,
        })
    }

    /// Counts a rotation done here.
    pub(crate) fn rotated(&self, reason: RotationReason) {
        if let Ok(c) = self.rotations.get_metric_with_label_values(&[reason.as_str()]) {
            c.inc();
        }
    }
}

/// `appliance_db_*`: the pool, and each statement's time as the store tells it.
#[derive(Debug)]
pub(crate) struct DbMetrics {
    statements: HistogramVec,
    /// A series per statement, made on first use: most are seldom run.
    by_statement: Box<[OnceLock<Histogram>]>,
    /// Connections running a statement or held by a transaction.
    pub(crate) in_use: IntGauge,
    /// Connections open and waiting.
    pub(crate) idle: IntGauge,
    /// The most the pool opens.
    pub(crate) max: IntGauge,
}

impl DbMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        use appliance_store::Statement;
        let statements = histogram_vec(
            registry,
            "appliance_db_statement_duration_seconds",
            "Time the store took for a statement (or the few of one operation), by operation",
            LATENCY_BUCKETS,
            &["statement"],
        )?;
        let connections = registered(
            registry,
            IntGaugeVec::new(
                Opts::new("appliance_db_connections", "Database connections open, by state"),
                &["state"],
            )?,
        )?;
        Ok(DbMetrics {
            statements,
            by_statement: Statement::ALL.iter().map(|_| OnceLock::new()).collect(),
            in_use: connections.get_metric_with_label_values(&["in_use"])?,
            idle: connections.get_metric_with_label_values(&["idle"])?,
            max: registered(
                registry,
                IntGauge::new(
                    "appliance_db_connections_max",
                    "The most connections the pool opens",
                )?,
            )?,
        })
    }
}

impl appliance_store::Observer for DbMetrics {
    fn statement(&self, statement: appliance_store::Statement, took: Duration) {
        let Some(slot) = self.by_statement.get(statement.index()) else { return };
        let series = match slot.get() {
            Some(h) => h,
            None => {
                let Ok(h) = self.statements.get_metric_with_label_values(&[statement.name()])
                else {
                    return;
                };
                slot.get_or_init(|| h)
            }
        };
        series.observe(took.as_secs_f64());
    }
}

/// `appliance_keystone_*`. Kept by the Keystone client whether or not metrics are exported: its
/// cache counts are also logged at shutdown.
#[derive(Clone, Debug)]
pub(crate) struct KeystoneMetrics {
    validations: IntCounterVec,
    /// Tokens Keystone found valid.
    pub(crate) valid: IntCounter,
    /// Tokens Keystone did not know, or expired.
    pub(crate) invalid: IntCounter,
    /// Tokens that could not be checked: Keystone unreachable or odd.
    pub(crate) unavailable: IntCounter,
    /// Tokens served from the cache.
    pub(crate) cache_hits: IntCounter,
    /// Tokens not in the cache (then validated).
    pub(crate) cache_misses: IntCounter,
    /// Each request to Keystone.
    pub(crate) request_duration: Histogram,
    /// Requests to Keystone that got no answer (timeout, connection refused).
    pub(crate) request_failures: IntCounter,
}

impl KeystoneMetrics {
    /// The metrics, not yet in any registry.
    pub(crate) fn new() -> prometheus::Result<KeystoneMetrics> {
        let validations = IntCounterVec::new(
            Opts::new(
                "appliance_keystone_validations_total",
                "Tokens validated with Keystone (cache misses), by result",
            ),
            &["result"],
        )?;
        let result = |name: &str| validations.get_metric_with_label_values(&[name]);
        Ok(KeystoneMetrics {
            valid: result("valid")?,
            invalid: result("invalid")?,
            unavailable: result("unavailable")?,
            cache_hits: IntCounter::new(
                "appliance_keystone_cache_hits_total",
                "Tokens found in the validated-token cache",
            )?,
            cache_misses: IntCounter::new(
                "appliance_keystone_cache_misses_total",
                "Tokens not in the validated-token cache",
            )?,
            request_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "appliance_keystone_request_duration_seconds",
                    "Time of each request to Keystone (token validations and the service \
                     user's logins)",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            request_failures: IntCounter::new(
                "appliance_keystone_request_failures_total",
                "Requests to Keystone that got no answer in time",
            )?,
            validations,
        })
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.validations.clone()))?;
        registry.register(Box::new(self.cache_hits.clone()))?;
        registry.register(Box::new(self.cache_misses.clone()))?;
        registry.register(Box::new(self.request_duration.clone()))?;
        registry.register(Box::new(self.request_failures.clone()))?;
        Ok(())
    }
}

/// `process_*`, Prometheus's usual names, read from the kernel at each scrape.
#[derive(Debug)]
struct ProcessMetrics {
    cpu: Counter,
    resident: IntGauge,
    virtual_bytes: IntGauge,
    threads: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    /// Two scrapes at once read and add in turn.
    refreshing: Mutex<()>,
}

impl ProcessMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| registered(registry, IntGauge::new(name, help)?);
        let start_time = registered(
            registry,
            Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
            )?,
        )?;
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        start_time.set(since.as_secs_f64());
        Ok(ProcessMetrics {
            cpu: registered(
                registry,
                Counter::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds",
                )?,
            )?,
            resident: gauge("process_resident_memory_bytes", "Resident memory size in bytes")?,
            virtual_bytes: gauge("process_virtual_memory_bytes", "Virtual memory size in bytes")?,
            threads: gauge("process_threads", "Number of OS threads in the process")?,
            open_fds: gauge("process_open_fds", "Number of open file descriptors")?,
            max_fds: gauge("process_max_fds", "Maximum number of open file descriptors")?,
            refreshing: Mutex::new(()),
        })
    }

    /// Reads the process's figures; one that cannot be read keeps its last value.
    fn refresh(&self) {
        let _one_at_a_time = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage};
        if let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) {
            let seconds = |t: nix::sys::time::TimeVal| {
                t.tv_sec() as f64 + f64::from(i32::try_from(t.tv_usec()).unwrap_or(0)) / 1e6
            };
            let total = seconds(usage.user_time()) + seconds(usage.system_time());
            let counted = self.cpu.get();
            if total > counted {
                self.cpu.inc_by(total - counted);
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let Some((key, value)) = line.split_once(':') else { continue };
                let number = value.split_whitespace().next().and_then(|n| n.parse::<i64>().ok());
                let Some(number) = number else { continue };
                match key {
                    "VmRSS" => self.resident.set(number.saturating_mul(1024)),
                    "VmSize" => self.virtual_bytes.set(number.saturating_mul(1024)),
                    "Threads" => self.threads.set(number),
                    _ => {}
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory being read holds one descriptor itself.
            let open = fds.count().saturating_sub(1);
            self.open_fds.set(i64::try_from(open).unwrap_or(i64::MAX));
        }
        if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
            self.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    const ROUTES: &[&str] = &["/v1/secrets", "/v1/secrets/{id}", "other"];

    #[test]
    fn requests_are_counted_by_template_method_and_status() {
        let endpoints = vec!["proxy-a:5696".to_owned(), "proxy-b:5696".to_owned()];
        let m = Metrics::new(ROUTES, &endpoints, None).unwrap();
        let get = HttpMetrics::method(&Method::GET);
        m.http.observe(1, get, StatusCode::OK, Duration::from_millis(3));
        m.http.observe(1, get, StatusCode::OK, Duration::from_millis(4));
        // A status outside the usual ones, and a method outside the usual ones.
        let odd = Method::from_bytes(b"BREW").unwrap();
        m.http.observe(9, HttpMetrics::method(&odd), StatusCode::IM_A_TEAPOT, Duration::ZERO);
        {
            let _a = m.http.in_flight();
            let _b = m.http.in_flight();
            assert!(m.render().contains("appliance_http_requests_in_flight 2\n"));
        }
        m.hsm.set_active(1);
        let text = m.render();
        assert!(
            text.contains(
                "appliance_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/secrets/{id}\",status=\"200\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "appliance_http_request_duration_seconds_count{method=\"other\",route=\"other\",status=\"418\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("appliance_http_requests_in_flight 0\n"), "{text}");
        assert!(text.contains("appliance_hsm_endpoint_active{endpoint=\"proxy-a:5696\"} 0\n"));
        assert!(text.contains("appliance_hsm_endpoint_active{endpoint=\"proxy-b:5696\"} 1\n"));
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(!text.contains("process_resident_memory_bytes 0\n"), "{text}");
    }

    #[test]
    fn the_client_tells_frames_round_trips_and_errors_per_endpoint() {
        use hsm_proxy_proto::Status;
        let endpoints = vec!["proxy-a:5696".to_owned()];
        let m = Metrics::new(ROUTES, &endpoints, None).unwrap();
        let answered: Result<Vec<Outcome<Reply>>, ClientError> =
            Ok(vec![Err(Status::InvalidArgument), Err(Status::InvalidArgument)]);
        m.hsm.frame(0, 3, Duration::from_millis(2), &answered);
        m.hsm.frame(0, 1, Duration::from_secs(10), &Err(ClientError::Timeout));
        m.hsm.connect_failed(0);
        // An endpoint the client does not have is ignored.
        m.hsm.frame(7, 1, Duration::ZERO, &Err(ClientError::Timeout));
        let text = m.render();
        for line in [
            "appliance_hsm_frames_total{endpoint=\"proxy-a:5696\"} 2",
            "appliance_hsm_round_trip_seconds_count{endpoint=\"proxy-a:5696\"} 1",
            "appliance_hsm_frame_operations_sum{endpoint=\"proxy-a:5696\"} 4",
            "appliance_hsm_errors_total{endpoint=\"proxy-a:5696\",status=\"invalid_argument\"} 2",
            "appliance_hsm_errors_total{endpoint=\"proxy-a:5696\",status=\"timeout\"} 1",
            "appliance_hsm_errors_total{endpoint=\"proxy-a:5696\",status=\"connect_failed\"} 1",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line}\n{text}");
        }
    }
}
