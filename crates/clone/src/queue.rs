//! The shared work queue (clone.md §3.3): every module's files in one queue,
//! largest batches first, workers pull until it is empty, so time follows
//! bytes instead of a static split.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgtandem_core::progress::ProgressCounter;

use crate::error::{CloneError, Result};
use crate::fileset::{Entry, Module};
use crate::limiter::Limiter;
use crate::transport::{CopyRequest, CopyStats, Transport};

/// A file this large travels alone.
pub const LARGE_FILE: u64 = 64 << 20;
/// Most small files in one batch.
pub const MAX_BATCH_FILES: usize = 1000;

/// One batch: files of one module, all new or all existing on the replica.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub module: usize,
    pub files: Vec<Entry>,
    pub whole_file: bool,
    pub bytes: u64,
}

/// Batches `files[i]` (regular files of `modules[i]`), largest first.
/// `exists` says whether the replica already has a file of that path.
pub fn plan(files: &[Vec<Entry>], exists: impl Fn(usize, &Entry) -> bool) -> Vec<WorkItem> {
    let mut items = Vec::new();
    for (module, list) in files.iter().enumerate() {
        for whole_file in [true, false] {
            let mut group: Vec<&Entry> = list
                .iter()
                .filter(|e| exists(module, e) != whole_file)
                .collect();
            group.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
            let mut current = WorkItem {
                module,
                files: Vec::new(),
                whole_file,
                bytes: 0,
            };
            for e in group {
                if e.size >= LARGE_FILE {
                    items.push(WorkItem {
                        module,
                        files: vec![e.clone()],
                        whole_file,
                        bytes: e.size,
                    });
                    continue;
                }
                if current.bytes + e.size > LARGE_FILE || current.files.len() >= MAX_BATCH_FILES {
                    let full = std::mem::replace(
                        &mut current,
                        WorkItem {
                            module,
                            files: Vec::new(),
                            whole_file,
                            bytes: 0,
                        },
                    );
                    items.push(full);
                }
                current.bytes += e.size;
                current.files.push(e.clone());
            }
            if !current.files.is_empty() {
                items.push(current);
            }
        }
    }
    items.sort_by_key(|i| std::cmp::Reverse(i.bytes));
    items
}

/// What one worker did (`worker` JSON event).
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    pub id: usize,
    pub batches: u64,
    pub bytes: u64,
    pub busy: Duration,
}

/// Per-module stats and per-worker reports of a finished queue.
#[derive(Debug, Default)]
pub struct QueueOutcome {
    pub per_module: Vec<CopyStats>,
    pub workers: Vec<WorkerReport>,
}

/// Runs the queue on `parallel` threads; the first failure stops every
/// worker at its next batch and is returned. `cancel` is also checked, so a
/// signal stops the copy between batches.
#[allow(clippy::too_many_arguments)]
pub fn run(
    transport: &dyn Transport,
    modules: &[Module],
    items: Vec<WorkItem>,
    parallel: usize,
    paranoid: bool,
    limiter: &Limiter,
    progress: &ProgressCounter,
    cancel: &AtomicBool,
    after_batch: &(dyn Fn(&Module, &WorkItem, &CopyStats) -> Result<()> + Sync),
    after_first_batch: &(dyn Fn() + Sync),
) -> Result<QueueOutcome> {
    let first_done = AtomicBool::new(false);
    let queue = Mutex::new(VecDeque::from(items));
    let failure: Mutex<Option<CloneError>> = Mutex::new(None);
    let results: Mutex<QueueOutcome> = Mutex::new(QueueOutcome {
        per_module: vec![CopyStats::default(); modules.len()],
        workers: Vec::new(),
    });
    std::thread::scope(|scope| {
        for id in 0..parallel.max(1) {
            let (queue, failure, results, first_done) = (&queue, &failure, &results, &first_done);
            scope.spawn(move || {
                let mut report = WorkerReport {
                    id,
                    ..WorkerReport::default()
                };
                let mut stats = vec![CopyStats::default(); modules.len()];
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let item = match queue.lock() {
                        Ok(mut q) => q.pop_front(),
                        Err(_) => None,
                    };
                    let Some(item) = item else { break };
                    let started = Instant::now();
                    let request = CopyRequest {
                        module: &modules[item.module],
                        files: &item.files,
                        whole_file: item.whole_file,
                        paranoid,
                    };
                    let copied = transport
                        .copy_batch(&request, limiter, progress)
                        .and_then(|s| after_batch(&modules[item.module], &item, &s).map(|()| s));
                    match copied {
                        Ok(s) => {
                            stats[item.module].merge(&s);
                            report.batches += 1;
                            report.bytes += s.literal;
                            report.busy += started.elapsed();
                            if !first_done.swap(true, Ordering::SeqCst) {
                                after_first_batch();
                            }
                        }
                        Err(e) => {
                            cancel.store(true, Ordering::Relaxed);
                            if let Ok(mut f) = failure.lock()
                                && f.is_none()
                            {
                                *f = Some(e);
                            }
                            break;
                        }
                    }
                }
                if let Ok(mut r) = results.lock() {
                    for (total, s) in r.per_module.iter_mut().zip(&stats) {
                        total.merge(s);
                    }
                    r.workers.push(report);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(CloneError::Cancelled("copy cancelled".into()));
    }
    let mut outcome = results
        .into_inner()
        .map_err(|_| CloneError::transport("rsync worker failed"))?;
    outcome.workers.sort_by_key(|w| w.id);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fileset::EntryKind;

    fn file(p: &str, size: u64) -> Entry {
        Entry {
            path: p.into(),
            kind: EntryKind::File,
            size,
            mtime_ns: 0,
            mode: 0o600,
        }
    }

    #[test]
    fn large_files_alone_small_ones_grouped_new_apart_largest_first() {
        let mut small: Vec<Entry> = (0..1500).map(|i| file(&format!("s{i}"), 10)).collect();
        small.push(file("big", 100 << 20));
        small.push(file("mid", 70 << 20));
        let items = plan(&[small, vec![file("old", 5)]], |m, _| m == 1);
        assert_eq!(items[0].files[0].path.to_str(), Some("big"));
        assert_eq!(items[1].files[0].path.to_str(), Some("mid"));
        let counts: Vec<usize> = items.iter().map(|i| i.files.len()).collect();
        assert_eq!(counts, vec![1, 1, 1000, 500, 1]);
        assert!(items.iter().filter(|i| i.module == 0).all(|i| i.whole_file));
        assert!(!items[4].whole_file);
    }
}
