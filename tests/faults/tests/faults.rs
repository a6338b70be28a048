//! The harness under fixed seeds: the normal build keeps every guarantee under every kind of
//! fault, and each negative control (a server built with deliberate defects) is caught.
//!
//! Each run starts its own PostgreSQL (scripts/pg.sh, on a free port) and its own servers,
//! since it kills them. The runs are serialized: they share two cores with everything else.
//! The normal server is $SENTINEL_BIN (set by scripts/with-server.sh) or target/debug/sentinel,
//! built if missing; the negative one is built with `--features negative-controls` into
//! target-negative/ (or taken from $SENTINEL_NEGATIVE_BIN).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn cargo_build(target_dir: &Path, features: &[&str]) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root())
        .args(["build", "--quiet", "-p", "sentinel-server", "--target-dir"])
        .arg(target_dir);
    for f in features {
        cmd.args(["--features", f]);
    }
    let status = cmd.status().expect("running cargo");
    assert!(
        status.success(),
        "building sentinel-server {features:?} failed"
    );
    target_dir.join("debug/sentinel")
}

fn normal_server() -> PathBuf {
    match std::env::var_os("SENTINEL_BIN") {
        Some(b) => PathBuf::from(b),
        None => cargo_build(&root().join("target"), &[]),
    }
}

fn negative_server() -> PathBuf {
    match std::env::var_os("SENTINEL_NEGATIVE_BIN") {
        Some(b) => PathBuf::from(b),
        None => cargo_build(&root().join("target-negative"), &["negative-controls"]),
    }
}

struct Outcome {
    exit: i32,
    report: Value,
    dir: PathBuf,
}

impl Outcome {
    fn invariant(&self, name: &str) -> &Value {
        self.report["invariants"]
            .as_array()
            .expect("invariants")
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no invariant {name} in {}", self.dir.display()))
    }

    fn failed(&self) -> Vec<String> {
        self.report["invariants"]
            .as_array()
            .expect("invariants")
            .iter()
            .filter(|i| i["passed"] == false)
            .map(|i| i["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Removes the run's directory once it has served its purpose.
    fn clean(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(
    name: &str,
    bin: &Path,
    seed: u64,
    duration: &str,
    profile: &str,
    control: Option<&str>,
) -> Outcome {
    let dir = std::env::temp_dir().join(format!("sentinel-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sentinel-faults"));
    cmd.args([
        "run",
        "--seed",
        &seed.to_string(),
        "--duration",
        duration,
        "--profile",
        profile,
    ])
    .arg("--out")
    .arg(&dir)
    .arg("--server-bin")
    .arg(bin);
    if let Some(c) = control {
        cmd.args(["--control", c]);
    }
    let status = cmd.status().expect("running sentinel-faults");
    let exit = status.code().unwrap_or(-1);
    assert!(
        exit == 0 || exit == 1,
        "sentinel-faults run errored (exit {exit}); see {}",
        dir.display()
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("check.json")).expect("check.json"))
            .expect("a JSON report");
    Outcome { exit, report, dir }
}

#[test]
fn the_normal_build_keeps_every_guarantee_under_faults() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = normal_server();
    for (name, seed, duration, profile) in [
        ("all", 1, "40s", "all"),
        // The dense schedules that catch the negative controls find nothing in a correct build.
        ("pause", 1, "20s", "pause"),
        ("pg-crash", 1, "20s", "pg-crash"),
    ] {
        let o = run(name, &bin, seed, duration, profile, None);
        assert_eq!(
            o.exit,
            0,
            "profile {profile}: invariants violated: {:?}; see {}",
            o.failed(),
            o.dir.display()
        );
        assert_eq!(o.report["passed"], true);
        // The run did something: operations, faults and fencing all happened.
        let stats = &o.report["stats"];
        assert!(
            stats["ops"].as_u64().unwrap_or(0) > 100,
            "too few operations: {stats}"
        );
        let faults: u64 = stats
            .as_object()
            .expect("stats")
            .iter()
            .filter(|(k, _)| k.starts_with("fault."))
            .map(|(_, v)| v.as_u64().unwrap_or(0))
            .sum();
        assert!(faults >= 4, "too few faults injected: {stats}");
        let completions = o.invariant("acknowledged-writes-survive-restarts")["counts"]
            ["completions-acknowledged"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            completions >= 10,
            "only {completions} completions were acknowledged"
        );
        o.clean();
    }
}

#[test]
fn a_stale_complete_that_skips_the_fence_is_caught() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = negative_server();
    let o = run(
        "skip-complete-fence",
        &bin,
        1,
        "20s",
        "pause",
        Some("skip-complete-fence"),
    );
    assert_eq!(
        o.exit,
        1,
        "the checker passed a server that skips the fence; see {}",
        o.dir.display()
    );
    assert_eq!(
        o.invariant("no-superseded-token-acknowledged")["passed"],
        false,
        "failed instead: {:?}",
        o.failed()
    );
    o.clean();
}

#[test]
fn acknowledged_commits_lost_by_async_commit_are_caught() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = negative_server();
    let o = run(
        "async-commit",
        &bin,
        1,
        "20s",
        "pg-crash",
        Some("async-commit"),
    );
    assert_eq!(
        o.exit,
        1,
        "the checker passed a server that loses commits; see {}",
        o.dir.display()
    );
    let failed = o.failed();
    assert!(
        failed.iter().any(|f| f == "acknowledged-writes-survive-restarts" || f == "tokens-strictly-increase"),
        "failed instead: {failed:?}"
    );
    o.clean();
}
