//! `sentinel dev`: the embedded default. Starts a private PostgreSQL from the machine's
//! server binaries in a data directory it owns, listening only on a Unix socket inside that
//! directory (so no port can clash), then serves against it, and stops PostgreSQL cleanly
//! when asked to stop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// Where the PostgreSQL server binaries are: `pg_config --bindir`, then the highest Debian
/// `/usr/lib/postgresql/N/bin`, then `PATH`.
pub fn find_pg_bindir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| has_server(p))
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Ok(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    bail!(
        "no PostgreSQL server binaries found (looked for `postgres` and `initdb` via pg_config, \
         in /usr/lib/postgresql/*/bin and on PATH). Install PostgreSQL (e.g. `apt-get install \
         postgresql`) or run `sentinel serve --database-url URL` against an existing database."
    )
}

/// The user PostgreSQL runs as: refuses root, so when we are root it runs as `postgres`.
#[derive(Clone, Copy, Debug)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn run_as() -> anyhow::Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("static name");
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy out at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root, and PostgreSQL refuses to run as root, but there is no `postgres` user to run it as; run `sentinel dev` as a normal user");
    }
    // SAFETY: pw is non-null and points to a valid passwd entry.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

fn command(bin: PathBuf, who: Option<RunAs>) -> Command {
    let mut c = Command::new(bin);
    if let Some(w) = who {
        c.uid(w.uid).gid(w.gid);
    }
    c
}

/// A running private PostgreSQL.
pub struct DevPostgres {
    child: Child,
    pub data_dir: PathBuf,
    /// A connection string for the Unix socket in the data directory.
    pub url: String,
}

/// Default data directory: a per-user folder in the temporary directory.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("sentinel-dev-{uid}"))
}

impl DevPostgres {
    /// Initialises the cluster if needed and starts it.
    pub async fn start(data_dir: &Path) -> anyhow::Result<DevPostgres> {
        let bindir = find_pg_bindir()?;
        let who = run_as()?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
        let pgdata = data_dir.join("pgdata");
        if let Some(w) = who {
            chown(&data_dir, w)?;
        }
        // Sockets must be short paths (about 100 bytes): keep it in the data dir itself.
        let socket_dir = data_dir.clone();
        if !pgdata.join("PG_VERSION").is_file() {
            eprintln!(
                "sentinel dev: initialising PostgreSQL in {}",
                pgdata.display()
            );
            let out = command(bindir.join("initdb"), who)
                .arg("-D")
                .arg(&pgdata)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
                .stdin(Stdio::null())
                .output()
                .await
                .context("cannot run initdb")?;
            if !out.status.success() {
                bail!(
                    "initdb failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let log = std::fs::File::create(data_dir.join("postgres.log"))
            .context("cannot create postgres.log")?;
        if let Some(w) = who {
            chown(&data_dir.join("postgres.log"), w)?;
        }
        let mut cmd = command(bindir.join("postgres"), who);
        cmd.arg("-D")
            .arg(&pgdata)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .args([
                "-c",
                "max_connections=200",
                "-c",
                "synchronous_commit=on",
                "-c",
                "fsync=on",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal reaches only Sentinel, which
            // drains first and then stops PostgreSQL.
            .process_group(0)
            .kill_on_drop(true);
        // If we die without cleaning up, PostgreSQL must not outlive us.
        #[cfg(target_os = "linux")]
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start postgres")?;
        let url = format!(
            "host={} port=5432 user=postgres dbname=postgres",
            socket_dir.display()
        );
        let mut pg = DevPostgres {
            child,
            data_dir: data_dir.clone(),
            url,
        };
        pg.wait_ready().await?;
        Ok(pg)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log =
                    std::fs::read_to_string(self.data_dir.join("postgres.log")).unwrap_or_default();
                bail!("postgres exited ({status}) during start-up:\n{log}");
            }
            if tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections within 60 s; see {}",
                    self.data_dir.join("postgres.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fast shutdown (SIGINT): rolls back open transactions, checkpoints, exits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGINT);
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

fn chown(path: &Path, who: RunAs) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(who.uid), Some(who.gid))
        .with_context(|| format!("cannot hand {} to the postgres user", path.display()))
}
