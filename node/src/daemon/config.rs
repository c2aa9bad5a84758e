//! The daemon's configuration file (TOML).
//!
//! ```toml
//! data_dir = "/var/lib/shoal"          # store, state, key (unless key_file), control socket
//! fleet = "demo"
//! arch = "amd64"                        # as manifests name it; default: this machine's
//! trust_root = "/etc/shoal/root.bin"    # the fleet's signed trust root (encoded envelope)
//! key_file = "/var/lib/shoal/device.key"  # default: <data_dir>/device.key
//! site = "lab-1"                        # optional site label
//! listen = ["/ip4/0.0.0.0/udp/7400/quic-v1"]      # libp2p (gossip, discovery)
//! data_listen = "0.0.0.0:7401"          # QUIC chunk transfer
//! bootstrap = ["/ip4/10.0.0.1/udp/7400/quic-v1/p2p/12D3Koo..."]  # optional with [enroll]
//! store_quota_bytes = 17179869184
//! mdns = true
//! metrics = "127.0.0.1:9464"            # Prometheus endpoint (GET /metrics); omit to disable
//!
//! [enroll]                              # optional: register with the builder at start,
//!                                       # then dial the origin's addresses it gives
//! builder_url = "http://10.0.0.1:8080"  # or https:// (a certificate from a public CA)
//! provisioning_key = "shoalprov_..."    # `shoal-builder fleet provisioning-key FLEET`
//! name = "pi-kitchen"                   # default device-<first 8 hex digits of the device id>
//! device_type = "generic-amd64"         # default generic-<arch>
//!
//! [runtime]                             # see `runtime::RuntimeConfig`; all keys optional
//! kind = "docker"                       # or "stage-only"
//! update_lock = "/tmp/shoal/updates.lock"
//! health_window_ms = 10000
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The parsed configuration file. Unknown keys are errors (a typo must not silently fall back
/// to a default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the store, state, control socket (and by default the key) live.
    pub data_dir: PathBuf,
    /// The fleet's name.
    pub fleet: String,
    /// The device architecture (default: this machine's, in Docker's spelling).
    #[serde(default = "default_arch")]
    pub arch: String,
    /// The fleet's trust root file.
    pub trust_root: PathBuf,
    /// The device key file (default `<data_dir>/device.key`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The device's site label.
    #[serde(default)]
    pub site: Option<String>,
    /// libp2p listen addresses (multiaddrs).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// The data plane's UDP address.
    #[serde(default = "default_data_listen")]
    pub data_listen: SocketAddr,
    /// Peers to dial at start (multiaddrs ending in `/p2p/<peer id>`). Optional with
    /// [`FileConfig::enroll`]: once registered, the daemon also dials the origin's addresses
    /// the builder gives (`GET` of the registration answer's `bootstrap_url`).
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Most bytes the chunk store may hold.
    #[serde(default = "default_quota")]
    pub store_quota_bytes: u64,
    /// Discover peers on the LAN with mDNS.
    #[serde(default = "default_true")]
    pub mdns: bool,
    /// The Prometheus endpoint's address.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Register with the builder's device registry at start, then learn the origin's addresses
    /// from the same builder and dial them ([`super::enroll::bootstrap`]).
    #[serde(default)]
    pub enroll: Option<super::enroll::Enrollment>,
    /// How releases are activated (default: the Docker Engine).
    #[serde(default)]
    pub runtime: super::runtime::RuntimeConfig,
}

fn default_arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
    .to_string()
}

fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/udp/7400/quic-v1".to_string()]
}

fn default_data_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7401))
}

fn default_quota() -> u64 {
    16 << 30
}

fn default_true() -> bool {
    true
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config {path} is malformed: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl FileConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(path, &text)
    }

    /// Parses configuration text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        let cfg: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Malformed {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if cfg.fleet.is_empty() || cfg.fleet.len() > shoal_protocol::manifest::MAX_NAME_BYTES {
            return Err(invalid("fleet must be 1 to 256 bytes".into()));
        }
        if let Some(site) = &cfg.site
            && site.len() > shoal_protocol::manifest::MAX_NAME_BYTES
        {
            return Err(invalid("site must be at most 256 bytes".into()));
        }
        for addr in cfg.listen.iter().chain(&cfg.bootstrap) {
            addr.parse::<libp2p::Multiaddr>()
                .map_err(|e| invalid(format!("{addr:?} is not a multiaddr: {e}")))?;
        }
        if cfg.runtime.prefix.is_empty()
            || cfg.runtime.prefix.len() > 32
            || !cfg
                .runtime
                .prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(
                "runtime.prefix must be 1 to 32 lowercase letters, digits or '-'".into(),
            ));
        }
        if let Some(e) = &cfg.enroll {
            super::enroll::HttpUrl::parse(&e.builder_url)
                .map_err(|err| invalid(format!("enroll.builder_url: {err}")))?;
            if e.provisioning_key.is_empty() {
                return Err(invalid("enroll.provisioning_key is empty".into()));
            }
        }
        if cfg.store_quota_bytes == 0 {
            return Err(invalid("store_quota_bytes must be positive".into()));
        }
        Ok(cfg)
    }

    /// The key file in effect.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("device.key"))
    }

    /// The local control socket (read by `shoal-node status`).
    pub fn control_socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = FileConfig::parse(
            Path::new("t.toml"),
            "data_dir = \"/d\"\nfleet = \"f\"\ntrust_root = \"/r\"\n",
        )
        .unwrap();
        assert_eq!(cfg.key_path(), PathBuf::from("/d/device.key"));
        assert!(cfg.mdns);
        assert_eq!(cfg.data_listen.port(), 7401);
        assert_eq!(cfg.metrics, None);
        assert_eq!(
            cfg.runtime.kind,
            crate::daemon::runtime::RuntimeKind::Docker
        );
    }

    #[test]
    fn runtime_section_parses_and_typos_are_errors() {
        let p = Path::new("t.toml");
        let base = "data_dir = \"/d\"\nfleet = \"f\"\ntrust_root = \"/r\"\n";
        let cfg = FileConfig::parse(
            p,
            &format!(
                "{base}[runtime]\nkind = \"stage-only\"\nupdate_lock = \"/l\"\nhealth_window_ms = 5\n"
            ),
        )
        .unwrap();
        assert_eq!(
            cfg.runtime.kind,
            crate::daemon::runtime::RuntimeKind::StageOnly
        );
        assert_eq!(cfg.runtime.update_lock, Some(PathBuf::from("/l")));
        assert_eq!(cfg.runtime.health_window_ms, 5);
        assert_eq!(cfg.runtime.stop_timeout_s, 10);
        let err =
            FileConfig::parse(p, &format!("{base}[runtime]\nhealth_windw_ms = 5\n")).unwrap_err();
        assert!(err.to_string().contains("health_windw_ms"), "{err}");
        let err =
            FileConfig::parse(p, &format!("{base}[runtime]\nprefix = \"Bad/Name\"\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }

    #[test]
    fn enroll_section_parses_and_bad_urls_or_typos_are_errors() {
        let p = Path::new("t.toml");
        let base = "data_dir = \"/d\"\nfleet = \"f\"\ntrust_root = \"/r\"\n";
        let cfg = FileConfig::parse(
            p,
            &format!(
                "{base}[enroll]\nbuilder_url = \"http://10.0.0.1:8080\"\nprovisioning_key = \"shoalprov_x\"\nname = \"pi-1\"\n"
            ),
        )
        .unwrap();
        let e = cfg.enroll.unwrap();
        assert_eq!(e.builder_url, "http://10.0.0.1:8080");
        assert_eq!(e.name.as_deref(), Some("pi-1"));
        assert_eq!(e.device_type, None);
        assert!(
            !format!("{e:?}").contains("shoalprov_x"),
            "the key stays out of logs"
        );
        assert_eq!(FileConfig::parse(p, base).unwrap().enroll, None);
        let https = FileConfig::parse(
            p,
            &format!("{base}[enroll]\nbuilder_url = \"https://b\"\nprovisioning_key = \"k\"\n"),
        )
        .unwrap();
        assert_eq!(https.enroll.unwrap().builder_url, "https://b");
        let err = FileConfig::parse(
            p,
            &format!("{base}[enroll]\nbuilder_url = \"ftp://b\"\nprovisioning_key = \"k\"\n"),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("http:// or https://"), "{err}");
        let err = FileConfig::parse(
            p,
            &format!("{base}[enroll]\nbuilder_url = \"http://b\"\nprovisioning_kye = \"k\"\n"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("provisioning_kye"), "{err}");
    }

    #[test]
    fn malformed_unknown_and_invalid_configs_say_why() {
        let p = Path::new("t.toml");
        let err = FileConfig::parse(p, "data_dir = ").unwrap_err();
        assert!(matches!(err, ConfigError::Malformed { .. }), "{err}");
        let err = FileConfig::parse(
            p,
            "data_dir = \"/d\"\nfleet = \"f\"\ntrust_root = \"/r\"\nmdsn = false\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("mdsn"), "{err}");
        let err = FileConfig::parse(
            p,
            "data_dir = \"/d\"\nfleet = \"f\"\ntrust_root = \"/r\"\nbootstrap = [\"nope\"]\n",
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        let err = FileConfig::load(Path::new("/nonexistent/shoal.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }
}
