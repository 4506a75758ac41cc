//! `runner board`: the server's endpoints over generated run folders (two completed runs
//! of a real training, a running one whose tables grow during the test, a broken one),
//! its refusals of paths outside the runs, and that it writes nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use runner::runlog::{MetricRow, RunLog, Status};
use serde_json::Value;

use crate::common::runner;

/// The server process, killed when dropped, and the lines of its log (`-v`: one line
/// per request).
struct Server {
    child: Child,
    addr: String,
    log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `runner -v board --port 0 DIRS` in `cwd` and reads the address it prints.
fn start(cwd: &Path, args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["-v", "board", "--port", "0"])
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runner board starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("runner board: http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .to_string();
    let (tx, log) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Server { child, addr, log }
}

/// A raw GET of `target` exactly as written (no client-side normalisation of `..`):
/// (status, content type, body).
fn get(s: &Server, target: &str) -> (u16, String, Vec<u8>) {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    write!(c, "GET {target} HTTP/1.0\r\nHost: {}\r\n\r\n", s.addr).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: ").or_else(|| l.strip_prefix("content-type: ")))
        .unwrap_or_default()
        .to_string();
    (status, ctype, raw[split + 4..].to_vec())
}

fn get_json(s: &Server, target: &str) -> Value {
    let (status, ctype, body) = get(s, target);
    assert_eq!(status, 200, "{target}: {}", String::from_utf8_lossy(&body));
    assert_eq!(ctype, "application/json");
    serde_json::from_slice(&body).unwrap()
}

fn row(epoch: i32, split: &str, metric: &str, value: f64) -> MetricRow {
    MetricRow {
        epoch,
        step: epoch as i64 * 10,
        split: split.into(),
        metric: metric.into(),
        class: None,
        value,
        wall_time_s: epoch as f64,
    }
}

fn enc(s: &str) -> String {
    s.replace('/', "%2F")
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().display().to_string(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

/// Two trained runs of the tiny experiment (a sweep of lr 0.1 and 0.03), a live run this
/// process holds (epoch 0's test and train accuracy), a broken one, and a file outside the
/// runs.
fn fixture() -> (tempfile::TempDir, RunLog) {
    let d = tempfile::tempdir().unwrap();
    crate::end_to_end::setup(d.path(), 2);
    let out = runner(d.path(), &["sweep", "tiny.toml", "--grid", "train.optimizer.sgd.lr=0.1,0.03"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let runs = d.path().join("runs");
    // A run in progress: this process holds its lock, as a training process would.
    let mut live = RunLog::create(&runs, "live", "abc", 0, "cpu").unwrap();
    live.write_text("config.toml", "# a live run\n[experiment]\nname = \"live\"\n").unwrap();
    live.write_params(&BTreeMap::from([("experiment.name".to_string(), "live".to_string())])).unwrap();
    live.push(row(0, "test", "accuracy", 0.5));
    live.push(row(0, "train", "accuracy", 0.4));
    live.flush().unwrap();
    live.publish().unwrap();
    assert_eq!(live.status(), Status::Running);
    // A broken run: run.parquet is not a table.
    std::fs::create_dir_all(runs.join("tiny/broken")).unwrap();
    std::fs::write(runs.join("tiny/broken/run.parquet"), b"not parquet").unwrap();
    std::fs::write(d.path().join("secret.txt"), "the contents of a file outside the runs").unwrap();
    (d, live)
}

#[test]
fn endpoints_over_completed_running_and_broken_runs() {
    let (d, mut live) = fixture();
    let runs = d.path().join("runs");
    let before = snapshot(&runs);
    let s = start(d.path(), &[]);

    // The page.
    let (status, ctype, body) = get(&s, "/");
    assert_eq!((status, ctype.as_str()), (200, "text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&body).contains("<title>runner board</title>"));

    // The runs table: 4 rows; the broken one carries its error; lr differs.
    let table = get_json(&s, "/api/runs");
    let rows = table["runs"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{table}");
    let broken = rows.iter().find(|r| r["key"] == "0/tiny/broken").expect("the broken run is a row");
    assert!(broken["error"].as_str().unwrap().contains("run.parquet"), "{broken}");
    let tiny: Vec<&Value> = rows.iter().filter(|r| r["experiment"] == "tiny").collect();
    assert_eq!(tiny.len(), 2);
    for r in &tiny {
        assert_eq!(r["status"], "completed");
        assert!(r["finals"]["test.accuracy"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["finished_at_us"].as_i64().unwrap() >= r["started_at_us"].as_i64().unwrap());
    }
    assert_eq!(tiny[0]["sweep_id"], tiny[1]["sweep_id"], "the two points of one sweep");
    assert!(tiny[0]["sweep_id"].as_str().unwrap().starts_with("tiny-"));
    let differing: Vec<&str> = table["differing"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(differing.contains(&"train.optimizer.sgd.lr"), "{differing:?}");
    let live_row = rows.iter().find(|r| r["experiment"] == "live").unwrap();
    assert_eq!(live_row["status"], "running");
    let live_key = live_row["key"].as_str().unwrap().to_string();

    // A completed run's curves: the same rows as its metrics.parquet.
    let key = tiny[0]["key"].as_str().unwrap();
    let m = get_json(&s, &format!("/api/metrics?run={}", enc(key)));
    let n = m["value"].as_array().unwrap().len();
    assert!(n > 0 && m["epoch"].as_array().unwrap().len() == n && m["metric"].as_array().unwrap().len() == n);
    let dir = runs.join(key.strip_prefix("0/").unwrap());
    let log = RunLog::open(&dir, None).unwrap();
    assert_eq!(n, log.metrics().len());
    let test_acc: Vec<f64> = (0..n)
        .filter(|&i| m["split"][i] == "test" && m["metric"][i] == "accuracy" && m["class"][i].is_null())
        .map(|i| m["value"][i].as_f64().unwrap())
        .collect();
    assert_eq!(test_acc.len(), 2, "one test accuracy per epoch");
    assert_eq!(test_acc[1], tiny[0]["finals"]["test.accuracy"].as_f64().unwrap());

    // The running run's curve gains a point when its table grows.
    let count = |m: &Value| (0..m["value"].as_array().unwrap().len()).filter(|&i| m["split"][i] == "test").count();
    assert_eq!(count(&get_json(&s, &format!("/api/metrics?run={}", enc(&live_key)))), 1);
    live.push(row(1, "test", "accuracy", 0.6));
    live.flush().unwrap();
    assert_eq!(count(&get_json(&s, &format!("/api/metrics?run={}", enc(&live_key)))), 2);

    // Its files: config.toml and the plots, served with their types.
    let files = get_json(&s, &format!("/api/files?run={}", enc(key)));
    let names: Vec<&str> = files["files"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(names[0], "config.toml");
    let png = names.iter().find(|n| n.starts_with("plots/") && n.ends_with(".png")).expect("a plot");
    let (status, ctype, body) = get(&s, &format!("/api/file?run={}&name={png}", enc(key)));
    assert_eq!((status, ctype.as_str()), (200, "image/png"));
    assert_eq!(&body[..8], b"\x89PNG\r\n\x1a\n");
    let (status, _, body) = get(&s, &format!("/api/file?run={}&name=config.toml", enc(key)));
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(dir.join("config.toml")).unwrap());

    // Nothing outside the runs: traversal in the run key, in the file name (plain and
    // percent-encoded), absolute paths, other paths of the server, a link pointing out.
    #[cfg(unix)]
    std::os::unix::fs::symlink(d.path().join("secret.txt"), dir.join("plots/leak.png")).unwrap();
    for target in [
        "/../secret.txt".to_string(),
        "/%2e%2e/secret.txt".to_string(),
        "/secret.txt".to_string(),
        "/api/file?run=0/..&name=secret.txt".to_string(),
        "/api/file?run=0%2F..%2F..&name=secret.txt".to_string(),
        format!("/api/file?run={}&name=../../../secret.txt", enc(key)),
        format!("/api/file?run={}&name=%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt", enc(key)),
        format!("/api/file?run={}&name={}", enc(key), d.path().join("secret.txt").display()),
        format!("/api/file?run={}&name=metrics.parquet", enc(key)),
        format!("/api/file?run={}&name=plots/leak.png", enc(key)),
        format!("/api/metrics?run={}", d.path().display()),
    ] {
        let (status, _, body) = get(&s, &target);
        assert!([403, 404].contains(&status), "{target}: {status}");
        assert!(!String::from_utf8_lossy(&body).contains("contents of a file"), "{target} leaked the file");
    }
    // A broken run's curves are an error of that run, not of the server.
    let (status, _, body) = get(&s, "/api/metrics?run=0%2Ftiny%2Fbroken");
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&body).contains("0/tiny/broken"));
    // The table still answers.
    assert_eq!(get_json(&s, "/api/runs")["runs"].as_array().unwrap().len(), 4);

    // The board wrote nothing: every file as before, but the ones the live run wrote and
    // the link this test made.
    let mut after = snapshot(&runs);
    let mut before = before;
    for m in [&mut after, &mut before] {
        m.retain(|k, _| !k.contains("/live/") && !k.ends_with("leak.png"));
    }
    assert_eq!(before, after);
    drop(live);
}

#[test]
fn refuses_a_missing_folder() {
    let d = tempfile::tempdir().unwrap();
    let out = runner(d.path(), &["board", "nowhere"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("nowhere: no such folder"), "{}", out.stderr);
}

/// The page has drawn itself and polled the server once (the poll timer starts after the
/// first drawing): the condition most browser checks wait for.
const POLLED: &str = "Number(document.body.dataset.polls || 0) >= 1";

/// Debian's Chromium, headless, on `url`, driven over the DevTools protocol on a pipe:
/// waits (real time, 60 s at most) until the JavaScript `until` holds, every image in the
/// window has loaded and the DOM has stopped changing, then returns the DOM; a screenshot of the
/// 1400 x 900 window into `shot` when given. Each call has a fresh profile.
///
/// Real time, not `--virtual-time-budget` with `--dump-dom` as before: virtual time stops
/// while a request is pending, so an unanswered one hung Chromium without a word (CI saw
/// it: the server's old connection pool left two image requests of a run page waiting, see
/// `board/http.rs`); here the call says which images of the window did not come.
fn chromium(url: &str, until: &str, shot: Option<&Path>, profile: &Path) -> String {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = profile.join(n.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let start = std::time::Instant::now();
    let mut browser = Devtools::launch(&dir);
    let target =
        browser.call("Target.createTarget", serde_json::json!({ "url": url }), None).unwrap()["targetId"].clone();
    let session = browser
        .call("Target.attachToTarget", serde_json::json!({ "targetId": target, "flatten": true }), None)
        .unwrap()["sessionId"]
        .as_str()
        .expect("a session")
        .to_string();
    // An error (the page between about:blank and `url` has no context yet) reads as null:
    // not ready.
    let mut eval = |expression: &str| {
        let params = serde_json::json!({ "expression": expression, "returnByValue": true });
        browser.call("Runtime.evaluate", params, Some(&session)).map_or(Value::Null, |r| r["result"]["value"].clone())
    };
    // Lazy images below the window load only when scrolled to: not waited for.
    let loaded = "[...document.images].every(i => i.complete || i.getBoundingClientRect().top > innerHeight)";
    let ready = format!("Boolean({until}) && {loaded}");
    let html = "document.documentElement.outerHTML";
    let mut last = None;
    let dom = loop {
        if eval(&ready) == Value::Bool(true) {
            // Settled: the same DOM twice, 200 ms apart.
            let dom = eval(html).as_str().unwrap_or_default().to_string();
            if last.as_ref() == Some(&dom) {
                break dom;
            }
            last = Some(dom);
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let pending = "JSON.stringify([...document.images].filter(i => !i.complete && i.getBoundingClientRect().top <= innerHeight).map(i => i.src))";
            println!(
                "board: {url}: not ready after 60 s ({until}: {}; images not loaded: {}); the checks read the page as it is",
                eval(until),
                eval(pending)
            );
            break eval(html).as_str().unwrap_or_default().to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if let Some(shot) = shot {
        // For a person to look at: one that fails is reported, not failed.
        use base64::Engine;
        match browser.call("Page.captureScreenshot", serde_json::json!({ "format": "png" }), Some(&session)) {
            Ok(png) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(png["data"].as_str().unwrap_or_default());
                std::fs::write(shot, bytes.expect("base64 from Chromium")).unwrap();
            }
            Err(e) => println!("board: no screenshot of {url}: {e}"),
        }
    }
    println!("board: {url} read in {:.1} s", start.elapsed().as_secs_f64());
    dom
}

/// A headless Chromium with `--remote-debugging-pipe`: commands go to its fd 3, replies and
/// events come from its fd 4, each a JSON object ended by a NUL byte. Killed when dropped.
struct Devtools {
    child: Child,
    to: std::io::PipeWriter,
    from: std::sync::mpsc::Receiver<Value>,
    next: u64,
    stderr: std::path::PathBuf,
}

impl Devtools {
    fn launch(dir: &Path) -> Devtools {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (cmd_read, to) = std::io::pipe().unwrap();
        let (from_read, reply_write) = std::io::pipe().unwrap();
        let (a, b) = (cmd_read.as_raw_fd(), reply_write.as_raw_fd());
        let stderr = dir.join("stderr.txt");
        let mut c = Command::new("chromium");
        // /dev/shm is 64 MiB in many containers: keep that memory in /tmp. No background
        // requests to Google's servers (none can be reached here).
        c.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--remote-debugging-pipe"])
            .args(["--no-first-run", "--disable-background-networking", "--disable-component-update"])
            .arg("--window-size=1400,900")
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        // SAFETY: only async-signal-safe calls between fork and exec. The pipes' ends are
        // first copied above 10 (either may be fd 3 or 4 already, and dup2 onto itself
        // would keep close-on-exec), then onto 3 and 4, which dup2 makes inherited.
        unsafe {
            c.pre_exec(move || {
                let (a, b) = (libc::fcntl(a, libc::F_DUPFD_CLOEXEC, 10), libc::fcntl(b, libc::F_DUPFD_CLOEXEC, 10));
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().expect("chromium starts");
        drop((cmd_read, reply_write));
        let (tx, from) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(from_read);
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                buf.pop_if(|b| *b == 0);
                if tx.send(serde_json::from_slice(&buf).unwrap_or(Value::Null)).is_err() {
                    break;
                }
                buf.clear();
            }
        });
        Devtools { child, to, from, next: 0, stderr }
    }

    /// `method` with `params` (on the page of `session`): its result, or the error Chromium
    /// answered, or that it did not answer within 30 s.
    fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Result<Value, String> {
        self.next += 1;
        let mut msg = serde_json::json!({ "id": self.next, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        let sent = self.to.write_all(&bytes);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match (&sent, self.from.recv_timeout(left)) {
                (Ok(()), Ok(reply)) if reply["id"] == self.next => {
                    return match reply.get("error") {
                        Some(e) => Err(format!("chromium: {method}: {e}")),
                        None => Ok(reply["result"].clone()),
                    };
                }
                (Ok(()), Ok(_event)) => {}
                (_, _) => {
                    return Err(format!(
                        "chromium: no answer to {method} in 30 s ({sent:?}); it printed:\n{}",
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    ))
                }
            }
        }
    }
}

impl Drop for Devtools {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Held by each browser test: one Chromium at a time on two cores.
static BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The browser for test `name`: its turn, or `None` (the skip printed) without Chromium.
fn browser(name: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if Command::new("chromium").arg("--version").output().is_err() {
        crate::common::skip(name, "no chromium (apt-get install chromium)", "RUNNER_REQUIRE_CHROMIUM");
        return None;
    }
    Some(BROWSER.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The keys of the experiment's runs in the board's table.
fn run_keys(s: &Server, experiment: &str) -> Vec<String> {
    get_json(s, "/api/runs")["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["experiment"] == experiment)
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

/// The value of `name="..."` on the first `<body` of a dumped DOM.
fn body_attr(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let at = body.find(&format!("{name}=\""))? + name.len() + 2;
    Some(body[at..at + body[at..].find('"')?].to_string())
}

#[test]
fn in_a_browser_table_curves_live_updates_and_run_page() {
    let Some(_one) = browser("board::in_a_browser_table_curves_live_updates_and_run_page") else { return };
    let (d, mut live) = fixture();
    let mut s = start(d.path(), &[]);
    let profile = d.path().join("chromium-profile");
    // Screenshots of each view for a person to look at: target/board-screens/.
    let shots = crate::common::repo().join("target/board-screens");
    std::fs::create_dir_all(&shots).unwrap();
    let keys = run_keys(&s, "tiny");
    let base = format!("http://{}/", s.addr);

    // The table lists the four runs, the broken one with its error.
    let dom = chromium(&base, POLLED, Some(&shots.join("runs.png")), &profile);
    assert_eq!(dom.matches("<tr data-key=").count(), 4, "{dom}");
    assert!(dom.contains("not parquet") || dom.contains("run.parquet"), "the broken run's error shows");
    assert!(dom.contains(">completed<") && dom.contains(">running<"));

    // Two runs selected: two runs' curves, train and test each.
    let url = format!("{base}#sel={},{}&metric=accuracy", keys[0], keys[1]);
    let dom = chromium(&url, POLLED, Some(&shots.join("curves.png")), &profile);
    for k in &keys {
        for split in ["test", "train"] {
            let curve = format!("data-key=\"{k}\" data-split=\"{split}\"");
            assert_eq!(dom.matches(&curve).count(), 1, "{curve} in {dom}");
        }
    }
    assert_eq!(dom.matches("class=\"curve\"").count(), 4);
    // The learning rate, per optimizer step: one point per step of the run.
    let steps = |key: &str| {
        let m = get_json(&s, &format!("/api/metrics?run={}", enc(key)));
        (0..m["value"].as_array().unwrap().len()).filter(|&i| m["metric"][i] == "lr").count()
    };
    let dom = chromium(&format!("{base}#sel={}&metric=lr", keys[0]), POLLED, None, &profile);
    let points = dom.split("points=\"").nth(1).unwrap_or_default().split('"').next().unwrap_or_default();
    assert_eq!(points.split_whitespace().count(), steps(&keys[0]), "{dom}");
    assert!(steps(&keys[0]) > 2 && dom.contains(">step</text>"));

    // A running run: its curve gains a point when its table grows while the page is open.
    let live_key = run_keys(&s, "live").remove(0);
    // The table grows once the page has fetched the run's metrics (the server's log says
    // so); the page's later polls must draw the new point.
    let url = format!("{base}#sel={live_key}&metric=accuracy");
    let wanted = format!("GET /api/metrics?run={}", live_key.replace('/', "%2F"));
    let log = std::mem::replace(&mut s.log, std::sync::mpsc::channel().1);
    let grow = std::thread::spawn(move || {
        let seen = std::iter::from_fn(|| log.recv_timeout(std::time::Duration::from_secs(60)).ok())
            .any(|line| line.contains(&wanted));
        live.push(row(1, "test", "accuracy", 0.6));
        live.flush().unwrap();
        (live, seen)
    });
    // The page has polled, and its test curve (the checks below read it the same way) has
    // two points; 60 s at most, then the checks say what is missing.
    const LIVE_TWO_POINTS: &str = "Number(document.body.dataset.polls || 0) >= 1 && \
        (document.documentElement.outerHTML.split('data-split=\"test\"')[1] || '') \
        .split('points=\"')[1]?.split('\"')[0].trim().split(/\\s+/).length === 2";
    let dom = chromium(&url, LIVE_TWO_POINTS, None, &profile);
    let (live, seen) = grow.join().unwrap();
    chromium(&url, POLLED, Some(&shots.join("live.png")), &profile);
    assert!(seen, "the page fetched the live run's metrics");
    let polls: u32 = body_attr(&dom, "data-polls").unwrap_or_default().parse().unwrap_or(0);
    assert!(polls >= 1, "the page polled: {dom}");
    let test_curve = dom.split("data-split=\"test\"").nth(1).unwrap_or_default();
    let points = test_curve.split("points=\"").nth(1).unwrap_or_default().split('"').next().unwrap_or_default();
    assert_eq!(points.split_whitespace().count(), 2, "the test curve gained its second point: {points:?}");

    // A run's page: its config, its plots.
    let url = format!("{base}#run={}", keys[0]);
    let dom = chromium(&url, POLLED, Some(&shots.join("run.png")), &profile);
    assert!(dom.contains("id=\"config\""), "config.toml shown");
    assert!(dom.contains("name=plots%2F") || dom.contains("name=plots/"), "plots shown: {dom}");
    drop(live);
}

/// A detection run and a segmentation run of the shapes experiments (one epoch on a 64 px
/// set of 24 training and 8 test images in `shapes/`): their run folders.
fn vision_runs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let args = ["data", "synth", "shapes", "--out", "shapes", "--train", "24", "--test", "8", "--size", "64"];
    let out = runner(dir, &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let exp = |name: &str| crate::common::repo().join("experiments").join(name).display().to_string();
    let run = |name: &str, sets: &[&str]| {
        let mut args = vec![exp(name)];
        for s in ["data.root=shapes", "data.batch_size=8", "train.epochs=1"].iter().chain(sets) {
            args.extend(["--set".to_string(), s.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = runner(dir, &args);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        crate::common::run_folder(dir, &out)
    };
    let detect = run("yolo_shapes.toml", &["metrics.test=[\"loss\", \"map50\", \"ap50\", \"map\", \"map75\"]"]);
    let segment = run(
        "fcn_shapes.toml",
        &[
            "model.input=[3, 64, 64]",
            "augment.train=[{ hflip = { p = 0.5 } }, { resize = { size = [64, 64] } }]",
            "augment.test=[{ resize = { size = [64, 64] } }]",
        ],
    );
    (detect, segment)
}

/// The key the board gives the run folder `run` under `runs/`.
fn key_of(runs: &Path, run: &Path) -> String {
    format!("0/{}", run.strip_prefix(runs).unwrap().display())
}

/// A parquet table's column of text or numbers, read with arrow.
fn col<A: arrow_array::Array + Clone + 'static>(path: &Path, name: &str) -> Vec<A> {
    runner::runlog::read_parquet(path)
        .unwrap()
        .iter()
        .map(|b| b.column_by_name(name).unwrap().as_any().downcast_ref::<A>().unwrap().clone())
        .collect()
}

/// The final epoch's per-class values of `split.metric` in a run's metrics.parquet.
fn per_class(run: &Path, split: &str, metric: &str) -> BTreeMap<String, f64> {
    let log = RunLog::open(run, None).unwrap();
    let last = log.metrics().iter().map(|r| r.epoch).max().unwrap();
    log.metrics()
        .iter()
        .filter(|r| r.epoch == last && r.split == split && r.metric == metric)
        .filter_map(|r| Some((r.class.clone()?, r.value)))
        .collect()
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap();
    (img.width(), img.height())
}

#[test]
fn predictions_images_and_masks_of_each_task() {
    let (d, live) = fixture();
    drop(live);
    let (detect, segment) = vision_runs(d.path());
    let runs = d.path().join("runs");
    let before = snapshot(&runs);
    let s = start(d.path(), &[]);

    // Classification: every test sample's label and prediction, as predictions.parquet;
    // their agreement is the logged accuracy; the top class is the prediction; ROC curves.
    let key = run_keys(&s, "tiny").remove(0);
    let dir = runs.join(key.strip_prefix("0/").unwrap());
    let p = get_json(&s, &format!("/api/predictions?run={}", enc(&key)));
    assert_eq!(p["task"], "classify");
    let ints = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>();
    let (label, pred) = (ints(&p["label"]), ints(&p["pred"]));
    assert_eq!(label.len(), 100, "the toy set's 100 test images");
    let table = dir.join("predictions.parquet");
    let want: Vec<i64> = col::<arrow_array::Int32Array>(&table, "label")
        .iter()
        .flat_map(|a| a.values().to_vec())
        .map(i64::from)
        .collect();
    assert_eq!(label, want);
    let right = label.iter().zip(&pred).filter(|(l, p)| l == p).count() as f64;
    let finals = RunLog::open(&dir, None).unwrap();
    let last = finals.metrics().iter().rfind(|r| r.split == "test" && r.metric == "accuracy").unwrap().value;
    assert!((right / 100.0 - last).abs() < 1e-9, "{right} right of 100, logged accuracy {last}");
    for (i, top) in p["top"].as_array().unwrap().iter().enumerate() {
        assert_eq!(top[0].as_f64().unwrap() as i64, pred[i], "sample {i}: top class is the prediction");
    }
    assert_eq!(p["roc"].as_object().unwrap().len(), 10, "one ROC curve per class");
    assert_eq!(p["classes"].as_array().unwrap().len(), 10);
    // Its images: the IDX file's test sample 3, as a PNG.
    let (status, ctype, body) = get(&s, &format!("/api/image?run={}&sample=3", enc(&key)));
    assert_eq!((status, ctype.as_str()), (200, "image/png"));
    let img = image::load_from_memory(&body).unwrap().to_luma8();
    let mut idx = Vec::new();
    let gz = std::fs::File::open(d.path().join("data/toy/t10k-images-idx3-ubyte.gz")).unwrap();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut idx).unwrap();
    assert_eq!(img.dimensions(), (28, 28));
    assert_eq!(img.as_raw()[..], idx[16 + 3 * 784..16 + 4 * 784]);
    for bad in ["sample=100", "sample=-1", "sample=x"] {
        let (status, _, _) = get(&s, &format!("/api/image?run={}&{bad}", enc(&key)));
        assert!([400, 404].contains(&status), "{bad}: {status}");
    }

    // Detection: the 8 test images on one page, each with its XML's objects and its rows
    // of detections.parquet; the image is the JPEG file; the PR table's APs are the logged
    // per-class AP. The run's task says which table to read, not which file is there: a
    // classification table copied into the detection run (by hand) changes nothing.
    std::fs::copy(dir.join("predictions.parquet"), detect.join("predictions.parquet")).unwrap();
    let key = key_of(&runs, &detect);
    let p = get_json(&s, &format!("/api/predictions?run={}", enc(&key)));
    assert_eq!((p["task"].as_str(), p["total"].as_u64(), p["images"].as_bool()), (Some("detect"), Some(8), Some(true)));
    std::fs::remove_file(detect.join("predictions.parquet")).unwrap();
    let pages = p["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 8);
    let samples: Vec<i64> = col::<arrow_array::Int64Array>(&detect.join("detections.parquet"), "sample")
        .iter()
        .flat_map(|a| a.values().to_vec())
        .collect();
    let voc = d.path().join("shapes/VOCdevkit/VOC2007");
    for (i, page) in pages.iter().enumerate() {
        let image = page["image"].as_str().unwrap();
        let xml = std::fs::read_to_string(voc.join(format!("Annotations/{image}.xml"))).unwrap();
        assert_eq!(page["truth"].as_array().unwrap().len(), xml.matches("<object>").count(), "{image}");
        let rows = samples.iter().filter(|&&x| x == i as i64).count();
        assert_eq!(page["boxes"].as_array().unwrap().len(), rows, "{image}: its detections");
        let (status, ctype, body) = get(&s, &format!("/api/image?run={}&sample={i}", enc(&key)));
        assert_eq!((status, ctype.as_str()), (200, "image/jpeg"));
        assert_eq!(body, std::fs::read(voc.join(format!("JPEGImages/{image}.jpg"))).unwrap());
    }
    let ap = per_class(&detect, "test", "ap50");
    let pr = p["pr"].as_object().unwrap();
    assert!(!pr.is_empty());
    for (class, curve) in pr {
        assert!((curve["ap"].as_f64().unwrap() - ap[class]).abs() < 1e-9, "{class}: {curve} vs {}", ap[class]);
        assert_eq!(curve["precision"].as_array().unwrap().len(), curve["recall"].as_array().unwrap().len());
    }
    // The latest epoch's mAPs, VOC's and COCO's (on VOC data, by COCO's rules), as logged.
    let logged = RunLog::open(&detect, None).unwrap();
    let maps: BTreeMap<String, f64> = p["maps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m[0].as_str().unwrap().to_string(), m[1].as_f64().unwrap_or(f64::NAN)))
        .collect();
    assert_eq!(maps.keys().collect::<Vec<_>>(), ["map", "map50", "map75"]);
    for (name, v) in &maps {
        let want = logged.metrics().iter().rfind(|r| r.split == "test" && &r.metric == name).unwrap().value;
        assert!(v == &want || (v.is_nan() && want.is_nan()), "{name}: {v} vs {want}");
    }
    // A page past the first.
    let p2 = get_json(&s, &format!("/api/predictions?run={}&from=6", enc(&key)));
    assert_eq!(p2["pages"].as_array().unwrap().len(), 2);

    // Segmentation: the pixel confusion matrix equals the run's confusion table; its trace
    // over its sum is the logged pixel accuracy; the run kept its 8 test images' predicted
    // masks at the images' size, served with their background transparent, as is the true
    // mask.
    let key = key_of(&runs, &segment);
    let p = get_json(&s, &format!("/api/predictions?run={}", enc(&key)));
    assert_eq!((p["task"].as_str(), p["total"].as_u64(), p["masked"].as_u64()), (Some("segment"), Some(8), Some(8)));
    let m: Vec<Vec<u64>> = serde_json::from_value(p["confusion"].clone()).unwrap();
    let table = segment.join("confusion_matrix_test.parquet");
    let counts: Vec<i64> =
        col::<arrow_array::Int64Array>(&table, "count").iter().flat_map(|a| a.values().to_vec()).collect();
    assert_eq!(m.iter().flatten().map(|&v| v as i64).collect::<Vec<_>>(), counts);
    let trace: u64 = (0..m.len()).map(|i| m[i][i]).sum();
    let all: u64 = m.iter().flatten().sum();
    let log = RunLog::open(&segment, None).unwrap();
    let acc = log.metrics().iter().rfind(|r| r.split == "test" && r.metric == "pixel_accuracy").unwrap().value;
    assert!((trace as f64 / all as f64 - acc).abs() < 1e-9);
    for page in p["pages"].as_array().unwrap() {
        let (i, image) = (page["sample"].as_u64().unwrap(), page["image"].as_str().unwrap());
        let mask = page["mask"].as_str().unwrap();
        assert_eq!(mask, format!("masks/{image}.png"));
        let (status, ctype, body) = get(&s, &format!("/api/overlay?run={}&name={mask}", enc(&key)));
        assert_eq!((status, ctype.as_str()), (200, "image/png"));
        assert_eq!(png_size(&body), (64, 64));
        assert!(body.windows(4).any(|w| w == b"tRNS"), "the background is transparent");
        let (status, _, truth) = get(&s, &format!("/api/overlay?run={}&sample={i}", enc(&key)));
        assert_eq!(status, 200);
        assert!(truth.windows(4).any(|w| w == b"tRNS"));
        // The true mask with its palette and values: the dataset's file, plus tRNS.
        let file = std::fs::read(voc.join(format!("SegmentationClass/{image}.png"))).unwrap();
        let decode = |b: &[u8]| {
            let mut r = png::Decoder::new(std::io::Cursor::new(b)).read_info().unwrap();
            let mut buf = vec![0; r.output_buffer_size().unwrap()];
            r.next_frame(&mut buf).unwrap();
            (buf, r.info().palette.as_ref().map(|p| p.to_vec()))
        };
        assert_eq!(decode(&truth), decode(&file));
    }
    // Overlays are masks only: no other file of the run, nothing outside it.
    for name in ["config.toml", "../config.toml", "masks/../config.toml", "plots/masks.png"] {
        let (status, _, _) = get(&s, &format!("/api/overlay?run={}&name={name}", enc(&key)));
        assert!([403, 404].contains(&status), "{name}: {status}");
    }

    // The board wrote nothing.
    assert_eq!(snapshot(&runs), before);

    // Pages past the end, or not numbers, are empty pages or the first; never a failure.
    for (run, from, want) in [
        (&detect, "18446744073709551615", 0),
        (&detect, "99", 0),
        (&detect, "-1", 8),
        (&detect, "x", 8),
        (&segment, "18446744073709551615", 0),
    ] {
        let p = get_json(&s, &format!("/api/predictions?run={}&from={from}", enc(&key_of(&runs, run))));
        assert_eq!(p["pages"].as_array().unwrap().len(), want, "from={from}");
    }

    // Where the dataset is not on disk (the board started elsewhere, `data.root` being
    // relative), the predictions come without images, saying why.
    let elsewhere = tempfile::tempdir().unwrap();
    let far = start(elsewhere.path(), &[runs.to_str().unwrap()]);
    let p = get_json(&far, &format!("/api/predictions?run={}", enc(&key_of(&runs, &detect))));
    assert_eq!(p["images"], false);
    assert!(p["images_error"].as_str().unwrap().contains("not on disk"), "{p}");
    assert_eq!(p["pages"].as_array().unwrap().len(), 8, "the detections still show");
    let (status, _, body) = get(&far, &format!("/api/image?run={}&sample=0", enc(&key_of(&runs, &detect))));
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("not on disk"));

    // A run's broken table is that run's error; one whose config does not load still shows
    // its predictions, without images, saying why.
    std::fs::write(detect.join("detections.parquet"), b"not parquet").unwrap();
    let (status, _, body) = get(&s, &format!("/api/predictions?run={}", enc(&key_of(&runs, &detect))));
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&body).contains(&key_of(&runs, &detect)));
    runner::runlog::Table::new("x", 1)
        .col("sample", arrow_array::Int64Array::from(vec![0i64]))
        .write(&detect.join("detections.parquet"))
        .unwrap();
    let (status, _, body) = get(&s, &format!("/api/predictions?run={}", enc(&key_of(&runs, &detect))));
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&body).contains("no column `score`"), "{}", String::from_utf8_lossy(&body));
    let other = run_keys(&s, "tiny").remove(1);
    std::fs::write(runs.join(other.strip_prefix("0/").unwrap()).join("config.toml"), "[data\n").unwrap();
    let p = get_json(&s, &format!("/api/predictions?run={}", enc(&other)));
    assert_eq!((p["task"].as_str(), p["images"].as_bool()), (Some("classify"), Some(false)));
    assert_eq!(p["label"].as_array().unwrap().len(), 100);
    assert!(p["images_error"].as_str().unwrap().contains("config.toml"), "{p}");
    assert_eq!(get_json(&s, "/api/runs")["runs"].as_array().unwrap().len(), 6);
}

#[test]
fn in_a_browser_predictions_and_sweep() {
    let Some(_one) = browser("board::in_a_browser_predictions_and_sweep") else { return };
    let (d, live) = fixture();
    drop(live);
    let (detect, segment) = vision_runs(d.path());
    let runs = d.path().join("runs");
    let s = start(d.path(), &[]);
    let profile = d.path().join("chromium-profile");
    let shots = crate::common::repo().join("target/board-screens");
    std::fs::create_dir_all(&shots).unwrap();
    let base = format!("http://{}/", s.addr);

    // The sweep's two points against their learning rate.
    let dom = chromium(&base, POLLED, Some(&shots.join("sweep.png")), &profile);
    assert_eq!(dom.matches("class=\"sweep-point\"").count(), 2, "{dom}");
    assert!(dom.contains("train.optimizer.sgd.lr (log scale)"));

    // A classification run: its confusion matrix (10 x 10 cells), ROC curves per class,
    // its mistakes with their images and top five.
    let key = run_keys(&s, "tiny").remove(0);
    let p = get_json(&s, &format!("/api/predictions?run={}", enc(&key)));
    let wrong = (0..100).filter(|&i| p["label"][i] != p["pred"][i]).count();
    let dom = chromium(&format!("{base}#run={key}"), POLLED, Some(&shots.join("classify.png")), &profile);
    assert_eq!(dom.matches("data-cell=").count(), 100, "{dom}");
    assert_eq!(dom.matches("<polyline class=\"curve\" data-class=").count(), 10);
    // The mistakes, or where there are none every image; at most 48.
    let listed = if wrong > 0 { format!("mistakes: {wrong} images") } else { "no mistakes: all 100 images".into() };
    assert!(dom.contains(&listed), "{listed}: {dom}");
    let n = if wrong > 0 { wrong.min(48) } else { 48 };
    assert_eq!(dom.matches("class=\"sample cls\"").count(), n);
    assert_eq!(dom.matches("<img src=\"/api/image?run=").count(), n);

    // A detection run's page shows boxes: every true box and every detection of the first
    // page's images, those under the score slider hidden.
    let key = key_of(&runs, &detect);
    let p = get_json(&s, &format!("/api/predictions?run={}", enc(&key)));
    let count =
        |field: &str| p["pages"].as_array().unwrap().iter().map(|i| i[field].as_array().unwrap().len()).sum::<usize>();
    let dom = chromium(&format!("{base}#run={key}"), POLLED, Some(&shots.join("detect.png")), &profile);
    assert_eq!(dom.matches("<rect class=\"truth\"").count(), count("truth"), "{dom}");
    assert_eq!(dom.matches("<rect class=\"pred\"").count(), count("boxes"));
    assert!(count("boxes") > 0 && count("truth") > 0);
    let shown = p["pages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["boxes"].as_array().unwrap().iter())
        .filter(|b| b["score"].as_f64().unwrap() >= 0.25)
        .count();
    assert!(dom.contains(&format!("id=\"shown\">{shown} boxes shown<")), "{shown} boxes at score 0.25: {dom}");
    assert_eq!(dom.matches("<img src=\"/api/image?run=").count(), 8, "the 8 test images");

    // A segmentation run's page: the pixel confusion matrix and the predicted masks over
    // the 8 test images.
    let key = key_of(&runs, &segment);
    let dom = chromium(&format!("{base}#run={key}"), POLLED, Some(&shots.join("segment.png")), &profile);
    assert_eq!(dom.matches("class=\"mask\"").count(), 8, "{dom}");
    assert!(dom.contains("pixel confusion matrix"));
}
