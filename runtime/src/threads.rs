//! How many threads dpc computes with. Under MPI every rank is its own process, so the
//! default (all cores) would oversubscribe; as with DeePMD-kit, the environment decides:
//! `DPC_NUM_THREADS`, else `OMP_NUM_THREADS` (what MPI users already set), else all cores.

use std::sync::OnceLock;

static CONFIGURED: OnceLock<usize> = OnceLock::new();

fn from_env() -> Option<usize> {
    ["DPC_NUM_THREADS", "OMP_NUM_THREADS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
}

/// Set up the thread pool once (later calls return the count already in use). `requested`
/// overrides the environment; the count in use is returned.
pub fn init(requested: Option<usize>) -> usize {
    *CONFIGURED.get_or_init(|| {
        let n = requested.or_else(from_env);
        let mut b = rayon::ThreadPoolBuilder::new();
        if let Some(n) = n {
            b = b.num_threads(n);
        }
        // Fails only if the global pool was already built elsewhere; then that one is used.
        let _ = b.build_global();
        rayon::current_num_threads()
    })
}
