//! How files travel from the primary (clone.md §3.3). The orchestrator owns
//! exclusions, deletions, directories, the queue, progress, fsync and the
//! summary; a transport only probes, lists, copies batches and reads files.

pub mod local;
pub mod rsync;

use std::path::{Path, PathBuf};

use pgtandem_core::progress::ProgressCounter;

use crate::error::Result;
use crate::fileset::{Entry, Module};
use crate::limiter::Limiter;

pub use local::LocalTransport;
pub use rsync::{RsyncTransport, SshTarget};

/// What a transport learnt about the primary host.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// `/proc/sys/kernel/random/boot_id` of the primary host.
    pub boot_id: Option<String>,
}

/// One batch of files of one module.
#[derive(Debug)]
pub struct CopyRequest<'a> {
    pub module: &'a Module,
    pub files: &'a [Entry],
    /// The files do not exist on the replica yet: copy whole, no delta.
    pub whole_file: bool,
    /// Compare content, not size + mtime.
    pub paranoid: bool,
}

/// Counters of one or more batches, in rsync's stats vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files looked at.
    pub files: u64,
    /// Files that did not exist on the replica.
    pub created: u64,
    /// Files whose content was (re)written.
    pub transferred: u64,
    /// Sum of the source sizes.
    pub total_size: u64,
    /// Sum of the sizes of transferred files.
    pub transferred_size: u64,
    /// Bytes actually written.
    pub literal: u64,
    /// Bytes found equal and left alone.
    pub matched: u64,
    /// Bytes sent over the wire (requests).
    pub wire_sent: u64,
    /// Bytes received over the wire.
    pub wire_received: u64,
    /// Files gone from the primary between listing and copy.
    pub vanished: Vec<PathBuf>,
}

impl CopyStats {
    /// Adds another batch's counters.
    pub fn merge(&mut self, other: &CopyStats) {
        self.files += other.files;
        self.created += other.created;
        self.transferred += other.transferred;
        self.total_size += other.total_size;
        self.transferred_size += other.transferred_size;
        self.literal += other.literal;
        self.matched += other.matched;
        self.wire_sent += other.wire_sent;
        self.wire_received += other.wire_received;
        self.vanished.extend(other.vanished.iter().cloned());
    }
}

/// pgtandem's transport abstraction: one object per run, shared by workers.
pub trait Transport: Send + Sync {
    /// Reaches the primary host (ssh `echo OK`, boot id).
    fn probe(&mut self) -> Result<Probe>;
    /// Bytes under the given primary directories (`du -sk`).
    fn disk_usage(&self, roots: &[PathBuf]) -> Result<u64>;
    /// Every path under the module's source root, without following
    /// symlinks and without entering `module.prune`.
    fn list(&self, module: &Module) -> Result<Vec<Entry>>;
    /// Starts the file service for these modules (rsyncd; no-op for local).
    fn start(&mut self, modules: &[Module]) -> Result<()>;
    /// Stops the file service.
    fn stop(&mut self) -> Result<()>;
    /// Copies one batch into `request.module.target`, keeping mode and ns
    /// mtime; vanished sources are reported, not failures.
    fn copy_batch(
        &self,
        request: &CopyRequest<'_>,
        limiter: &Limiter,
        progress: &ProgressCounter,
    ) -> Result<CopyStats>;
    /// A whole (small) file of the primary, e.g. `global/pg_control`.
    fn read_file(&self, path: &Path) -> Result<Vec<u8>>;
    /// Releases everything; safe to call twice.
    fn cleanup(&mut self);
}
