//! Where the CPU's threads go: inside each tensor operation, or across independent requests.
//!
//! candle splits every matmul and large elementwise operation across its threads. On small
//! models the pieces are too small for that to pay: on fact-gpt2 (d_model 128) a ROME edit
//! takes the same wall time on one thread as on two, for a fifth more CPU, and the idle thread
//! spins against other jobs (benches/README.md, "threads"); at d_model 1024, two threads run a
//! forward 1.8× and a backward-to-δ 1.46× faster. So small models run every operation on one
//! thread, and the work that has independent parts — MEMIT's z vectors, one per request — runs
//! those parts side by side instead ([`request_workers`]). Bulk forwards over many texts
//! (`edit stats`) have large operations whatever the model and keep every thread in them
//! (fact-gpt2 statistics: 11.6 s on two threads, 15.2 s on one).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::ModelConfig;

/// Below this width one thread per operation is as fast as several (measured at 128 and 1024).
const SMALL_D_MODEL: usize = 512;

static REQUEST_WORKERS: AtomicUsize = AtomicUsize::new(1);

/// How threads are used, as [`configure`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadPlan {
    /// Threads inside one tensor operation.
    pub per_operation: usize,
    /// Independent requests computed side by side.
    pub request_workers: usize,
}

/// What a process mostly runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Optimisations over a few short prompts (edits, evaluation, MEND training).
    Editing,
    /// Forwards over large batches of texts (statistics).
    Bulk,
}

/// Chooses the plan for `cfg` and `work` and applies it (the first call; later ones return the
/// plan chosen then). Call before the first tensor operation (candle
/// sizes its pools then) and before other threads exist. A user's `RAYON_NUM_THREADS` or
/// `CANDLE_NUM_THREADS` wins: operations then use that many threads and requests run one at a
/// time.
pub fn configure(cfg: &ModelConfig, work: Workload) -> ThreadPlan {
    // Once per process: candle sizes its pools once, and a second call would read back the
    // variables set by the first as if the user had set them.
    *PLAN.get_or_init(|| choose(cfg, work))
}

static PLAN: std::sync::OnceLock<ThreadPlan> = std::sync::OnceLock::new();

fn choose(cfg: &ModelConfig, work: Workload) -> ThreadPlan {
    let user_set = ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"].iter().any(|v| std::env::var_os(v).is_some());
    let cores = candle_core::utils::get_num_threads();
    let plan = if user_set || cores == 1 {
        ThreadPlan { per_operation: cores, request_workers: 1 }
    } else if cfg.d_model < SMALL_D_MODEL && work == Workload::Editing {
        ThreadPlan { per_operation: 1, request_workers: cores }
    } else {
        ThreadPlan { per_operation: cores, request_workers: 1 }
    };
    if !user_set {
        // Also spares candle re-reading /proc/cpuinfo for the core count at every matmul.
        std::env::set_var("RAYON_NUM_THREADS", plan.per_operation.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", plan.per_operation.to_string());
    }
    REQUEST_WORKERS.store(plan.request_workers, Ordering::Relaxed);
    tracing::debug!(?plan, cores, user_set, "threads");
    plan
}

/// How many independent requests to compute at once (1 unless [`configure`] chose more).
pub fn request_workers() -> usize {
    REQUEST_WORKERS.load(Ordering::Relaxed)
}

/// `f(i)` for i in 0..n on up to `workers` threads, results in index order; the first error
/// (by index) is returned.
pub fn map_parallel<T: Send, E: Send>(n: usize, workers: usize, f: impl Fn(usize) -> Result<T, E> + Sync) -> Result<Vec<T>, E> {
    if workers <= 1 || n <= 1 {
        return (0..n).map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<T, E>>> = (0..n).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..workers.min(n) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                let failed = r.is_err();
                results.lock().expect("no worker panicked holding the lock")[i] = Some(r);
                if failed {
                    // Stop handing out work; workers finish what they hold.
                    next.store(n, Ordering::Relaxed);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(n);
    for r in slots {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            None => unreachable!("work stops only after an error, which is returned first"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_order_and_returns_the_first_error() {
        let squares = map_parallel(50, 3, |i| Ok::<_, String>(i * i)).unwrap();
        assert_eq!(squares, (0..50).map(|i| i * i).collect::<Vec<_>>());
        let err = map_parallel(50, 3, |i| if i % 7 == 6 { Err(i) } else { Ok(i) }).unwrap_err();
        assert_eq!(err % 7, 6);
        assert_eq!(map_parallel(3, 1, Ok::<_, ()>).unwrap(), vec![0, 1, 2]);
    }
}
