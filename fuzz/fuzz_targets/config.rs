//! Configuration: a `config.yml` plus `REGISTRY_*` environment variables.
//!
//! Input: YAML text, optionally followed by a NUL byte and `KEY=VALUE` lines, each of
//! which becomes the variable `REGISTRY_KEY` (at most 8); at most 2 KiB in all. The YAML is
//! written to a scratch file, then loaded, and every validation accessor is called.
#![no_main]

use berth_config::Config;
use libfuzzer_sys::fuzz_target;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const MAX_VARS: usize = 8;

/// serde_yaml_ng / unsafe-libyaml take time quadratic in the nesting depth of flow
/// collections (`[[[[...`, acatton/serde-yaml-ng#16): 4 KiB of `[` take seconds under ASan.
/// Config comes from the operator, not clients, and 2 KiB covers every key, so longer
/// inputs are skipped rather than letting them eat the fuzzing time.
const MAX_INPUT: usize = 2048;

/// The scratch file the YAML is written to: one per process, reused for every input. On
/// Linux it is unlinked at once and read through `/proc/self/fd`, so nothing is left behind
/// when libFuzzer exits the process.
fn scratch() -> &'static (File, PathBuf) {
    static SCRATCH: OnceLock<(File, PathBuf)> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let named = dir.join(format!("berth-fuzz-config-{}.yml", std::process::id()));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&named).unwrap();
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            if by_fd.exists() && std::fs::remove_file(&named).is_ok() {
                return (file, by_fd);
            }
        }
        (file, named)
    })
}

fn write_scratch(mut file: &File, content: &[u8]) {
    file.set_len(0).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(content).unwrap();
}

fn check(config: &Config) {
    let _ = config.addr();
    if let Ok(level) = config.log_level() {
        assert!(["error", "warn", "info", "debug", "trace"].contains(&level), "{level:?}");
    }
    let _ = config.json_logs();
    let _ = config.root();
    let _ = config.database_url();
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let (yaml, vars) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let env: Vec<(String, String)> = vars
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .take(MAX_VARS)
        .map(|line| {
            let line = String::from_utf8_lossy(line);
            let (k, v) = line.split_once('=').unwrap_or((&line, ""));
            (format!("REGISTRY_{k}"), v.to_owned())
        })
        .collect();

    let (file, path) = scratch();
    static SELF_TEST: OnceLock<()> = OnceLock::new();
    SELF_TEST.get_or_init(|| {
        // The scratch file really is what gets loaded.
        write_scratch(file, b"http:\n  addr: 127.0.0.1:1\n");
        let config = Config::load(Some(path), Vec::new()).expect("loading the scratch config file");
        assert_eq!(config.addr().unwrap().to_string(), "127.0.0.1:1");
    });
    write_scratch(file, yaml);
    if let Ok(config) = Config::load(Some(path), env.clone()) {
        check(&config);
    }
    if let Ok(config) = Config::load(None, env) {
        check(&config);
    }
});
