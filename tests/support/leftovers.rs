//! Temporary directories that test processes leave behind (a test may hand its directory to a
//! server that is still stopping, so none is removed when its test ends): each test process
//! removes, once, those of processes that have ended, so that repeated runs do not fill the
//! disk. Shared by the integration tests (`support`) and the library's store tests.

/// Removes each directory in the temporary directory whose name `owner` reads a process id
/// from, when that process has ended.
pub fn sweep(owner: fn(&str) -> Option<u32>) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner(&name) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
