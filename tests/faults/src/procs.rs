//! The processes of a run: PostgreSQL (through `scripts/pg.sh`), Sentinel servers, the sink
//! and the workers. Each can be killed, paused and restarted by the nemesis.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a pid of a child we started; no memory is shared.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for a line starting with `prefix` on the child's stdout and returns the rest; the
/// remaining output is copied to `log` so that the pipe never fills up.
async fn await_line(
    child: &mut Child,
    prefix: &str,
    log: PathBuf,
    within: Duration,
) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(within, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok::<_, anyhow::Error>(Some(rest.trim().to_owned()));
            }
        }
        Ok(None)
    })
    .await;
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let Ok(mut f) = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .await
        else {
            return;
        };
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = f.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    match found {
        Ok(Ok(Some(v))) => Ok(v),
        Ok(Ok(None)) => bail!("the process exited before printing {prefix:?}"),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("no {prefix:?} within {within:?}"),
    }
}

/// The PostgreSQL cluster of a run, started and stopped with the repository's `scripts/pg.sh`.
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    script: PathBuf,
    running: bool,
}

impl Postgres {
    pub fn new(root: &Path, dir: PathBuf, port: u16) -> Self {
        Self {
            dir,
            port,
            script: root.join("scripts/pg.sh"),
            running: false,
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let out = Command::new(&self.script)
            .arg("start")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output()
            .await
            .with_context(|| format!("running {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "pg.sh start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = true;
        Ok(())
    }

    /// `pg_ctl -m immediate`: every backend is killed, nothing is flushed; the next start
    /// runs crash recovery from the WAL on disk.
    pub async fn stop_immediate(&mut self) -> anyhow::Result<()> {
        let pg_ctl = pg_bindir()?.join("pg_ctl");
        let mut cmd = as_postgres(&pg_ctl);
        cmd.arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "-w", "stop"]);
        let out = cmd.output().await?;
        if !out.status.success() {
            bail!(
                "pg_ctl -m immediate stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = false;
        Ok(())
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let status = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status()
            .await?;
        if !status.success() {
            bail!("pg.sh stop failed");
        }
        self.running = false;
        Ok(())
    }

    /// Runs SQL on a direct connection (not through a proxy).
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!("{} application_name=sentinel-faults", self.url_kv()),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    fn url_kv(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

/// Where the PostgreSQL server binaries are, found the way `scripts/pg.sh` finds them.
fn pg_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("pg_ctl").exists());
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().context("no PostgreSQL server binaries found")
}

/// PostgreSQL refuses to run as root; `scripts/pg.sh` switches to `postgres`, and so do we.
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// One Sentinel server replica, restartable on the same port.
pub struct Server {
    pub name: String,
    pub port: u16,
    bin: PathBuf,
    database_url: String,
    control: Option<String>,
    out: PathBuf,
    child: Option<Child>,
    pub incarnation: u32,
    /// `--pool-size`; the server's default when unset.
    pub pool_size: Option<usize>,
}

impl Server {
    pub fn new(
        name: &str,
        bin: PathBuf,
        database_url: String,
        control: Option<String>,
        out: PathBuf,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            port: free_port()?,
            bin,
            database_url,
            control,
            out,
            child: None,
            incarnation: 0,
            pool_size: None,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.incarnation += 1;
        let stem = format!("server-{}.{}", self.name, self.incarnation);
        let stderr = std::fs::File::create(self.out.join(format!("{stem}.log")))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--database-url")
            .arg(&self.database_url)
            .arg("--listen")
            .arg(self.addr().to_string())
            .args([
                "--pool-size",
                "4",
                "--sweep-interval",
                "250ms",
                "--drain-timeout",
                "2s",
            ])
            .env("RUST_LOG", "info")
            .env_remove("SENTINEL_METRICS_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        if let Some(n) = self.pool_size {
            cmd.arg("--pool-size").arg(n.to_string());
        }
        match &self.control {
            Some(c) => cmd.env("SENTINEL_NEGATIVE_CONTROL", c),
            None => cmd.env_remove("SENTINEL_NEGATIVE_CONTROL"),
        };
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let log = self.out.join(format!("{stem}.out"));
        let started = await_line(
            &mut child,
            "sentinel listening on ",
            log,
            Duration::from_secs(60),
        )
        .await;
        self.child = Some(child);
        started.with_context(|| format!("server {} did not start (see {stem}.log)", self.name))?;
        Ok(())
    }

    /// Whether the process is alive; an exit we did not cause is returned as its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn freeze(&self, stop: bool) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .context("not running")?;
        signal(pid, if stop { libc::SIGSTOP } else { libc::SIGCONT })
    }

    /// SIGTERM and a bounded wait: a graceful stop.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = signal(pid, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

/// A child process of this binary (`sink` or `worker`), restartable.
pub struct Helper {
    pub name: String,
    args: Vec<String>,
    out: PathBuf,
    child: Option<Child>,
    pub incarnation: u32,
    pub paused: bool,
}

impl Helper {
    pub fn new(name: &str, args: Vec<String>, out: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            args,
            out,
            child: None,
            incarnation: 0,
            paused: false,
        }
    }

    /// Starts the next incarnation; `{inc}` in the arguments is replaced by its number.
    /// Waits for `ready` on stdout when given, and returns what followed it.
    pub async fn start(&mut self, ready: Option<&str>) -> anyhow::Result<Option<String>> {
        let inc = self.incarnation;
        self.incarnation += 1;
        let log = self.out.join(format!("{}.log", self.name));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let exe = std::env::current_exe()?;
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| a.replace("{inc}", &inc.to_string()))
            .collect();
        let mut child = Command::new(exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        self.paused = false;
        let result = match ready {
            Some(prefix) => await_line(&mut child, prefix, log, Duration::from_secs(30))
                .await
                .map(Some),
            None => {
                let stdout = child.stdout.take();
                tokio::spawn(async move {
                    if let Some(s) = stdout {
                        let mut lines = BufReader::new(s).lines();
                        while let Ok(Some(_)) = lines.next_line().await {}
                    }
                });
                Ok(None)
            }
        };
        self.child = Some(child);
        result
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pause(&mut self) -> anyhow::Result<()> {
        let pid = self.pid().context("not running")?;
        signal(pid, libc::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.paused {
            self.paused = false;
            if let Some(pid) = self.pid() {
                signal(pid, libc::SIGCONT)?;
            }
        }
        Ok(())
    }

    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        self.paused = false;
    }

    /// Waits for the process to exit by itself, up to `within`, then kills it.
    pub async fn wait_exit(&mut self, within: Duration) -> bool {
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        let clean =
            matches!(tokio::time::timeout(within, c.wait()).await, Ok(Ok(s)) if s.success());
        if !clean {
            self.kill9().await;
        }
        self.child = None;
        clean
    }
}
