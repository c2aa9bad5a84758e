//! Headless Chromium driven over the DevTools protocol: JSON commands over a WebSocket
//! (`tungstenite`), the page target found through the DevTools HTTP endpoint (`reqwest`).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use shoal_testing::wait;
use tungstenite::{Message, WebSocket};

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
    ws: WebSocket<TcpStream>,
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
    /// Starts headless Chromium; `None` when it is not installed (the test is then skipped, a
    /// failure under `CI=true`).
    pub fn start(test: &str) -> Option<Browser> {
        let Some(bin) = find_chromium() else {
            shoal_testing::skip::skip(
                "Chromium",
                &format!("{test}: not installed (apt-get install chromium)"),
            );
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
        let page_ws = wait::until(Duration::from_secs(20), "a page target in chromium", || {
            devtools_targets(&hostport).as_array().and_then(|t| {
                t.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_string)
            })
        });
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
        let command = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(command.to_string()))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        loop {
            // tungstenite joins continuation frames and answers pings itself.
            let msg: Value = match self.ws.read().unwrap_or_else(|e| panic!("{method}: {e}")) {
                Message::Text(text) => serde_json::from_str(&text).unwrap(),
                Message::Binary(bytes) => serde_json::from_slice(&bytes).unwrap(),
                Message::Close(_) => panic!("chromium closed the DevTools connection"),
                _ => continue,
            };
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
        wait::until(Duration::from_secs(30), js, || {
            let v = self.call(
                "Runtime.evaluate",
                json!({ "expression": js, "returnByValue": true }),
            );
            (v["result"]["value"] == json!(true)).then_some(())
        });
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
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("screenshot is base64");
        std::fs::write(path, png).unwrap();
    }
}

/// The DevTools targets (`/json/list`), or `null` while the endpoint does not answer.
fn devtools_targets(hostport: &str) -> Value {
    super::http_client()
        .get(format!("http://{hostport}/json/list"))
        .timeout(Duration::from_secs(10))
        .send()
        .and_then(|r| r.json())
        .unwrap_or(Value::Null)
}

/// The DevTools WebSocket of a page target (`ws://host:port/devtools/page/...`).
fn ws_connect(url: &str) -> WebSocket<TcpStream> {
    let hostport = url.trim_start_matches("ws://").split('/').next().unwrap();
    let stream = TcpStream::connect(hostport).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (ws, _) =
        tungstenite::client(url, stream).unwrap_or_else(|e| panic!("websocket refused: {e}"));
    ws
}
