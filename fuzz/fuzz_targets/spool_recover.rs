//! A spool directory recovered at start-up from arbitrary segment and checkpoint bytes. Each
//! run gets a fresh directory in /dev/shm when there is one (tmpfs: fsync costs nothing there).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory");
    eventpipe::fuzzing::spool_recover(data, dir.path());
});
