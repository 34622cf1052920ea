//! stderr logging (tracing) and the progress-bar policy.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use super::GlobalArgs;

pub fn init(global: &GlobalArgs) {
    // -v/-vv raise edit's own level only: the tokenizers crate alone logs every character at
    // trace level. Dependencies' logs are reachable through RUST_LOG.
    let default = if global.quiet {
        "error".to_string()
    } else {
        let own = match global.verbose {
            0 if std::io::stderr().is_terminal() => "info",
            0 => "warn",
            1 => "debug",
            _ => "trace",
        };
        format!("warn,edit={own}")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .try_init();
}

/// Progress bars only on an interactive stderr and never with --quiet.
pub fn show_progress(global: &GlobalArgs) -> bool {
    !global.quiet && std::io::stderr().is_terminal()
}
