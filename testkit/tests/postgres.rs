//! `testkit::Postgres`: private servers that share nothing, keep their data across a
//! restart and a SIGKILL, hang while paused, and leave nothing behind.

use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::Postgres;

/// Starts one server and reports how long `start()` took (the first start of a test process
/// may include making the template; see `cargo test -p testkit --test postgres -- --nocapture`).
fn timed_start(what: &str) -> Postgres {
    let started = Instant::now();
    let server = Postgres::start();
    eprintln!("Postgres::start() ({what}): {:?}", started.elapsed());
    server
}

/// Whether the System V shared memory segment `shmid` exists.
fn shm_exists(shmid: &str) -> bool {
    let table = std::fs::read_to_string("/proc/sysvipc/shm").expect("/proc/sysvipc/shm");
    table.lines().skip(1).any(|line| line.split_whitespace().nth(1) == Some(shmid))
}

#[test]
fn two_private_servers_share_nothing_and_survive_restart_and_kill() {
    let (mut a, mut b) = std::thread::scope(|s| {
        let a = s.spawn(|| timed_start("a, concurrently with b"));
        let b = s.spawn(|| timed_start("b, concurrently with a"));
        (a.join().expect("start a"), b.join().expect("start b"))
    });
    assert_ne!(a.port(), b.port());
    assert_eq!(a.url(), format!("postgres://postgres@127.0.0.1:{}/flashsale", a.port()));
    assert_eq!(a.psql("SELECT current_database(), current_user"), "flashsale|postgres");

    a.psql("CREATE TABLE orders (id bigint PRIMARY KEY, buyer text NOT NULL); INSERT INTO orders VALUES (1, 'alice');");
    assert_eq!(a.psql("SELECT id, buyer FROM orders"), "1|alice");
    assert_eq!(b.psql("SELECT to_regclass('orders') IS NULL"), "t", "b sees a's table");
    assert!(b.try_psql("SELECT * FROM orders").is_err());

    // A clean restart on the same port and data directory.
    let port = a.port();
    a.restart();
    assert_eq!(a.port(), port);
    assert_eq!(a.psql("SELECT buyer FROM orders WHERE id = 1"), "alice");

    // A crash: every committed row survives (synchronous_commit stays on), the port closes.
    a.psql("INSERT INTO orders VALUES (2, 'bob')");
    a.kill();
    assert!(a.pid().is_none());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still open after kill");
    let err = a.try_psql("SELECT 1").expect_err("a killed server answers");
    assert!(err.contains("Connection refused") || err.contains("could not connect"), "{err}");
    a.start_again();
    assert_eq!(a.port(), port);
    assert_eq!(a.psql("SELECT string_agg(buyer, ',' ORDER BY id) FROM orders"), "alice,bob");
    assert!(a.log().contains("database system was interrupted"), "no crash recovery in the log");

    // Dropping a killed server removes its directory and the System V segment it left.
    b.kill();
    assert!(b.try_psql("SELECT 1").is_err());
    let dir = b.dir().to_path_buf();
    let pid_file = std::fs::read_to_string(dir.join("data/postmaster.pid")).expect("stale postmaster.pid");
    let shmid =
        pid_file.lines().nth(6).and_then(|l| l.split_whitespace().nth(1)).expect("shmem id").to_owned();
    assert!(shm_exists(&shmid), "no System V segment {shmid} after kill");
    drop(b);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!shm_exists(&shmid), "System V segment {shmid} left behind");

    let c = timed_start("c, alone, template made");
    assert_eq!(c.psql("SELECT to_regclass('orders') IS NULL"), "t");
}

#[test]
fn a_paused_server_hangs_until_resumed() {
    let pg = timed_start("alone");
    pg.psql("CREATE TABLE t (n int); INSERT INTO t VALUES (7)");
    pg.pause();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let pg = &pg;
        s.spawn(move || tx.send(pg.try_psql("SELECT n FROM t")).expect("send"));
        // That nothing comes back can only be shown by waiting; 300 ms is ample on loopback.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "a paused server answered");
        pg.resume();
        let answer = rx.recv_timeout(Duration::from_secs(10)).expect("an answer after resume");
        assert_eq!(answer.as_deref(), Ok("7"));
    });
    // Dropping a paused server still stops it.
    pg.pause();
    let port = pg.port();
    drop(pg);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still open after drop");
}
