//! # The operator CLI
//!
//! `shoal-builder releases list|show|logs`, `shoal-builder rollout status|pause|resume|abort|promote`
//! and `shoal-builder devices list` talk to a running builder over its JSON API (`--url`, or
//! `SHOAL_URL`; the token from `--token` or `SHOAL_TOKEN`). Each prints a table for people or,
//! with `--json`, the API's JSON. The client ([`Client`]) is reqwest's blocking client: the
//! builder listens on plain HTTP (put TLS in front of it when it leaves the host).

use std::io::{Read, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::operator::views::{format_time, url_encode};

/// Why a CLI request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT`.
    #[error("unsupported builder URL {0:?}: use http://HOST:PORT")]
    Url(String),
    /// Network: the request, or reading the answer.
    #[error("cannot reach the builder at {url}: {source}")]
    Request {
        /// The URL.
        url: String,
        /// The failure.
        source: reqwest::Error,
    },
    /// The connection failed while a streamed answer was being read.
    #[error("reading the answer of the builder at {url}: {source}")]
    Body {
        /// The URL.
        url: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The builder answered with an error.
    #[error("{status}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The answer is not what the API sends.
    #[error("unexpected answer from the builder: {0}")]
    Protocol(String),
    /// A choice the user must make.
    #[error("{0}")]
    Usage(String),
}

/// Where the builder is.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The builder's URL.
    #[arg(long, env = "SHOAL_URL", default_value = "http://127.0.0.1:7480")]
    pub url: String,
    /// A push or operator token (operator actions need an operator token).
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `shoal-builder releases ...`
#[derive(Debug, Subcommand)]
pub enum ReleasesCommand {
    /// List a fleet's releases, newest first.
    List {
        /// The fleet (default: the only one).
        #[arg(long)]
        fleet: Option<String>,
        /// Only this status (success, failed, running, ...).
        #[arg(long)]
        status: Option<String>,
        /// Only commits starting with this hex prefix.
        #[arg(long)]
        commit: Option<String>,
        /// Free text (ref, services, error, compose file).
        #[arg(long)]
        text: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// One release with its rollout progress.
    Show {
        /// Release id.
        id: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// A release's build log (followed while it builds).
    Logs {
        /// Release id.
        id: i64,
        /// Print what there is and return, even while it builds.
        #[arg(long)]
        no_follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `shoal-builder devices ...`
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List a fleet's devices.
    List {
        /// The fleet (default: the only one).
        #[arg(long)]
        fleet: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `shoal-builder rollout ...`: the fleet's current rollout.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show its progress.
    Status(RolloutArgs),
    /// Pause it: no further device activates the release until resumed.
    Pause(RolloutArgs),
    /// Resume a paused rollout.
    Resume(RolloutArgs),
    /// Open the next wave now, whatever the reports say.
    Promote(RolloutArgs),
    /// Halt the release and roll back to the previous release's content as a new sequence.
    Abort(RolloutArgs),
}

/// Which fleet's rollout.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// The fleet (default: the only one).
    #[arg(long)]
    pub fleet: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

/// A blocking client of the builder's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    http: reqwest::blocking::Client,
    token: Option<String>,
}

impl Client {
    /// A client of the builder at `url` (`http://HOST:PORT`).
    pub fn new(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let base = url::Url::parse(url)
            .ok()
            .filter(|u| u.scheme() == "http" && u.host_str().is_some() && u.path() == "/")
            .filter(|u| u.query().is_none() && u.fragment().is_none())
            .ok_or_else(|| ClientError::Url(url.to_string()))?;
        // reqwest is built without a rustls provider: ring, as everywhere in Shoal.
        shoal_node::daemon::quic::install_crypto_provider();
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|source| ClientError::Request {
                url: url.to_string(),
                source,
            })?;
        Ok(Client { base, http, token })
    }

    fn unreachable(&self) -> impl Fn(reqwest::Error) -> ClientError + '_ {
        |source| ClientError::Request {
            url: self.base.to_string(),
            source,
        }
    }

    /// Sends a request; returns the answer, whatever its status.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::blocking::Response, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let url = self
            .base
            .join(path)
            .map_err(|e| ClientError::Usage(format!("{path}: {e}")))?;
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.send().map_err(self.unreachable())
    }

    /// The error an unsuccessful answer carries.
    fn error(&self, resp: reqwest::blocking::Response) -> ClientError {
        let status = resp.status().as_u16();
        let v: Value = resp.json().unwrap_or(Value::Null);
        ClientError::Http {
            status,
            message: v["error"].as_str().unwrap_or("error").to_string(),
        }
    }

    /// A JSON request; an error answer becomes [`ClientError::Http`].
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let resp = self.send(method, path, body)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().map_err(self.unreachable())?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&bytes)))
        })?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Http {
                status,
                message: v["error"].as_str().unwrap_or("error").to_string(),
            });
        }
        Ok(v)
    }

    /// Copies a text answer to `out` as it arrives.
    pub fn stream(&self, path: &str, out: &mut impl Write) -> Result<(), ClientError> {
        let mut resp = self.send("GET", path, None)?;
        if !resp.status().is_success() {
            return Err(self.error(resp));
        }
        let mut buf = [0u8; 8192];
        loop {
            let n = resp.read(&mut buf).map_err(|source| ClientError::Body {
                url: self.base.to_string(),
                source,
            })?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n]).map_err(out_err)?;
            out.flush().map_err(out_err)?;
        }
    }

    /// `fleet`, or the builder's only fleet.
    pub fn fleet(&self, fleet: Option<String>) -> Result<String, ClientError> {
        if let Some(f) = fleet {
            return Ok(f);
        }
        let v = self.json("GET", "/api/v1/fleets", None)?;
        let fleets: Vec<String> = v["fleets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        match fleets.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ClientError::Usage("the builder has no fleets".into())),
            many => Err(ClientError::Usage(format!(
                "the builder has several fleets ({}); choose one with --fleet",
                many.join(", ")
            ))),
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn t(v: &Value) -> String {
    v.as_i64().map(format_time).unwrap_or_else(|| "-".into())
}

/// Prints rows as aligned columns.
fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        l
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for r in rows {
        writeln!(out, "{}", line(r.clone()))?;
    }
    Ok(())
}

fn print_json(out: &mut impl Write, v: &Value) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    writeln!(out, "{text}").map_err(|e| ClientError::Protocol(e.to_string()))
}

fn out_err(e: std::io::Error) -> ClientError {
    ClientError::Protocol(format!("write output: {e}"))
}

/// Runs a `releases` command, printing to `out`.
pub fn releases(cmd: ReleasesCommand, out: &mut impl Write) -> Result<(), ClientError> {
    match cmd {
        ReleasesCommand::List {
            fleet,
            status,
            commit,
            text,
            limit,
            remote,
        } => {
            let c = Client::new(&remote.url, remote.token)?;
            let fleet = c.fleet(fleet)?;
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [("status", status), ("commit", commit), ("text", text)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", url_encode(&v)));
                }
            }
            let v = c.json(
                "GET",
                &format!(
                    "/api/v1/fleets/{}/releases?{}",
                    url_encode(&fleet),
                    q.join("&")
                ),
                None,
            )?;
            if remote.json {
                return print_json(out, &v);
            }
            let rows: Vec<Vec<String>> = v["releases"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    vec![
                        s(&r["id"]),
                        s(&r["sequence"]),
                        s(&r["status"]),
                        s(&r["commit"]).chars().take(10).collect(),
                        t(&r["created"]),
                        t(&r["completed"]),
                        r["duration_ms"]
                            .as_i64()
                            .map(crate::http::dashboard::duration)
                            .unwrap_or_else(|| "-".into()),
                        s(&r["device_count"]),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "ID",
                    "SEQ",
                    "STATUS",
                    "COMMIT",
                    "CREATED",
                    "COMPLETED",
                    "DURATION",
                    "DEVICES",
                ],
                &rows,
            )
            .map_err(out_err)
        }
        ReleasesCommand::Show { id, remote } => {
            let c = Client::new(&remote.url, remote.token)?;
            let r = c.json("GET", &format!("/api/v1/releases/{id}"), None)?;
            let p = c.json("GET", &format!("/api/v1/releases/{id}/devices"), None)?;
            if remote.json {
                return print_json(out, &serde_json::json!({ "release": r, "progress": p }));
            }
            let mut fields = vec![
                ("release", s(&r["id"])),
                ("fleet", s(&r["fleet"])),
                ("sequence", s(&r["sequence"])),
                ("status", s(&r["status"])),
                ("commit", s(&r["commit"])),
                ("created", t(&r["created"])),
                ("completed", t(&r["completed"])),
            ];
            if !r["error"].is_null() {
                fields.push(("error", s(&r["error"])));
            }
            for (k, v) in fields {
                writeln!(out, "{k:<12}{v}").map_err(out_err)?;
            }
            writeln!(out).map_err(out_err)?;
            let waves: Vec<Vec<String>> = p["waves"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    [
                        "wave", "percent", "devices", "reported", "healthy", "failed",
                    ]
                    .iter()
                    .map(|k| s(&w[*k]))
                    .collect()
                })
                .collect();
            table(
                out,
                &[
                    "WAVE", "PERCENT", "DEVICES", "REPORTED", "HEALTHY", "FAILED",
                ],
                &waves,
            )
            .map_err(out_err)
        }
        ReleasesCommand::Logs {
            id,
            no_follow,
            remote,
        } => {
            let c = Client::new(&remote.url, remote.token)?;
            let follow = if no_follow { "false" } else { "true" };
            c.stream(&format!("/api/v1/releases/{id}/logs?follow={follow}"), out)
        }
    }
}

/// Runs a `devices` command, printing to `out`.
pub fn devices(cmd: DevicesCommand, out: &mut impl Write) -> Result<(), ClientError> {
    let DevicesCommand::List { fleet, remote } = cmd;
    let c = Client::new(&remote.url, remote.token)?;
    let fleet = c.fleet(fleet)?;
    let v = c.json(
        "GET",
        &format!("/api/v1/fleets/{}/devices", url_encode(&fleet)),
        None,
    )?;
    if remote.json {
        return print_json(out, &v);
    }
    let rows: Vec<Vec<String>> = v["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                s(&d["name"]),
                s(&d["id"]).chars().take(8).collect(),
                s(&d["site"]),
                s(&d["state"]),
                s(&d["current_sequence"]),
                s(&d["target_sequence"]),
                s(&d["pinned_sequence"]),
                t(&d["last_seen"]),
            ]
        })
        .collect();
    table(
        out,
        &[
            "NAME",
            "ID",
            "SITE",
            "STATE",
            "CURRENT",
            "TARGET",
            "PINNED",
            "LAST SEEN",
        ],
        &rows,
    )
    .map_err(out_err)
}

/// Runs a `rollout` command, printing to `out`.
pub fn rollout(cmd: RolloutCommand, out: &mut impl Write) -> Result<(), ClientError> {
    let (verb, args) = match cmd {
        RolloutCommand::Status(a) => (None, a),
        RolloutCommand::Pause(a) => (Some("pause"), a),
        RolloutCommand::Resume(a) => (Some("resume"), a),
        RolloutCommand::Promote(a) => (Some("promote"), a),
        RolloutCommand::Abort(a) => (Some("abort"), a),
    };
    let c = Client::new(&args.remote.url, args.remote.token)?;
    let fleet = url_encode(&c.fleet(args.fleet)?);
    let p = match verb {
        None => c.json("GET", &format!("/api/v1/fleets/{fleet}/rollout"), None)?,
        Some(v) => c.json(
            "POST",
            &format!("/api/v1/fleets/{fleet}/rollout/{v}"),
            Some(&serde_json::json!({})),
        )?,
    };
    if args.remote.json {
        return print_json(out, &p);
    }
    let mut head = format!(
        "release {} of {}: {}, wave {} open",
        s(&p["sequence"]),
        s(&p["fleet"]),
        s(&p["state"]),
        s(&p["open_wave"])
    );
    if let Some(r) = p["pause_reason"].as_str() {
        head.push_str(&format!(" ({r})"));
    }
    if p["state"] == "held" {
        head = format!(
            "release {} of {}: held (the fleet is pinned to another release; no wave opens)",
            s(&p["sequence"]),
            s(&p["fleet"])
        );
    }
    if let Some(n) = p["held_devices"]
        .as_array()
        .map(Vec::len)
        .filter(|n| *n > 0)
    {
        head.push_str(&format!(", {n} pinned device(s) held out"));
    }
    writeln!(out, "{head}").map_err(out_err)?;
    let waves: Vec<Vec<String>> = p["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let mut row: Vec<String> = [
                "wave",
                "percent",
                "devices",
                "reporting",
                "healthy",
                "failed",
            ]
            .iter()
            .map(|k| s(&w[*k]))
            .collect();
            row.push(if w["open"] == true { "open" } else { "" }.into());
            row
        })
        .collect();
    table(
        out,
        &[
            "WAVE",
            "PERCENT",
            "DEVICES",
            "REPORTING",
            "HEALTHY",
            "FAILED",
            "",
        ],
        &waves,
    )
    .map_err(out_err)
}
