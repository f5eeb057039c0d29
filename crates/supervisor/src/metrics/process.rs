//! The supervisor's own process figures, under the names every Prometheus client library
//! exports.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{Labels, Usage, family};

/// The supervisor's own figures under the standard `process_*` names every Prometheus client
/// library exports (no `supervisor_` prefix).
#[derive(Debug)]
pub(super) struct ProcessFigures {
    pub(super) usage: Usage,
    pub(super) start_time: f64,
    pub(super) fds: Option<(u64, u64)>,
}

impl Collector for ProcessFigures {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let none: Labels = Vec::new();
        let one = |v: f64| [(none.clone(), v)];
        family(
            &mut e,
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(Unit::Seconds),
            Counter,
            &one(self.usage.cpu_seconds),
        )?;
        family(
            &mut e,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(Unit::Bytes),
            Gauge,
            &one(self.usage.rss_bytes as f64),
        )?;
        family(
            &mut e,
            "process_start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(Unit::Seconds),
            Gauge,
            &one(self.start_time),
        )?;
        if let Some((open, max)) = self.fds {
            family(
                &mut e,
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                Gauge,
                &one(open as f64),
            )?;
            family(
                &mut e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                Gauge,
                &one(max as f64),
            )?;
        }
        Ok(())
    }
}
