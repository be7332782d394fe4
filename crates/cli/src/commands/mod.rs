//! One module per capability: each holds the typed arguments of its commands
//! and the entry point that will call its engine.

pub mod bootstrap;
pub mod clone;
pub mod daemon;
pub mod etcd_sync;
pub mod install_links;
pub mod node_init;
pub mod node_schema;
pub mod tls;

/// Exit code of a command whose engine is not in this build.
pub const EXIT_ENGINE_NOT_BUILT: u8 = 2;

/// Says plainly that `command` cannot run yet, instead of pretending success.
pub fn engine_not_built(command: &str) -> u8 {
    eprintln!(
        "pgtandem: {command} is not implemented yet (engine not built; see README status table)"
    );
    EXIT_ENGINE_NOT_BUILT
}
