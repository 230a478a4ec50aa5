//! Measurement helpers (pure): a lock-free latency histogram, medians, `/proc` parsing.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two: 2^7 = 128, so a bucket is at most 1/128 (0.8 %) of its value.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Values below this are recorded exactly.
const EXACT: u64 = 1 << (SUB_BITS + 1);
const BUCKETS: usize = EXACT as usize + (63 - SUB_BITS as usize) * SUB;

/// A log-linear histogram of `u64` values (nanoseconds here) that many tasks record into with
/// one relaxed atomic add each; about 60 KiB.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let top = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = top - SUB_BITS;
    let sub = (v >> shift) as usize - SUB;
    EXACT as usize + (top - SUB_BITS - 1) as usize * SUB + sub
}

/// Returns the inclusive value range `[low, high]` of a bucket.
fn bucket_range(idx: usize) -> (u64, u64) {
    if idx < EXACT as usize {
        return (idx as u64, idx as u64);
    }
    let rel = idx - EXACT as usize;
    let top = (rel / SUB) as u32 + SUB_BITS + 1;
    let sub = (rel % SUB) as u64;
    let shift = top - SUB_BITS;
    let low = (SUB as u64 + sub) << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl Histogram {
    /// Creates an empty histogram.
    pub fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn record(&self, v: u64) {
        self.counts[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// Returns how many values were recorded.
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Returns the largest recorded value (0 when empty).
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// Returns the value at quantile `q` (0..=1): the midpoint of the bucket holding the
    /// `ceil(q * count)`-th smallest value, capped at the maximum (exactly the maximum for the
    /// last rank); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        if rank >= total {
            return self.max();
        }
        let mut seen = 0;
        for (idx, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                let (low, high) = bucket_range(idx);
                return (low + (high - low) / 2).min(self.max());
            }
        }
        self.max()
    }
}

/// Returns the median of `values` (mean of the two middle ones for an even count); NaN if empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux ABI).
pub const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Reads `utime + stime` (fields 14 and 15, in clock ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Reads `VmRSS` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reads the soft "Max open files" limit from the text of `/proc/<pid>/limits`.
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads a `TcpExt` counter (e.g. `ListenOverflows`) from the text of `/proc/net/netstat`,
/// where a line of names is followed by a line of values.
pub fn parse_tcpext_counter(netstat: &str, name: &str) -> Option<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Returns the system-wide count of connections dropped because a listen queue was full.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    parse_tcpext_counter(&text, "ListenOverflows")
}

/// Reads `(busy, total)` clock ticks of each `cpuN` line of `/proc/stat`; busy excludes idle
/// and iowait, so it includes the softirq time that loopback TCP spends outside any process.
pub fn parse_core_ticks(stat: &str) -> Vec<(u64, u64)> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .filter_map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map_while(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3)? + v.get(4)?;
            Some((total - idle, total))
        })
        .collect()
}

/// Samples per-core busy/total ticks from `/proc/stat`.
pub fn sample_cores() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/stat")
        .map(|t| parse_core_ticks(&t))
        .unwrap_or_default()
}

/// Busy percentage of each core between two samples.
pub fn core_busy_pct(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1);
            if total == 0 {
                0.0
            } else {
                a.0.saturating_sub(b.0) as f64 * 100.0 / total as f64
            }
        })
        .collect()
}

/// CPU time and RSS of a process, read from `/proc`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU seconds used so far.
    pub cpu_secs: f64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// Samples `/proc/<pid>` (`None` for this process reads `/proc/self`).
pub fn sample_process(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    Some(ProcSample {
        cpu_secs: parse_stat_cpu_ticks(&stat)? as f64 / CLOCK_TICKS_PER_SEC,
        rss_kib: parse_status_rss_kib(&status)?,
    })
}

/// The sum of [`sample_process`] over `pids` (a cluster's nodes); `None` when the list is
/// empty or one of them cannot be read.
pub fn sample_processes(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(ProcSample::default(), |sum, pid| {
        let one = sample_process(Some(*pid))?;
        Some(ProcSample {
            cpu_secs: sum.cpu_secs + one.cpu_secs,
            rss_kib: sum.rss_kib + one.rss_kib,
        })
    })
}

// The bench target is compiled with `cfg(test)` but without a harness, so the `#[test]`
// functions vanish there and their helpers look unused; `tests/loadgen.rs` runs them.
#[cfg(test)]
#[allow(dead_code, unused_imports)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_contiguously() {
        let mut expected_low = 0u64;
        for idx in 0..BUCKETS {
            let (low, high) = bucket_range(idx);
            assert_eq!(low, expected_low, "bucket {idx}");
            assert!(high >= low);
            assert_eq!(bucket_of(low), idx);
            assert_eq!(bucket_of(high), idx);
            if high == u64::MAX {
                assert_eq!(idx, BUCKETS - 1);
                return;
            }
            expected_low = high + 1;
        }
        panic!("last bucket does not reach u64::MAX");
    }

    #[test]
    fn bucket_width_is_within_one_percent() {
        for v in [300u64, 12_345, 1_000_000, 987_654_321, 60_000_000_000] {
            let (low, high) = bucket_range(bucket_of(v));
            assert!(
                (high - low) as f64 / low as f64 <= 1.0 / 128.0 + 1e-9,
                "{v}"
            );
        }
    }

    #[test]
    fn quantiles_of_a_uniform_sequence() {
        let h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max(), 10_000_000);
        for (q, want) in [(0.5, 5_000_000.0), (0.9, 9_000_000.0), (0.99, 9_900_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q {q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert!(h.quantile(0.0) <= 1_010);
    }

    #[test]
    fn empty_histogram_reports_zero_and_single_value_is_exact_when_small() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.99), 0);
        h.record(77);
        assert_eq!(h.quantile(0.5), 77);
        assert_eq!(h.quantile(0.99), 77);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn proc_stat_and_status_parsing() {
        let stat = "1234 (my (weird) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 123456 789 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let status = "Name:\trealtime\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kib(status), Some(12345));
        assert_eq!(parse_status_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn max_open_files_parsing() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax cpu time              unlimited            unlimited            seconds\nMax open files            20000                20000                files\n";
        assert_eq!(parse_max_open_files(limits), Some(20000));
        assert_eq!(
            parse_max_open_files("Max open files unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn tcpext_counter_parsing() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 456 457\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_tcpext_counter(text, "ListenOverflows"), Some(456));
        assert_eq!(parse_tcpext_counter(text, "Nope"), None);
    }

    #[test]
    fn core_ticks_and_busy_percent() {
        let a = "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 38 2 0 0 0 0 0\nintr 1 2\n";
        let b = "cpu  0\ncpu0 55 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 88 2 0 0 0 0 0\n";
        let ta = parse_core_ticks(a);
        assert_eq!(ta, vec![(10, 50), (10, 50)]);
        let pct = core_busy_pct(&ta, &parse_core_ticks(b));
        assert_eq!(pct, vec![100.0, 0.0]);
    }

    #[test]
    fn sampling_this_process_works() {
        let s = sample_process(None).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.cpu_secs >= 0.0);
    }
}
