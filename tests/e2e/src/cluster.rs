//! Private Postgres clusters for the replication tests: a primary, hot
//! standbys made with `pg_basebackup`, promotion and `kill -9`.
//!
//! Each cluster lives in its own directory under /tmp, listens on its own
//! port on 127.0.0.1 and is stopped (immediately) and removed on drop. The
//! extension must already be installed in the Postgres these binaries belong
//! to (`make test` does that before the e2e stage). As root, every server
//! command runs as the `postgres` OS user (Postgres refuses root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use crate::free_port;

/// The database the replication tests use; the extension's workers serve it.
pub const DATABASE: &str = "ds_ha";

/// Directory of the Postgres server binaries: `DS_PG_BINDIR`, else
/// `pg_config --bindir` (`PG_CONFIG`, else the Debian path).
pub fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("DS_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let pg_config = std::env::var("PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".to_owned());
    let out = Command::new(&pg_config).arg("--bindir").output().expect("run pg_config");
    assert!(out.status.success(), "{pg_config} --bindir failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a server binary (as `postgres` when we are root); panics with its
/// output when it fails.
fn run_pg(program: &str, args: &[&str]) {
    let bin = bindir().join(program);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = command.args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("open config");
    f.write_all(text.as_bytes()).expect("write config");
}

/// One private cluster.
pub struct Cluster {
    /// Its directory (data directory, socket, server log).
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its name (also the standby's `application_name`).
    pub name: String,
}

impl Cluster {
    fn new_dir(name: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "ds-ha-{name}-{}-{}",
            std::process::id(),
            crate::unique_path("x").rsplit('/').next().unwrap()
        ));
        std::fs::create_dir_all(&dir).expect("create cluster dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {}", dir.display());
        }
        Cluster { dir, port: free_port(), name: name.to_owned() }
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn data_str(&self) -> String {
        self.data().display().to_string()
    }

    /// Settings every cluster gets; `extra` lines are appended after them.
    fn write_settings(&self, extra: &[&str]) {
        let mut conf = format!(
            "\n# ds-e2e replication test cluster\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             shared_preload_libraries = 'durable_streams'\n\
             ds.database = '{DATABASE}'\n\
             max_connections = 100\n\
             fsync = on\n\
             wal_keep_size = '256MB'\n\
             hot_standby_feedback = on\n\
             wal_receiver_status_interval = '1s'\n",
            self.port,
            self.dir.display()
        );
        for line in extra {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&self.data().join("postgresql.conf"), &conf);
    }

    /// initdb, start, and create [`DATABASE`] with the extension. `extra`
    /// lines go into postgresql.conf.
    pub async fn primary(name: &str, extra: &[&str]) -> Cluster {
        let cluster = Cluster::new_dir(name);
        run_pg(
            "initdb",
            &[
                "-D",
                &cluster.data_str(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        cluster.write_settings(extra);
        cluster.start();
        let admin = cluster.sql("postgres").await;
        admin.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await.unwrap();
        cluster
            .sql(DATABASE)
            .await
            .batch_execute("CREATE EXTENSION durable_streams")
            .await
            .unwrap();
        cluster
    }

    /// A hot standby of `primary` made with `pg_basebackup -R`, started and
    /// streaming. Its `application_name` is `name` (for
    /// `synchronous_standby_names`).
    pub async fn standby(primary: &Cluster, name: &str, extra: &[&str]) -> Cluster {
        let cluster = Cluster::new_dir(name);
        run_pg(
            "pg_basebackup",
            &[
                "-D",
                &cluster.data_str(),
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-X",
                "stream",
                "-c",
                "fast",
                "-R",
            ],
        );
        cluster.write_settings(extra);
        // After the line `-R` wrote: the last setting in a file wins.
        append(
            &cluster.data().join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={name}'\n",
                primary.port
            ),
        );
        cluster.start();
        cluster.wait_streaming(primary).await;
        cluster
    }

    /// `pg_ctl start` (waits until it accepts connections).
    pub fn start(&self) {
        let log = self.dir.join("server.log").display().to_string();
        run_pg("pg_ctl", &["-D", &self.data_str(), "-l", &log, "-w", "-t", "60", "start"]);
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) {
        run_pg("pg_ctl", &["-D", &self.data_str(), "-m", "fast", "-w", "stop"]);
    }

    /// `kill -9` of the postmaster: the machine is gone. Its backends notice
    /// and exit; waits until the port is closed.
    pub async fn kill9(&self) {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .expect("postmaster.pid of a running cluster");
        let pid = pid_file.lines().next().unwrap().trim().to_owned();
        let ok = Command::new("kill").args(["-9", &pid]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -9 {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
            assert!(Instant::now() < deadline, "{} still accepts connections", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` of the postmaster and every process it started, at once:
    /// a power cut. `start` then runs crash recovery.
    pub async fn crash(&self) {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .expect("postmaster.pid of a running cluster");
        let pid = pid_file.lines().next().unwrap().trim().to_owned();
        let children = Command::new("pgrep").args(["-P", &pid]).output().expect("pgrep");
        let mut victims = vec![pid.clone()];
        victims
            .extend(String::from_utf8_lossy(&children.stdout).split_whitespace().map(String::from));
        let ok = Command::new("kill").arg("-9").args(&victims).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -9 {victims:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while victims.iter().any(|v| Path::new(&format!("/proc/{v}")).exists()) {
            assert!(Instant::now() < deadline, "{} still has processes", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pg_ctl promote` (waits until the standby accepts writes).
    pub fn promote(&self) {
        run_pg("pg_ctl", &["-D", &self.data_str(), "-w", "-t", "60", "promote"]);
    }

    /// Reloads the configuration after `ALTER SYSTEM`.
    pub async fn reload(&self) {
        self.sql("postgres")
            .await
            .batch_execute("SELECT pg_catalog.pg_reload_conf()")
            .await
            .unwrap();
    }

    /// `postgresql://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A SQL connection to `db` (retried for up to 30 s).
    pub async fn sql(&self, db: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(&self.url(db), NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    return client;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connect to {}: {e}", self.name),
            }
        }
    }

    /// Waits (up to 60 s) until this standby streams from `primary`.
    pub async fn wait_streaming(&self, primary: &Cluster) {
        let client = primary.sql("postgres").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = client
                .query(
                    "SELECT 1 FROM pg_catalog.pg_stat_replication \
                     WHERE application_name = $1 AND state = 'streaming'",
                    &[&self.name],
                )
                .await
                .unwrap();
            if !rows.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{} never started streaming", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to 60 s) until this standby has replayed everything
    /// `primary` had written when this was called.
    pub async fn wait_replayed(&self, primary: &Cluster) {
        let lsn: String = primary
            .sql("postgres")
            .await
            .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let client = self.sql("postgres").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done: bool = client
                .query_one(
                    "SELECT pg_catalog.pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&lsn],
                )
                .await
                .unwrap()
                .get(0);
            if done {
                return;
            }
            assert!(Instant::now() < deadline, "{} did not replay up to {lsn}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let bin = bindir().join("pg_ctl");
            let data = self.data_str();
            let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
            let _ = if is_root() {
                Command::new("runuser").args(["-u", "postgres", "--"]).arg(&bin).args(args).output()
            } else {
                Command::new(&bin).args(args).output()
            };
        }
        if std::env::var_os("DS_KEEP_CLUSTERS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
