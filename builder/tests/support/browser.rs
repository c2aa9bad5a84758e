//! Headless Chromium driven over the DevTools protocol (a WebSocket with JSON messages), with a
//! minimal WebSocket client so the tests need no browser-automation crate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The Chromium binary, if one is installed (`CHROMIUM` overrides).
pub fn find_chromium() -> Option<String> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(p);
    }
    // Debian's /usr/bin/chromium is a wrapper script; run the browser itself.
    if std::path::Path::new("/usr/lib/chromium/chromium").exists() {
        return Some("/usr/lib/chromium/chromium".into());
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new("which")
                .arg(b)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_string)
}

pub struct Browser {
    child: Child,
    ws: TcpStream,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium runs in its own process group: end the browser and all its helpers. The `--`
        // matters: procps-ng's kill reads `-KILL -1234` as signal options and ends up signalling
        // group -1 (every process) when the pid starts with 1.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts headless Chromium; `None` (with the reason printed) when it is not installed.
    pub fn start(test: &str) -> Option<Browser> {
        let Some(bin) = find_chromium() else {
            eprintln!("skipping {test}: chromium is not installed (apt-get install chromium)");
            return None;
        };
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let browser_ws = loop {
            let line = lines
                .next()
                .expect("chromium exited before it listened")
                .unwrap();
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let hostport = browser_ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        // The page target that about:blank opened.
        let deadline = Instant::now() + Duration::from_secs(20);
        let page_ws = loop {
            let targets: Value =
                serde_json::from_slice(&get(&hostport, "/json/list")).unwrap_or(Value::Null);
            if let Some(url) = targets.as_array().and_then(|t| {
                t.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            }) {
                break url.to_string();
            }
            assert!(Instant::now() < deadline, "no page target in chromium");
            std::thread::sleep(Duration::from_millis(100));
        };
        let ws = ws_connect(&page_ws);
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        Some(b)
    }

    /// One DevTools command; panics on a protocol error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        ws_send(
            &mut self.ws,
            json!({ "id": id, "method": method, "params": params })
                .to_string()
                .as_bytes(),
        );
        loop {
            let msg: Value = serde_json::from_slice(&ws_recv(&mut self.ws)).unwrap();
            if msg["id"] == id {
                if let Some(e) = msg.get("error") {
                    panic!("{method}: {e}");
                }
                return msg["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `js` is truthy.
    pub fn wait_until(&mut self, js: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.call(
                "Runtime.evaluate",
                json!({ "expression": js, "returnByValue": true }),
            );
            if v["result"]["value"] == json!(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {js}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the current page to be loaded with its script run.
    pub fn wait_loaded(&mut self) {
        self.wait_until(
            "document.readyState === 'complete' && !!document.getElementById('token-state') && document.getElementById('token-state').textContent !== ''",
        );
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_until(&format!(
            "location.href === {} && document.readyState === 'complete'",
            json!(url)
        ));
        self.wait_loaded();
    }

    /// Runs `js`, which navigates, and waits for the new page (a marker set on the old
    /// document is gone).
    pub fn navigating(&mut self, js: &str) {
        self.eval("window.__old_page = true");
        self.eval(js);
        self.wait_until("window.__old_page === undefined && document.readyState === 'complete'");
        self.wait_loaded();
    }

    /// A PNG screenshot of the whole page.
    pub fn screenshot(&mut self, path: &std::path::Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let b64 = r["data"].as_str().expect("screenshot data");
        std::fs::write(path, base64_decode(b64)).unwrap();
    }
}

/// `GET path` over HTTP/1.1 (Chromium's DevTools server does not answer HTTP/1.0); the body.
fn get(hostport: &str, path: &str) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(hostport) else {
        return Vec::new();
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return Vec::new();
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    // Chromium keeps the connection open: read the head, then Content-Length bytes.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read_exact(&mut byte).is_err() {
            return Vec::new();
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if s.read_exact(&mut body).is_err() {
        return Vec::new();
    }
    body
}

fn ws_connect(url: &str) -> TcpStream {
    let rest = url.trim_start_matches("ws://");
    let (hostport, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(hostport).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvYWwtdGVzdC1rZXkxMg==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "websocket refused: {head}"
    );
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn ws_send_frame(s: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let mut f = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = [0x5a, 0x13, 0xc4, 0x7e];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
}

fn ws_send(s: &mut TcpStream, text: &[u8]) {
    ws_send_frame(s, 1, text);
}

/// One whole message (continuations joined; pings answered).
fn ws_recv(s: &mut TcpStream) -> Vec<u8> {
    let mut message = Vec::new();
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut mask = [0u8; 4];
        if h[1] & 0x80 != 0 {
            s.read_exact(&mut mask).unwrap();
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).unwrap();
        if h[1] & 0x80 != 0 {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match opcode {
            9 => ws_send_frame(s, 10, &payload),
            8 => panic!("chromium closed the DevTools connection"),
            10 => {}
            _ => {
                message.extend_from_slice(&payload);
                if fin {
                    return message;
                }
            }
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64"),
        }
    };
    let s: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}
