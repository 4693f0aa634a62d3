//! Custom metrics (`metrics add --from-map PROGRAM_ID:MAP`): a metric whose series are the
//! entries of a map of a loaded program, what ebpf_exporter does without its YAML. Each key
//! is cut into label values (`--labels name[:type],…`), each value (CPUs summed) is the
//! sample. Definitions are kept in `state_dir/custom-metrics.json`, so they survive restarts
//! (the programs keep their ids across restarts too).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actors::api::{
    ApiError, CustomMetric, CustomMetricStatus, CustomMetricsRequest, ErrorKind, MetricKind,
};
use actors::loader::LoaderMsg;
use actors::mapread::MapEntries;
use actors::rpc::ask;
use parking_lot::Mutex;
use prometheus::proto::{MetricFamily, MetricType};
use ractor::ActorRef;
use tracing::{info, warn};

use crate::metrics::{METRIC_NAMES, counter, gauge, unchecked_family};

const FILE: &str = "custom-metrics.json";

#[derive(Clone)]
pub struct CustomMetrics {
    path: PathBuf,
    defs: Arc<Mutex<Vec<CustomMetric>>>,
}

/// How a label's bytes of the key read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Native-endian unsigned integer (1, 2, 4 or 8 bytes); untyped labels of those widths.
    Uint,
    /// Network-order unsigned integer (ports in packet order).
    BigEndian,
    Ipv4,
    Ipv6,
    /// A u32 interface index, shown as the interface's name.
    Ifindex,
    Hex,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Label {
    name: String,
    kind: Kind,
    width: usize,
}

fn check_name(what: &str, name: &str, colon: bool) -> Result<(), String> {
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    let ok_rest = |c: char| ok_first(c) || c.is_ascii_digit();
    let mut chars = name.chars();
    if !chars.next().is_some_and(ok_first) || !chars.all(ok_rest) {
        return Err(format!(
            "{what} {name:?} is not a Prometheus name: letters, digits{} and _, not starting with a digit",
            if colon { ", :" } else { "" }
        ));
    }
    if !colon && name.starts_with("__") {
        return Err(format!(
            "label {name:?}: names starting with __ are Prometheus's own"
        ));
    }
    Ok(())
}

/// Lays `specs` (`name` or `name:type`) over a key of `key_size` bytes, in order. Typed
/// labels take their type's width; the rest share what is left evenly.
fn parse_labels(specs: &[String], key_size: usize, map: &str) -> Result<Vec<Label>, String> {
    let mut labels = Vec::new();
    for spec in specs {
        let (name, ty) = match spec.split_once(':') {
            Some((n, t)) => (n, Some(t)),
            None => (spec.as_str(), None),
        };
        check_name("label", name, false)?;
        if labels.iter().any(|l: &Label| l.name == name) {
            return Err(format!("label {name:?} is given twice"));
        }
        let (kind, width) = match ty {
            None => (Kind::Uint, 0),
            Some("u8") => (Kind::Uint, 1),
            Some("u16") => (Kind::Uint, 2),
            Some("u32") => (Kind::Uint, 4),
            Some("u64") => (Kind::Uint, 8),
            Some("be16") => (Kind::BigEndian, 2),
            Some("be32") => (Kind::BigEndian, 4),
            Some("ipv4") => (Kind::Ipv4, 4),
            Some("ipv6") => (Kind::Ipv6, 16),
            Some("ifindex") => (Kind::Ifindex, 4),
            Some("hex") => (Kind::Hex, 0),
            Some(other) => {
                return Err(format!(
                    "label {name}: no type {other:?} (use u8, u16, u32, u64, be16, be32, ipv4, ipv6, ifindex or hex)"
                ));
            }
        };
        labels.push(Label {
            name: name.to_string(),
            kind,
            width,
        });
    }
    let fixed: usize = labels.iter().map(|l| l.width).sum();
    let open = labels.iter().filter(|l| l.width == 0).count();
    let sizes = || {
        labels
            .iter()
            .map(|l| format!("{}:{}", l.name, l.width))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if labels.is_empty() {
        return Ok(labels);
    }
    if open == 0 && fixed != key_size {
        return Err(format!(
            "the labels take {fixed} bytes ({}) but the keys of {map} have {key_size}",
            sizes()
        ));
    }
    if open > 0 {
        let rest = key_size.saturating_sub(fixed);
        if fixed > key_size || rest == 0 || !rest.is_multiple_of(open) {
            return Err(format!(
                "the keys of {map} have {key_size} bytes; after the typed labels ({fixed} bytes), {rest} do not split evenly over {open} label(s) without a type: give them types"
            ));
        }
        for l in labels.iter_mut().filter(|l| l.width == 0) {
            l.width = rest / open;
            if l.kind == Kind::Uint && ![1, 2, 4, 8].contains(&l.width) {
                l.kind = Kind::Hex;
            }
        }
    }
    Ok(labels)
}

fn decode(labels: &[Label], key: &[u8]) -> Vec<(String, String)> {
    let mut at = 0;
    labels
        .iter()
        .map(|l| {
            let b = &key[at..at + l.width];
            at += l.width;
            let uint = |big: bool| {
                let mut v = [0u8; 8];
                if big {
                    v[8 - b.len()..].copy_from_slice(b);
                    u64::from_be_bytes(v)
                } else if cfg!(target_endian = "little") {
                    v[..b.len()].copy_from_slice(b);
                    u64::from_le_bytes(v)
                } else {
                    v[8 - b.len()..].copy_from_slice(b);
                    u64::from_be_bytes(v)
                }
            };
            let value = match l.kind {
                Kind::Uint => uint(false).to_string(),
                Kind::BigEndian => uint(true).to_string(),
                Kind::Ipv4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
                Kind::Ipv6 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b);
                    std::net::Ipv6Addr::from(a).to_string()
                }
                Kind::Ifindex => actors::sys::interface_name(uint(false) as u32),
                Kind::Hex => b.iter().map(|x| format!("{x:02x}")).collect(),
            };
            (l.name.clone(), value)
        })
        .collect()
}

/// The series of `metric` from its map's entries; entries whose keys read the same (e.g. two
/// ifindexes of gone interfaces) are summed into one series.
fn series(labels: &[Label], entries: &MapEntries) -> Vec<(Vec<(String, String)>, u64)> {
    let mut out: std::collections::BTreeMap<Vec<(String, String)>, u64> = Default::default();
    for (key, value) in &entries.entries {
        let e = out.entry(decode(labels, key)).or_default();
        *e = e.wrapping_add(*value);
    }
    if labels.is_empty() && out.is_empty() {
        out.insert(Vec::new(), 0);
    }
    out.into_iter().collect()
}

impl CustomMetrics {
    /// The definitions saved in `state_dir`; a file that cannot be read is set aside (and
    /// said so) rather than lost or fatal.
    pub fn load(state_dir: &Path) -> CustomMetrics {
        let path = state_dir.join(FILE);
        let defs = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<CustomMetric>>(&bytes) {
                Ok(defs) => defs,
                Err(e) => {
                    let aside = path.with_extension("json.unreadable");
                    let _ = std::fs::rename(&path, &aside);
                    warn!(file = %path.display(), error = %e, kept_as = %aside.display(), "custom metrics file unreadable; starting without custom metrics");
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        CustomMetrics {
            path,
            defs: Arc::new(Mutex::new(defs)),
        }
    }

    fn save(&self, defs: &[CustomMetric]) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec_pretty(defs)
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        actors::sys::write_atomically(&self.path, &bytes).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("saving {}: {e}", self.path.display()),
            )
        })
    }

    async fn read(
        loader: &ActorRef<LoaderMsg>,
        metric: &CustomMetric,
    ) -> Result<Vec<(Vec<(String, String)>, u64)>, ApiError> {
        let entries = ask(loader, "LoaderActor", |reply| LoaderMsg::ReadMap {
            program_id: metric.program_id.clone(),
            map: metric.map.clone(),
            reply,
        })
        .await??;
        let labels = parse_labels(&metric.labels, entries.key_size, &metric.map)
            .map_err(|m| ApiError::new(ErrorKind::InvalidRequest, m))?;
        Ok(series(&labels, &entries))
    }

    async fn statuses(&self, loader: &ActorRef<LoaderMsg>) -> Vec<CustomMetricStatus> {
        let defs = self.defs.lock().clone();
        let mut out = Vec::new();
        for metric in defs {
            let (series, problem) = match Self::read(loader, &metric).await {
                Ok(s) => (Some(s.len()), None),
                Err(e) => (None, Some(e.message)),
            };
            out.push(CustomMetricStatus {
                metric,
                series,
                problem,
            });
        }
        out
    }

    pub async fn handle(
        &self,
        request: CustomMetricsRequest,
        loader: &ActorRef<LoaderMsg>,
    ) -> Result<Vec<CustomMetricStatus>, ApiError> {
        let invalid = |m: String| ApiError::new(ErrorKind::InvalidRequest, m);
        match request {
            CustomMetricsRequest::List => {}
            CustomMetricsRequest::Add(metric) => {
                check_name("metric name", &metric.name, true).map_err(invalid)?;
                if METRIC_NAMES.contains(&metric.name.as_str()) {
                    return Err(invalid(format!(
                        "{} is one of the daemon's own metrics: choose another name",
                        metric.name
                    )));
                }
                if self.defs.lock().iter().any(|m| m.name == metric.name) {
                    return Err(invalid(format!(
                        "a custom metric {} exists already: `x0tta6bl4-ebpf metrics remove {}` first",
                        metric.name, metric.name
                    )));
                }
                // Read it once now: the program, the map and the labels must all fit.
                Self::read(loader, &metric).await?;
                let mut defs = self.defs.lock();
                if defs.iter().any(|m| m.name == metric.name) {
                    return Err(invalid(format!(
                        "a custom metric {} exists already",
                        metric.name
                    )));
                }
                defs.push(metric.clone());
                self.save(&defs)?;
                info!(name = %metric.name, program_id = %metric.program_id, map = %metric.map, "custom metric added");
            }
            CustomMetricsRequest::Remove { name } => {
                let mut defs = self.defs.lock();
                let before = defs.len();
                defs.retain(|m| m.name != name);
                if defs.len() == before {
                    let names: Vec<&str> = defs.iter().map(|m| m.name.as_str()).collect();
                    return Err(invalid(format!(
                        "no custom metric {name} (there are: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    )));
                }
                self.save(&defs)?;
                info!(%name, "custom metric removed");
            }
        }
        Ok(self.statuses(loader).await)
    }

    /// The families `/metrics` serves for the custom metrics; one whose map cannot be read
    /// now (its program unloaded, say) is left out, and `metrics list` says why.
    pub async fn families(&self, loader: &ActorRef<LoaderMsg>) -> Vec<MetricFamily> {
        let defs = self.defs.lock().clone();
        let mut families = Vec::new();
        for metric in defs {
            let Ok(series) = Self::read(loader, &metric).await else {
                continue;
            };
            let samples = series
                .iter()
                .map(|(labels, value)| {
                    let pairs: Vec<(&str, &str)> = labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    match metric.kind {
                        MetricKind::Counter => counter(&pairs, *value),
                        MetricKind::Gauge => gauge(&pairs, *value as f64),
                    }
                })
                .collect();
            let kind = match metric.kind {
                MetricKind::Counter => MetricType::COUNTER,
                MetricKind::Gauge => MetricType::GAUGE,
            };
            families.push(unchecked_family(
                &metric.name,
                &metric.description,
                kind,
                samples,
            ));
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn untyped_labels_share_the_key_evenly_and_typed_ones_take_their_width() {
        let l = parse_labels(&specs(&["interface", "protocol"]), 8, "M").unwrap();
        assert_eq!((l[0].width, l[1].width), (4, 4));
        let key = [3u32.to_ne_bytes(), 17u32.to_ne_bytes()].concat();
        assert_eq!(
            decode(&l, &key),
            vec![
                ("interface".into(), "3".into()),
                ("protocol".into(), "17".into())
            ]
        );
        let l = parse_labels(&specs(&["src:ipv4", "port:be16", "rest"]), 8, "M").unwrap();
        assert_eq!(l[2].width, 2);
        let key = [10, 0, 0, 1, 0x01, 0xbb, 7, 0];
        assert_eq!(
            decode(&l, &key),
            vec![
                ("src".into(), "10.0.0.1".into()),
                ("port".into(), "443".into()),
                ("rest".into(), u16::from_ne_bytes([7, 0]).to_string())
            ]
        );
        // A width that is no integer reads as hex.
        let l = parse_labels(&specs(&["k"]), 3, "M").unwrap();
        assert_eq!(decode(&l, &[1, 2, 0xff])[0].1, "0102ff");
    }

    #[test]
    fn labels_that_do_not_fit_the_key_say_the_sizes() {
        let e = parse_labels(&specs(&["a:u16", "b:u32"]), 8, "PACKETS").unwrap_err();
        assert!(e.contains("6 bytes") && e.contains("PACKETS have 8"), "{e}");
        let e = parse_labels(&specs(&["a:u32", "b", "c", "d"]), 8, "M").unwrap_err();
        assert!(e.contains("give them types"), "{e}");
        let e = parse_labels(&specs(&["a:float"]), 8, "M").unwrap_err();
        assert!(e.contains("no type \"float\""), "{e}");
        let e = parse_labels(&specs(&["a", "a"]), 8, "M").unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(parse_labels(&specs(&["1abc"]), 8, "M").is_err());
        assert!(parse_labels(&specs(&["__x"]), 8, "M").is_err());
    }

    #[test]
    fn keys_that_read_the_same_are_one_series() {
        let l = parse_labels(&specs(&["x:u8", "y:u8"]), 2, "M").unwrap();
        let entries = MapEntries {
            key_size: 2,
            entries: vec![(vec![1, 2], 5), (vec![1, 2], 6), (vec![2, 2], 1)],
        };
        let s = series(&l, &entries);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].1, 11);
        // No labels: the whole map is one sample.
        let s = series(&[], &entries);
        assert_eq!(s, vec![(vec![], 12)]);
    }

    #[test]
    fn metric_names_follow_prometheus() {
        assert!(check_name("metric name", "ebpf_custom_packets", true).is_ok());
        assert!(check_name("metric name", "ns:thing_total", true).is_ok());
        assert!(check_name("metric name", "9lives", true).is_err());
        assert!(check_name("metric name", "with-dash", true).is_err());
        assert!(check_name("metric name", "", true).is_err());
    }
}
