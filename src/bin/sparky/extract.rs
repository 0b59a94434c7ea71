//! `sparky extract-text` (hidden): the child process the server runs to read one document's
//! text. It first holds itself to its limits (address space, CPU time, no core file), then
//! reads the document on stdin and writes its text on stdout (`files::child::serve`).

use std::process::ExitCode;

use nix::sys::resource::{Resource, setrlimit};
use sparky::files::child::serve;
use sparky::files::extract::Document;

/// Reads a document of `content_type` from stdin, within `memory_mib` of address space and
/// `cpu_seconds` of CPU time (then SIGXCPU, and SIGKILL a second later).
pub fn run(content_type: &str, memory_mib: u64, cpu_seconds: u64) -> ExitCode {
    let Some(document) = Document::from_type(content_type) else {
        eprintln!("sparky: extract-text cannot read {content_type}");
        return ExitCode::FAILURE;
    };
    let memory = memory_mib.saturating_mul(1 << 20);
    let limits = [
        (Resource::RLIMIT_AS, memory, memory),
        (
            Resource::RLIMIT_CPU,
            cpu_seconds,
            cpu_seconds.saturating_add(1),
        ),
        (Resource::RLIMIT_CORE, 0, 0),
    ];
    for (resource, soft, hard) in limits {
        // Without its limits the reader must not read anything.
        if let Err(e) = setrlimit(resource, soft, hard) {
            eprintln!("sparky: extract-text cannot set its limit {resource:?}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // A parser's panic is caught and reported on stdout; stderr stays quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    match serve(document, &mut stdin.lock(), &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sparky: extract-text: {e}");
            ExitCode::FAILURE
        }
    }
}
