//! `flashsale-loadgen`: offers purchase requests at a fixed rate, whatever the server does
//! (an open model, like wrk2 or k6's `constant-arrival-rate`), and reports the latency
//! distribution, corrected for coordinated omission.
//!
//! Why not k6: on the benchmark's 2 cores, k6 spends ~130 us of CPU per request, more than
//! the gateway and Redis together, so it cannot offer half of the gateway's capacity. This
//! tool spends a few us per request on one thread.
//!
//! # Model
//! `--connections C` keep-alive HTTP/1.1 connections share `--rate R` requests/s: connection
//! `i` owns the slots `start + (i + k*C)/R`, so arrivals are evenly spaced overall and each
//! connection has one request every `C/R` seconds (choose C so that this is well above the
//! latency, e.g. >= 10 ms). A request is sent at its slot; latency is measured from
//! - the slot, when the connection was still busy with the previous response at slot time
//!   (the server made it late: that wait is the server's, as in wrk2), or
//! - the actual send, when the connection was free (timer slack is the generator's own).
//!
//! `--warmup SECS` (default 0) offers the same rate for that long before the measured
//! `--duration`: its answers are checked like the others (status, errors) but their latencies,
//! lateness and throughput are not recorded, so fresh connections, a cold gateway and an event
//! whose Redis structures are still empty do not count as steady state (wrk2 discards its
//! calibration period likewise). The connection storm itself is measured by running without it.
//!
//! Every request is a distinct buyer (`PREFIX-i-k`). Each response's status is tallied;
//! `bench/run.sh` fails the run on any status other than `--expect`, any transport error,
//! or any slot that could not be sent before `duration + grace` (reported as `dropped`).
//!
//! Usage: flashsale-loadgen --url http://127.0.0.1:PORT --event ID --rate R --duration SECS
//!        --connections C --expect 202 [--warmup SECS] [--prefix P] [--grace SECS] [--out FILE]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
struct Args {
    addr: String,
    event: String,
    prefix: String,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    expect: u16,
    grace: Duration,
    out: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let name = flag.strip_prefix("--").ok_or_else(|| format!("unexpected argument {flag}"))?;
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        map.insert(name.to_owned(), value);
    }
    let mut take = |name: &str| map.remove(name);
    let need = |v: Option<String>, name: &str| v.ok_or_else(|| format!("--{name} is required"));
    let url = need(take("url"), "url")?;
    let addr = url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?
        .trim_end_matches('/')
        .to_owned();
    let num = |v: String, name: &str| v.parse::<f64>().map_err(|_| format!("--{name}: not a number: {v}"));
    let args = Args {
        addr,
        event: need(take("event"), "event")?,
        prefix: take("prefix").unwrap_or_else(|| "lg".into()),
        rate: num(need(take("rate"), "rate")?, "rate")?,
        duration: Duration::from_secs_f64(num(need(take("duration"), "duration")?, "duration")?),
        warmup: Duration::from_secs_f64(num(take("warmup").unwrap_or_else(|| "0".into()), "warmup")?),
        connections: num(take("connections").unwrap_or_else(|| "64".into()), "connections")? as usize,
        expect: num(take("expect").unwrap_or_else(|| "202".into()), "expect")? as u16,
        grace: Duration::from_secs_f64(num(take("grace").unwrap_or_else(|| "3".into()), "grace")?),
        out: take("out"),
    };
    if let Some(extra) = map.keys().next() {
        return Err(format!("unknown flag --{extra}"));
    }
    if !(args.rate > 0.0) || args.connections == 0 || args.duration.is_zero() {
        return Err("--rate, --connections and --duration must be positive".into());
    }
    Ok(args)
}

/// What one connection saw.
#[derive(Debug, Default)]
struct ConnReport {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    scheduled: u64,
    sent: u64,
    /// Exchanges completed during the warm-up (checked, not measured).
    warmup_completed: u64,
    /// Requests whose slot passed while the connection still waited for the previous answer.
    late: u64,
    errors: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

/// One HTTP/1.1 exchange: write the request, read one response with a Content-Length body.
/// Returns the status code.
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Result<u16, String> {
    stream.write_all(request).await.map_err(|e| format!("write: {e}"))?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    let (head_len, body_len, status) = loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| "non-UTF-8 response head")?;
            let status = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse::<u16>().ok())
                .ok_or_else(|| format!("bad status line: {:?}", head.lines().next()))?;
            let mut length = None;
            for line in head.lines().skip(1) {
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse::<usize>().ok();
                    } else if name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err("chunked responses are not supported".into());
                    }
                }
            }
            break (end + 4, length.ok_or("response without Content-Length")?, status);
        }
        if buf.len() > 64 * 1024 {
            return Err("response head larger than 64 KiB".into());
        }
    };
    while buf.len() < head_len + body_len {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("connection closed mid-body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.len() != head_len + body_len {
        return Err("more bytes than one response (the server pipelined?)".into());
    }
    Ok(status)
}

async fn run_connection(
    args: std::sync::Arc<Args>,
    index: usize,
    mut stream: TcpStream,
    start: Instant,
) -> ConnReport {
    let mut report = ConnReport::default();
    let measured_from = start + args.warmup;
    let end = measured_from + args.duration;
    let hard_deadline = end + args.grace;
    let c = args.connections as f64;
    let slot = |k: u64| start + Duration::from_secs_f64((index as f64 + k as f64 * c) / args.rate);
    let head = format!(
        "POST /v1/events/{}/purchases HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n",
        args.event, args.addr
    );
    let mut request = Vec::with_capacity(512);
    let mut buf = Vec::with_capacity(4096);
    let mut body = String::with_capacity(128);
    let mut ready = Instant::now();
    let mut k = 0u64;
    loop {
        let at = slot(k);
        if at >= end {
            break;
        }
        let measuring = at >= measured_from;
        report.scheduled += u64::from(measuring);
        if report.errors > 0 || Instant::now() >= hard_deadline {
            k += 1;
            continue; // counted as scheduled, never sent: reported as dropped
        }
        let origin = if ready > at {
            report.late += u64::from(measuring);
            at
        } else {
            tokio::time::sleep_until(at.into()).await;
            Instant::now()
        };
        body.clear();
        let _ = write!(body, "{{\"user_id\":\"{}-{}-{}\",\"quantity\":1}}", args.prefix, index, k);
        request.clear();
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body.as_bytes());
        report.sent += u64::from(measuring);
        let outcome = tokio::time::timeout(Duration::from_secs(5), exchange(&mut stream, &request, &mut buf)).await;
        let done = Instant::now();
        match outcome {
            Ok(Ok(status)) => {
                *report.statuses.entry(status).or_default() += 1;
                if measuring {
                    let us = done.saturating_duration_since(origin).as_micros().min(u32::MAX as u128) as u32;
                    report.latencies_us.push(us);
                    report.last_done = Some(done);
                } else {
                    report.warmup_completed += 1;
                }
            }
            Ok(Err(error)) => {
                report.errors += 1;
                report.first_error.get_or_insert(error);
            }
            Err(_) => {
                report.errors += 1;
                report.first_error.get_or_insert_with(|| "no response within 5 s".into());
            }
        }
        ready = done;
        k += 1;
    }
    report
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let args = match parse_args() {
        Ok(args) => std::sync::Arc::new(args),
        Err(error) => {
            eprintln!("flashsale-loadgen: {error}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        let mut streams = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            let stream = TcpStream::connect(&args.addr).await.map_err(|e| format!("connect {}: {e}", args.addr))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            streams.push(stream);
        }
        let start = Instant::now() + Duration::from_millis(20);
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, stream)| tokio::spawn(run_connection(args.clone(), i, stream, start)))
            .collect();
        let mut reports = Vec::with_capacity(tasks.len());
        for task in tasks {
            reports.push(task.await.map_err(|e| e.to_string())?);
        }
        Ok::<_, String>((start, reports))
    });
    let (start, reports) = match result {
        Ok(r) => r,
        Err(error) => {
            eprintln!("flashsale-loadgen: {error}");
            std::process::exit(1);
        }
    };

    let mut latencies: Vec<u32> = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let (mut scheduled, mut sent, mut late, mut errors, mut warmup_completed) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    let measured_from = start + args.warmup;
    let mut last_done = measured_from;
    for r in reports {
        latencies.extend_from_slice(&r.latencies_us);
        for (s, n) in r.statuses {
            *statuses.entry(s).or_default() += n;
        }
        scheduled += r.scheduled;
        sent += r.sent;
        late += r.late;
        warmup_completed += r.warmup_completed;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        if let Some(d) = r.last_done {
            last_done = last_done.max(d);
        }
    }
    latencies.sort_unstable();
    let completed = latencies.len() as u64;
    let elapsed = last_done.saturating_duration_since(measured_from).max(args.duration).as_secs_f64();
    let mean = if completed > 0 { latencies.iter().map(|&v| v as f64).sum::<f64>() / completed as f64 } else { 0.0 };
    let unexpected: u64 = statuses.iter().filter(|(s, _)| **s != args.expect).map(|(_, n)| n).sum();
    let statuses_json: Vec<String> = statuses.iter().map(|(s, n)| format!("\"{s}\":{n}")).collect();
    let json = format!(
        concat!(
            "{{\"offered_rate\":{},\"connections\":{},\"duration_s\":{},\"scheduled\":{},\"sent\":{},",
            "\"completed\":{},\"warmup_s\":{},\"warmup_completed\":{},\"dropped\":{},\"late\":{},",
            "\"errors\":{},\"first_error\":{},",
            "\"unexpected_status\":{},\"statuses\":{{{}}},\"rate\":{:.1},",
            "\"latency_us\":{{\"mean\":{:.1},\"p50\":{},\"p90\":{},\"p99\":{},\"p99.9\":{},\"max\":{}}}}}\n"
        ),
        args.rate,
        args.connections,
        args.duration.as_secs_f64(),
        scheduled,
        sent,
        completed,
        args.warmup.as_secs_f64(),
        warmup_completed,
        scheduled - sent,
        late,
        errors,
        first_error.map(|e| format!("{e:?}")).unwrap_or_else(|| "null".into()),
        unexpected,
        statuses_json.join(","),
        completed as f64 / elapsed,
        mean,
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        latencies.last().copied().unwrap_or(0),
    );
    match &args.out {
        Some(path) => std::fs::write(path, json).unwrap_or_else(|e| {
            eprintln!("flashsale-loadgen: cannot write {path}: {e}");
            std::process::exit(1);
        }),
        None => print!("{json}"),
    }
}
