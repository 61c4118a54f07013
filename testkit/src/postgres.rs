use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::statvfs::statvfs;
use nix::unistd::{Pid, User, geteuid};

use crate::free_port;

/// The superuser `initdb -U` creates, whatever the OS user.
const SUPERUSER: &str = "postgres";
/// The database every server starts with, the one [`Postgres::url`] names.
const DATABASE: &str = "flashsale";
/// Part of the cached template's name: bump it when the template's contents or `initdb`'s
/// options change, so an older template is not copied.
const TEMPLATE_FORMAT: u32 = 2;

/// A private PostgreSQL server on a free loopback port, in its own temporary directory
/// (data, unix socket and log), with a database `flashsale`. Never the machine's 5432.
///
/// Tuned for tests, not durability: `fsync=off` and `full_page_writes=off`, so what it
/// survives is a crash of the *server* ([`kill`](Self::kill)), not of the machine.
/// `synchronous_commit` stays on: with `fsync=off` a commit costs one `write()` to the page
/// cache (pgbench, 4 clients of one-row INSERTs: ~27k tps either way, within noise), and
/// turning it off would let a SIGKILL lose commits the client was told had succeeded, which
/// is exactly what a crash test checks.
///
/// `start()` copies a template data directory made once by `initdb` and kept across test
/// runs (`template()` in this file says where and why), so it costs a directory copy and a
/// server start, not an `initdb`: about 0.15-0.3 s here, against 1.4-2.8 s for a start that
/// has to make the template first. As root (PostgreSQL refuses to
/// run as root) `initdb` and `postgres` run as the `postgres` user, which owns the directory;
/// otherwise as the current user. Dropping it stops the server (immediate shutdown) and
/// removes the directory.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Set by `pause`, cleared by `resume` (both take `&self`, so a test can resume while
    /// another thread waits on the paused server).
    paused: AtomicBool,
}

/// Where a new server's data directory comes from.
#[derive(Debug, Clone, Copy)]
enum Seed<'a> {
    /// A fresh `initdb`, then `CREATE DATABASE flashsale` (how the template is made).
    Initdb,
    /// A copy of an initialized, cleanly shut down data directory that has the database.
    Template(&'a Path),
}

impl Postgres {
    /// Starts a new server and returns once a real connection to `flashsale` succeeded.
    pub fn start() -> Self {
        Self::launch(Seed::Template(template()), servers_parent())
    }

    /// A new server in a new directory under `parent`.
    fn launch(seed: Seed<'_>, parent: &Path) -> Self {
        let install = install();
        let dir = tempfile::Builder::new().prefix("flashsale-pg-").tempdir_in(parent).expect("temp dir");
        install.give_to_server(dir.path());
        let mut server = Self { port: 0, dir, child: None, paused: AtomicBool::new(false) };
        let data = server.data_dir();
        match seed {
            Seed::Initdb => {
                let mut initdb = install.server_command("initdb", server.dir());
                initdb.arg("-D").arg(&data).args([
                    "--username",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    // 1 MB WAL segments instead of 16: 46 MB down to 36 MB to copy per server.
                    "--wal-segsize=1",
                ]);
                run(&mut initdb, "initdb");
            }
            // `cp -a` keeps owner and mode: the copy belongs to the server's user, mode 0700.
            Seed::Template(template) => run(Command::new("cp").arg("-a").arg(template).arg(&data), "cp -a"),
        }
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                if let Seed::Initdb = seed {
                    server.query("postgres", &format!("CREATE DATABASE {DATABASE}")).unwrap_or_else(|e| {
                        panic!("CREATE DATABASE {DATABASE}: {e}");
                    });
                }
                return server;
            }
        }
        panic!("could not start postgres on a free port; its log:\n{}", server.log());
    }

    /// `postgres://postgres@127.0.0.1:PORT/flashsale` (no password: the server trusts the
    /// loopback, and listens on nothing else).
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory: `data/` (the data directory), the unix socket and
    /// `postgres.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("postgres.log")
    }

    /// The server's log so far (every start appends to it).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fast shutdown (SIGINT: sessions are disconnected, a checkpoint is written), keeping the
    /// data directory; [`start_again`](Self::start_again) brings it back.
    pub fn stop(&mut self) {
        assert!(self.shutdown(Signal::SIGINT, Duration::from_secs(30)), "postgres did not stop within 30 s");
    }

    /// Starts the stopped or killed server again on the same port and data directory (after
    /// [`kill`](Self::kill), with crash recovery), returning once it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres on port {} is still running", self.port);
        let deadline = Instant::now() + Duration::from_secs(15);
        // A start right after a kill can find the port not yet released: try again.
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postgres did not come back on port {}; its log:\n{}", self.port, self.log());
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again): the database goes away
    /// cleanly and comes back with its data on the same URL.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// A crash: SIGKILL to the postmaster and every process it started, so every connection
    /// drops at once and nothing is shut down cleanly. Returns when all of them are gone.
    /// What survives is what was committed (see the type's doc); `start_again` replays the
    /// WAL.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let postmaster = Pid::from_raw(child.id() as i32);
        // Stopped, the postmaster starts no new process while its children are listed.
        let children = stop_and_list_children(postmaster);
        let _ = child.kill();
        let _ = child.wait();
        for pid in &children {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        self.paused.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(pid) = children.iter().find(|pid| is_alive(**pid)) {
            assert!(Instant::now() < deadline, "postgres process {pid} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGSTOP to the postmaster and its processes: the server hangs (connections are
    /// accepted by the kernel and never answered, queries in flight stall) until
    /// [`resume`](Self::resume). A database that stops responding without going away.
    pub fn pause(&self) {
        let Some(pid) = self.pid() else { panic!("postgres is not running") };
        stop_and_list_children(Pid::from_raw(pid as i32)).into_iter().for_each(|child| {
            let _ = kill(child, Signal::SIGSTOP);
        });
        self.paused.store(true, Ordering::SeqCst);
    }

    /// SIGCONT to everything [`pause`](Self::pause) stopped.
    pub fn resume(&self) {
        let Some(pid) = self.pid() else { return };
        let postmaster = Pid::from_raw(pid as i32);
        // The postmaster is stopped, so its children are the ones pause() stopped.
        for child in children(postmaster) {
            let _ = kill(child, Signal::SIGCONT);
        }
        let _ = kill(postmaster, Signal::SIGCONT);
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Runs `sql` (one or more statements, each in its own transaction unless the text says
    /// otherwise) in `flashsale` with the `psql` binary and returns the rows it printed:
    /// unaligned, tuples only (`-At`), columns separated by `|`, rows by `\n`, no trailing
    /// newline. Panics with psql's error if a statement fails.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("psql on port {}: {e}\n{sql}", self.port))
    }

    /// Like [`psql`](Self::psql), returning psql's error instead (for a server that is meant
    /// to be down, or a statement that is meant to fail).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.query(DATABASE, sql)
    }

    fn query(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut child = install()
            .client_command("psql")
            .args(["--no-psqlrc", "--quiet", "--no-align", "--tuples-only", "--set", "ON_ERROR_STOP=1"])
            .arg("--dbname")
            .arg(format!(
                "host=127.0.0.1 port={} user={SUPERUSER} dbname={database} connect_timeout=5",
                self.port
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        // Written from a thread: a script with a large result could otherwise fill the
        // output pipe while its input is still being written.
        let mut stdin = child.stdin.take().expect("psql stdin");
        let script = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let output = child.wait_with_output().expect("run psql");
        let _ = writer.join();
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim_end().to_owned());
        }
        let mut rows = String::from_utf8_lossy(&output.stdout).into_owned();
        if rows.ends_with('\n') {
            rows.pop();
        }
        Ok(rows)
    }

    /// Starts the postmaster on `self.port` and waits until it accepts connections; false if
    /// it exited (the port was taken, say) or was not ready within 30 s.
    fn spawn(&mut self) -> bool {
        let log =
            OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open postgres.log");
        let mut cmd = install().server_command("postgres", self.dir());
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir().display()))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=50"])
            // Dynamic shared memory as files in the data directory rather than /dev/shm: a
            // killed server's segments go with the directory instead of staying until reboot.
            .args(["-c", "dynamic_shared_memory_type=mmap"])
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn postgres"));
        if self.wait_ready(Duration::from_secs(30)) {
            return true;
        }
        self.kill();
        false
    }

    /// Ready means: *our* postmaster says so in its `postmaster.pid` (so a server that
    /// happens to answer on the port is never mistaken for ours), and then a real query
    /// succeeds.
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let pid_file = self.data_dir().join("postmaster.pid");
        while Instant::now() < deadline {
            let Some(child) = self.child.as_mut() else { return false };
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return false;
            }
            let pid = child.id().to_string();
            // Line 1: the postmaster's pid; line 8: its status, "ready" once it accepts.
            let status = fs::read_to_string(&pid_file).unwrap_or_default();
            let lines: Vec<&str> = status.lines().collect();
            if lines.first() == Some(&pid.as_str())
                && lines.get(7).map(|s| s.trim()) == Some("ready")
                && self.query("postgres", "SELECT 1").is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// After a kill that no restart followed, every server process is gone but the small
    /// System V segment each postmaster holds (to detect a second postmaster on the data
    /// directory) stays until reboot: only a start on the same directory would reclaim it,
    /// and the kernel allows 4096 (`kernel.shmmni`). The stale `postmaster.pid` names it
    /// (line 7: key and id); a clean or immediate shutdown removes both.
    fn remove_shared_memory(&self) {
        let Ok(pid_file) = fs::read_to_string(self.data_dir().join("postmaster.pid")) else { return };
        if let Some(id) = pid_file.lines().nth(6).and_then(|l| l.split_whitespace().nth(1))
            && id.parse::<u64>().is_ok()
        {
            let _ = Command::new("ipcrm").args(["-m", id]).stderr(Stdio::null()).status();
        }
    }

    /// Sends `signal`, waits up to `timeout` for the postmaster to exit, SIGKILLs it after
    /// that. True if it exited by itself (or was not running).
    fn shutdown(&mut self, signal: Signal, timeout: Duration) -> bool {
        if self.paused.load(Ordering::SeqCst) {
            self.resume();
        }
        let Some(child) = self.child.as_mut() else { return true };
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown (SIGQUIT): no checkpoint, the directory is removed next anyway.
        self.shutdown(Signal::SIGQUIT, Duration::from_secs(10));
        self.remove_shared_memory();
    }
}

/// The PostgreSQL installation the servers run from.
#[derive(Debug)]
struct Install {
    /// Holds `initdb`, `postgres` and `psql`.
    bin: PathBuf,
    /// `postgres --version`'s number, e.g. `15.20`.
    version: String,
    /// The `postgres` user's uid and gid when the tests run as root; `None`: the current user.
    server_user: Option<(u32, u32)>,
}

fn install() -> &'static Install {
    static INSTALL: OnceLock<Install> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server programs (initdb, postgres, psql) are not in `pg_config --bindir`, \
                 /usr/lib/postgresql/*/bin or PATH: install them with `apt-get install postgresql` \
                 (or scripts/install-deps.sh)"
            )
        });
        let out =
            Command::new(bin.join("postgres")).arg("--version").output().expect("run postgres --version");
        // "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
        let text = String::from_utf8_lossy(&out.stdout);
        let version: String = text
            .split_whitespace()
            .nth(2)
            .unwrap_or("unknown")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        let server_user = geteuid().is_root().then(|| {
            let user = User::from_name("postgres").ok().flatten().unwrap_or_else(|| {
                panic!(
                    "PostgreSQL refuses to run as root and there is no `postgres` user to run it as \
                     (`apt-get install postgresql` creates one)"
                )
            });
            (user.uid.as_raw(), user.gid.as_raw())
        });
        Install { bin, version, server_user }
    })
}

/// `pg_config --bindir` if it has the server programs (Debian's `pg_config` comes with
/// libpq-dev and may name another major version than the server installed), else the newest
/// `/usr/lib/postgresql/N/bin` (Debian keeps them off PATH), else PATH.
fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| ["initdb", "postgres", "psql"].iter().all(|p| dir.join(p).is_file());
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if complete(&dir) {
            return Some(dir);
        }
    }
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .collect();
    majors.sort();
    if let Some((_, dir)) = majors.into_iter().rev().find(|(_, dir)| complete(dir)) {
        return Some(dir);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| complete(dir))
}

impl Install {
    /// `initdb` or `postgres`, as the server's user, in `dir` (the server's user must be able
    /// to enter its working directory).
    fn server_command(&self, program: &str, dir: &Path) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.server_user {
            // std sets the gid, drops supplementary groups and sets the uid before exec.
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(dir).stdin(Stdio::null());
        cmd
    }

    /// A client program (`psql`), as the current user.
    fn client_command(&self, program: &str) -> Command {
        Command::new(self.bin.join(program))
    }

    /// Makes `path` the server user's (a no-op when the tests do not run as root).
    fn give_to_server(&self, path: &Path) {
        if let Some((uid, gid)) = self.server_user {
            chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    /// Who owns the servers' files.
    fn owner(&self) -> u32 {
        self.server_user.map_or_else(|| geteuid().as_raw(), |(uid, _)| uid)
    }
}

/// Where servers' directories go: `/dev/shm` (tmpfs) when it has room, else the temporary
/// directory. Measured here (ext4 on a VM disk, 2 cores busy compiling): copying the 36 MB
/// template takes 0.5 s onto the disk and 0.07 s onto tmpfs (`initdb` itself took 1.1-1.7 s,
/// nearly all of it system time writing files). tmpfs keeps what a crash of the *server*
/// must keep; only a reboot empties it. A container's default /dev/shm (64 MB)
/// is too small (each server takes 36 MB and grows with its data), hence the check.
fn servers_parent() -> &'static Path {
    static PARENT: OnceLock<PathBuf> = OnceLock::new();
    PARENT.get_or_init(|| {
        const ROOM: u64 = 1 << 30;
        let shm = Path::new("/dev/shm");
        let roomy =
            statvfs(shm).is_ok_and(|fs| fs.blocks_available().saturating_mul(fs.fragment_size()) >= ROOM);
        let writable = roomy && tempfile::tempdir_in(shm).is_ok();
        if writable { shm.to_path_buf() } else { std::env::temp_dir() }
    })
}

/// An initialized data directory with the `flashsale` database, shut down cleanly, that
/// `start()` copies instead of running `initdb` and `CREATE DATABASE` (times measured in
/// [`servers_parent`]; `tests/postgres.rs` prints those of `start()`).
///
/// It is kept on disk in the temporary directory (so it holds no memory), across test
/// processes: each `cargo test` binary, and every test under nextest, is a process of its own.
/// Its name carries [`TEMPLATE_FORMAT`], the PostgreSQL version and its owner's uid, so a new
/// version or a change here makes a new one (the old one stays until /tmp is cleaned).
/// Made in a private directory and renamed into place only when complete, so a reader never
/// sees half of one; when two processes make it at once, one rename wins and the other's
/// copy is dropped. Nothing ever writes to it afterwards: servers run on copies.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let install = install();
        let owner = install.owner();
        let path = std::env::temp_dir()
            .join(format!("flashsale-pg-template-v{TEMPLATE_FORMAT}-{}-uid{owner}", install.version));
        if !template_ready(&path, owner) {
            // Made beside its final place: a rename does not cross file systems.
            let mut maker = Postgres::launch(Seed::Initdb, &std::env::temp_dir());
            maker.stop();
            if let Err(e) = fs::rename(maker.data_dir(), &path) {
                assert!(template_ready(&path, owner), "cannot move the template to {}: {e}", path.display());
            }
        }
        path
    })
}

/// Whether `path` holds a template, after checking that it is ours: owned by the servers'
/// user and closed to everyone else.
fn template_ready(path: &Path, owner: u32) -> bool {
    let Ok(meta) = fs::metadata(path) else { return false };
    assert!(
        meta.uid() == owner && meta.mode() & 0o077 == 0,
        "{} is not a template made by testkit (owner uid {}, mode {:o}): remove it",
        path.display(),
        meta.uid(),
        meta.mode() & 0o7777
    );
    assert!(path.join("PG_VERSION").is_file(), "{} is an incomplete template: remove it", path.display());
    true
}

/// Runs a setup command to completion, panicking with its output if it fails.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGSTOPs `postmaster`, waits until it is stopped (so it forks nothing more), and returns
/// its children.
fn stop_and_list_children(postmaster: Pid) -> Vec<Pid> {
    let _ = kill(postmaster, Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(5);
    // 'T': stopped; 'Z'/'X': it exited already.
    while proc_stat(postmaster).is_some_and(|(state, _)| !matches!(state, 'T' | 'Z' | 'X'))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    children(postmaster)
}

/// The processes whose parent is `parent` (from `/proc/*/stat`: this kernel need not have
/// `/proc/PID/task/PID/children`).
fn children(parent: Pid) -> Vec<Pid> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .filter(|pid| proc_stat(*pid).is_some_and(|(_, ppid)| ppid == parent.as_raw()))
        .collect()
}

/// A process's state letter and parent pid, from `/proc/PID/stat`.
fn proc_stat(pid: Pid) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses, so split after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Alive and not a zombie (an orphan's zombie may wait long for a reaper; it holds nothing).
fn is_alive(pid: Pid) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}
