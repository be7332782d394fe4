//! Build identity shown by every `--version` flavour.

/// pgtandem's own semver, from the workspace manifest.
pub const PGTANDEM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Short git commit recorded by `build.rs`, or `unknown` outside a git checkout.
pub fn git_commit() -> &'static str {
    option_env!("PGTANDEM_GIT_COMMIT")
        .filter(|c| !c.is_empty())
        .unwrap_or("unknown")
}

/// Build date, when the release build sets `PGTANDEM_BUILD_DATE`; builds stay
/// reproducible by default, so it is `unknown` otherwise.
pub fn build_date() -> &'static str {
    option_env!("PGTANDEM_BUILD_DATE")
        .filter(|d| !d.is_empty())
        .unwrap_or("unknown")
}
