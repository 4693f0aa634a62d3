//! Reading any hash or array map of a loaded program as (key bytes, number) pairs, for custom
//! metrics. The shape comes from the kernel (fdinfo: type, key and value sizes); values are
//! u32 or u64, per-CPU values summed.

use std::os::fd::AsFd as _;

use aya::maps::Map;

use crate::loader::map_data;

/// Entries of a map, keys as the kernel stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapEntries {
    pub key_size: usize,
    pub entries: Vec<(Vec<u8>, u64)>,
}

const HASH: u64 = 1;
const ARRAY: u64 = 2;
const PERCPU_HASH: u64 = 5;
const PERCPU_ARRAY: u64 = 6;
const LRU_HASH: u64 = 9;
const LRU_PERCPU_HASH: u64 = 10;

fn type_name(t: u64) -> String {
    match t {
        3 => "prog_array".into(),
        4 => "perf_event_array".into(),
        11 => "lpm_trie".into(),
        12 => "array_of_maps".into(),
        13 => "hash_of_maps".into(),
        22 => "queue".into(),
        23 => "stack".into(),
        27 => "ringbuf".into(),
        other => format!("type {other}"),
    }
}

/// Every entry of `map` (`name` is for messages).
pub fn read(map: &Map, name: &str) -> Result<MapEntries, String> {
    let fd = map_data(map).fd().as_fd();
    let field =
        |key: &str| crate::sys::fdinfo_field(fd, key).map_err(|e| format!("map {name}: {e}"));
    let map_type = field("map_type")?;
    let key_size = field("key_size")? as usize;
    let value_size = field("value_size")? as usize;
    let per_cpu = match map_type {
        HASH | ARRAY | LRU_HASH => false,
        PERCPU_HASH | PERCPU_ARRAY | LRU_PERCPU_HASH => true,
        other => {
            return Err(format!(
                "map {name} is a {} map; custom metrics read hash, LRU hash and array maps (per-CPU too)",
                type_name(other)
            ));
        }
    };
    if value_size != 4 && value_size != 8 {
        return Err(format!(
            "map {name} has {value_size}-byte values; custom metrics read u32 or u64 values"
        ));
    }
    let cpus = if per_cpu {
        aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?
    } else {
        1
    };
    let stride = if per_cpu {
        value_size.next_multiple_of(8)
    } else {
        value_size
    };
    let number = |b: &[u8]| -> u64 {
        if value_size == 8 {
            u64::from_ne_bytes(b[..8].try_into().unwrap_or_default())
        } else {
            u64::from(u32::from_ne_bytes(b[..4].try_into().unwrap_or_default()))
        }
    };
    let mut entries = Vec::new();
    crate::sys::lookup_batch(fd, key_size, stride * cpus, 1024, |keys, values, n| {
        for i in 0..n {
            let key = keys[i * key_size..(i + 1) * key_size].to_vec();
            let row = &values[i * stride * cpus..(i + 1) * stride * cpus];
            let total = (0..cpus)
                .map(|c| number(&row[c * stride..]))
                .fold(0u64, u64::wrapping_add);
            entries.push((key, total));
        }
    })
    .map_err(|e| format!("reading map {name}: {e}"))?;
    Ok(MapEntries { key_size, entries })
}
