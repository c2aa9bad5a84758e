//! The subset of a `docker-compose.yml` that Shoal builds and runs, parsed with serde-saphyr.
//!
//! Every service either builds (`build: ./dir` or `build: {context, dockerfile, args}`) or names
//! an image already in the Engine (`image:`). The settings a device applies are turned into
//! [`shoal_protocol::ServiceSettings`]; the update strategy comes from the label
//! `io.shoal.update.strategy` (or balena's `io.balena.update.strategy`).

use std::collections::BTreeMap;

use serde::Deserialize;
use shoal_protocol::{HealthCheck, ServiceSettings, UpdateStrategy};

/// Why a compose file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    /// Not valid YAML, or not the shape of a compose file.
    #[error("docker-compose.yml: {0}")]
    Parse(String),
    /// No services.
    #[error("docker-compose.yml has no services")]
    NoServices,
    /// A service neither builds nor names an image.
    #[error("service {0:?} has neither `build` nor `image`")]
    NothingToRun(String),
    /// A value that cannot be used.
    #[error("service {service:?}: {message}")]
    Invalid {
        /// The service.
        service: String,
        /// What is wrong.
        message: String,
    },
}

/// A scalar as YAML writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// `"a b"` or `["a", "b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// One string (split on whitespace for commands).
    One(String),
    /// A list.
    List(Vec<Scalar>),
}

impl StringOrList {
    fn words(&self) -> Vec<String> {
        match self {
            StringOrList::One(s) => s.split_whitespace().map(str::to_string).collect(),
            StringOrList::List(l) => l.iter().map(Scalar::text).collect(),
        }
    }
}

/// `["K=V", ...]` or `{K: V, ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyValues {
    /// List form.
    List(Vec<String>),
    /// Map form.
    Map(BTreeMap<String, Option<Scalar>>),
}

impl KeyValues {
    /// As a map (a list entry without `=` gets an empty value).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        match self {
            KeyValues::List(l) => l
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.clone(), String::new()),
                })
                .collect(),
            KeyValues::Map(m) => m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(Scalar::text).unwrap_or_default()))
                .collect(),
        }
    }
}

/// `[a, b]` or `{a: {condition: ...}, b: ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ListOrMap {
    /// List form.
    List(Vec<String>),
    /// Map form (values ignored).
    Map(BTreeMap<String, serde_json::Value>),
}

/// `build:` in either form.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Build {
    /// `build: ./dir`.
    Path(String),
    /// `build: {context, dockerfile, args}`.
    Full {
        /// The context directory.
        #[serde(default)]
        context: Option<String>,
        /// The Dockerfile, relative to the context.
        #[serde(default)]
        dockerfile: Option<String>,
        /// Build arguments.
        #[serde(default)]
        args: Option<KeyValues>,
    },
}

/// A volume or port in short (string) or long (map) syntax.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ShortOrLong {
    /// `"data:/var/lib"`, `"8080:80"`, `80`.
    Short(Scalar),
    /// The long syntax.
    Long(BTreeMap<String, Scalar>),
}

impl ShortOrLong {
    fn volume(&self) -> String {
        match self {
            ShortOrLong::Short(s) => s.text(),
            ShortOrLong::Long(m) => {
                let get = |k: &str| m.get(k).map(Scalar::text).unwrap_or_default();
                let source = get("source");
                if source.is_empty() {
                    get("target")
                } else {
                    format!("{source}:{}", get("target"))
                }
            }
        }
    }

    fn port(&self) -> String {
        match self {
            ShortOrLong::Short(s) => s.text(),
            ShortOrLong::Long(m) => {
                let get = |k: &str| m.get(k).map(Scalar::text);
                let target = get("target").unwrap_or_default();
                let mut s = match get("published") {
                    Some(p) => format!("{p}:{target}"),
                    None => target,
                };
                if let Some(proto) = get("protocol") {
                    s = format!("{s}/{proto}");
                }
                s
            }
        }
    }
}

/// `healthcheck:`.
#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    /// The test.
    #[serde(default)]
    pub test: Option<StringOrList>,
    /// `30s`, `1m30s`.
    #[serde(default)]
    pub interval: Option<String>,
    /// Timeout.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retries.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Start period.
    #[serde(default)]
    pub start_period: Option<String>,
}

/// One service as written.
#[derive(Debug, Clone, Deserialize)]
pub struct ComposeService {
    /// How to build it.
    #[serde(default)]
    pub build: Option<Build>,
    /// A ready image.
    #[serde(default)]
    pub image: Option<String>,
    /// Command.
    #[serde(default)]
    pub command: Option<StringOrList>,
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Option<StringOrList>,
    /// Environment.
    #[serde(default)]
    pub environment: Option<KeyValues>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ShortOrLong>,
    /// Volumes.
    #[serde(default)]
    pub volumes: Vec<ShortOrLong>,
    /// Restart policy.
    #[serde(default)]
    pub restart: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: Option<KeyValues>,
    /// Network mode.
    #[serde(default)]
    pub network_mode: Option<String>,
    /// Healthcheck.
    #[serde(default)]
    pub healthcheck: Option<Health>,
    /// Dependencies.
    #[serde(default)]
    pub depends_on: Option<ListOrMap>,
}

/// A compose file.
#[derive(Debug, Clone, Deserialize)]
pub struct Compose {
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, ComposeService>,
}

/// Parses a compose file.
pub fn parse(text: &str) -> Result<Compose, ComposeError> {
    let c: Compose =
        serde_saphyr::from_str(text).map_err(|e| ComposeError::Parse(e.to_string()))?;
    if c.services.is_empty() {
        return Err(ComposeError::NoServices);
    }
    for (name, s) in &c.services {
        if s.build.is_none() && s.image.is_none() {
            return Err(ComposeError::NothingToRun(name.clone()));
        }
        if !valid_name(name) {
            return Err(ComposeError::Invalid {
                service: name.clone(),
                message: "a service name is [a-z0-9][a-z0-9_.-]*, at most 63 characters".into(),
            });
        }
    }
    Ok(c)
}

/// Whether `name` is usable as a service name (and in an image tag).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

/// Seconds of a compose duration (`1m30s`, `10s`, `500ms` rounds down, a bare number is seconds).
pub fn duration_s(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        let secs = match unit.as_str() {
            "h" => v * 3600.0,
            "m" => v * 60.0,
            "s" => v,
            "ms" => v / 1000.0,
            "us" | "ns" => 0.0,
            _ => return None,
        };
        total += secs as u64;
    }
    if !num.is_empty() {
        return None;
    }
    u32::try_from(total).ok()
}

/// The update strategy a label set asks for.
pub fn update_strategy(labels: &BTreeMap<String, String>) -> Result<UpdateStrategy, String> {
    for key in ["io.shoal.update.strategy", "io.balena.update.strategy"] {
        if let Some(v) = labels.get(key) {
            return UpdateStrategy::from_label(v).ok_or_else(|| {
                format!(
                    "label {key}={v:?} is not one of download-then-kill, kill-then-download, delete-then-download, hand-over"
                )
            });
        }
    }
    Ok(UpdateStrategy::default())
}

impl ComposeService {
    /// The settings a device applies.
    pub fn settings(&self, name: &str) -> Result<ServiceSettings, ComposeError> {
        let labels = self
            .labels
            .as_ref()
            .map(KeyValues::to_map)
            .unwrap_or_default();
        let update_strategy =
            update_strategy(&labels).map_err(|message| ComposeError::Invalid {
                service: name.to_string(),
                message,
            })?;
        let healthcheck = match &self.healthcheck {
            None => None,
            Some(h) => {
                let dur = |v: &Option<String>, default: u32| -> Result<u32, ComposeError> {
                    match v {
                        None => Ok(default),
                        Some(s) => duration_s(s).ok_or_else(|| ComposeError::Invalid {
                            service: name.to_string(),
                            message: format!("bad healthcheck duration {s:?}"),
                        }),
                    }
                };
                let test = match &h.test {
                    Some(StringOrList::One(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
                    Some(l) => l.words(),
                    None => Vec::new(),
                };
                Some(HealthCheck {
                    test,
                    interval_s: dur(&h.interval, 30)?,
                    timeout_s: dur(&h.timeout, 30)?,
                    retries: h.retries.unwrap_or(3),
                    start_period_s: dur(&h.start_period, 0)?,
                })
            }
        };
        let depends_on = match &self.depends_on {
            None => Vec::new(),
            Some(ListOrMap::List(l)) => l.clone(),
            Some(ListOrMap::Map(m)) => m.keys().cloned().collect(),
        };
        Ok(ServiceSettings {
            command: self.command.as_ref().map(StringOrList::words),
            entrypoint: self.entrypoint.as_ref().map(StringOrList::words),
            environment: self
                .environment
                .as_ref()
                .map(KeyValues::to_map)
                .unwrap_or_default(),
            ports: self.ports.iter().map(ShortOrLong::port).collect(),
            volumes: self.volumes.iter().map(ShortOrLong::volume).collect(),
            restart: self.restart.clone(),
            labels,
            network_mode: self.network_mode.clone(),
            healthcheck,
            depends_on,
            update_strategy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_a_compose_file() {
        let c = parse(
            r#"
version: "2.1"
services:
  web:
    build: ./web
    command: ["httpd", "-f", "-p", 8080]
    environment:
      MODE: prod
      WORKERS: 4
    ports: ["8080:8080", 53]
    volumes: ["data:/data"]
    restart: always
    labels:
      io.balena.update.strategy: hand-over
    healthcheck:
      test: wget -q localhost:8080
      interval: 1m30s
      retries: 5
    depends_on: [db]
  db:
    build:
      context: db
      dockerfile: Dockerfile.db
      args: ["A=1"]
    environment: ["X=y"]
volumes:
  data: {}
"#,
        )
        .unwrap();
        let web = c.services["web"].settings("web").unwrap();
        assert_eq!(
            web.command.as_deref().unwrap(),
            ["httpd", "-f", "-p", "8080"]
        );
        assert_eq!(web.environment["WORKERS"], "4");
        assert_eq!(web.ports, ["8080:8080", "53"]);
        assert_eq!(web.update_strategy, UpdateStrategy::HandOver);
        let h = web.healthcheck.unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "wget -q localhost:8080"]);
        assert_eq!((h.interval_s, h.retries), (90, 5));
        assert_eq!(web.depends_on, ["db"]);
        let db = c.services["db"].settings("db").unwrap();
        assert_eq!(db.environment["X"], "y");
        assert!(matches!(
            &c.services["db"].build,
            Some(Build::Full { dockerfile: Some(d), .. }) if d == "Dockerfile.db"
        ));
    }

    #[test]
    fn bad_files_are_typed_errors() {
        assert!(matches!(parse("services: ["), Err(ComposeError::Parse(_))));
        assert!(matches!(
            parse("services: {}"),
            Err(ComposeError::NoServices)
        ));
        assert!(matches!(
            parse("services:\n  a:\n    restart: always\n"),
            Err(ComposeError::NothingToRun(_))
        ));
        let c =
            parse("services:\n  a:\n    image: x\n    labels: [io.shoal.update.strategy=bogus]\n")
                .unwrap();
        assert!(c.services["a"].settings("a").is_err());
    }
}
