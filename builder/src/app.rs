//! The builder's state ([`App`]): data directory layout, database, store, keys and running
//! builds, and the handles of what the server starts: the fleets' origin nodes, reached through
//! [`Gossip`], and the live rollouts, reached through [`Steering`] (both traits are defined
//! below this module, so the app never depends on the origin or the rollout loop).
//!
//! Layout of the data directory (created on first use, by the server or the operator CLI):
//!
//! ```text
//! <data>/builder.db            releases database (SQLite, WAL)
//! <data>/keys/root.key         trust-root signing key (0600)
//! <data>/keys/release.key      release signing key (0600)
//! <data>/store/                chunks, manifests, announcements by BLAKE3 digest
//! <data>/repos/<fleet>.git     the fleet's bare git repository (with the pre-receive hook)
//! <data>/fleets/<fleet>/trust-root.bin   the fleet's current signed trust root
//! <data>/fleets/<fleet>/rotations/<v>.bin  each rotation to version v (see `rotation`)
//! <data>/keys/origin-<fleet>.key        the fleet's origin node device key (0600)
//! <data>/origin/<fleet>/                the origin node's state (its chunks stay in store/)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_protocol::{RolloutPlan, UnixTime};

use crate::build_log::BuildLog;
use crate::gossip::Gossip;
use crate::keys::{KeyError, Keys};
use crate::steering::Steering;
use crate::storage::blobs::Store;
use crate::storage::db::{Db, DbError, Fleet};

/// Most builds running at once; further pushes wait for a slot.
pub const MAX_CONCURRENT_BUILDS: usize = 2;

/// Why the data directory could not be opened or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// File system.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        source: std::io::Error,
    },
    /// Keys.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A name that cannot be a fleet name.
    #[error("invalid {what} {value:?}: use [a-z0-9][a-z0-9-]*, at most 63 characters")]
    InvalidName {
        /// Which name.
        what: &'static str,
        /// The value.
        value: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
    let what = what.into();
    move |source| AppError::Io { what, source }
}

/// Now, in Unix seconds.
pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether `s` is a usable fleet, architecture or device-type name.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// The opened data directory.
pub struct App {
    /// The data directory.
    pub root: PathBuf,
    /// Releases database.
    pub db: Db,
    /// Content store.
    pub store: Arc<Store>,
    /// Signing keys.
    pub keys: Keys,
    /// Logs of running builds by release id.
    pub running: Mutex<HashMap<i64, Arc<BuildLog>>>,
    /// Serialises sequence assignment and publication.
    pub publish_lock: tokio::sync::Mutex<()>,
    /// Build slots.
    pub build_slots: tokio::sync::Semaphore,
    /// The fleets' origin nodes, once the server started them (the operator CLI has none).
    pub origins: std::sync::OnceLock<Arc<dyn Gossip>>,
    /// The live rollouts, once the server started them.
    pub rollouts: std::sync::OnceLock<Arc<dyn Steering>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("root", &self.root)
            .field("db", &self.db)
            .field("store", &self.store)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Opens the data directory, creating what is missing.
    pub async fn open(root: &Path) -> Result<App, AppError> {
        std::fs::create_dir_all(root).map_err(io(format!("create {}", root.display())))?;
        for d in ["repos", "fleets"] {
            std::fs::create_dir_all(root.join(d)).map_err(io(format!("create {d}")))?;
        }
        let keys = Keys::load_or_generate(&root.join("keys"))?;
        let store = Store::open(&root.join("store")).map_err(io("open store"))?;
        let db = Db::open(&root.join("builder.db")).await?;
        Ok(App {
            root: root.to_path_buf(),
            db,
            store: Arc::new(store),
            keys,
            running: Mutex::new(HashMap::new()),
            publish_lock: tokio::sync::Mutex::new(()),
            build_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_BUILDS),
            origins: std::sync::OnceLock::new(),
            rollouts: std::sync::OnceLock::new(),
        })
    }

    /// The bare repository of a fleet.
    pub fn repo_path(&self, fleet: &str) -> PathBuf {
        self.root.join("repos").join(format!("{fleet}.git"))
    }

    /// The signed trust root of a fleet.
    pub fn trust_root_path(&self, fleet: &str) -> PathBuf {
        trust_root_path(&self.root, fleet)
    }

    /// Creates a fleet: database row, bare repository with hook, signed trust root.
    pub async fn create_fleet(
        &self,
        name: &str,
        arch: &str,
        device_type: &str,
        plan: &RolloutPlan,
    ) -> Result<Fleet, AppError> {
        for (what, value) in [
            ("fleet name", name),
            ("arch", arch),
            ("device type", device_type),
        ] {
            if !valid_name(value) {
                return Err(AppError::InvalidName {
                    what,
                    value: value.to_string(),
                });
            }
        }
        // Sign first: with the root key offline, no half-created fleet is left behind.
        let env = self
            .keys
            .initial_trust_root(name, UnixTime(now_s() as u64))?;
        let fleet = self
            .db
            .create_fleet(name, arch, device_type, plan, now_s())
            .await?;
        let repo = self.repo_path(name);
        if !repo.join("HEAD").exists() {
            gix::init_bare(&repo).map_err(|e| AppError::Io {
                what: format!("git init {}", repo.display()),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        configure_repo(&repo).map_err(io("configure repository"))?;
        let path = self.trust_root_path(name);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.root))
            .map_err(io("create fleet dir"))?;
        std::fs::write(&path, shoal_protocol::encoding::encode(&env))
            .map_err(io(format!("write {}", path.display())))?;
        Ok(fleet)
    }

    /// Creates a push token; returns the token (shown once; only its hash is stored).
    pub async fn create_token(&self, name: &str) -> Result<String, AppError> {
        self.create_token_with_role(name, Role::Push).await
    }

    /// Creates a token with `role`; returns it (shown once; only its hash is stored).
    pub async fn create_token_with_role(&self, name: &str, role: Role) -> Result<String, AppError> {
        let token = format!("shoal_{}", random_hex(24));
        self.db
            .add_token_with_role(name, &token_hash(&token), role.as_str(), now_s())
            .await?;
        Ok(token)
    }

    /// The token's name and role if `token` is valid.
    pub async fn token_identity(&self, token: &str) -> Result<Option<(String, Role)>, AppError> {
        let row = self.db.token_identity(&token_hash(token)).await?;
        Ok(row.map(|(name, role)| {
            let role = if role == "operator" {
                Role::Operator
            } else {
                Role::Push
            };
            (name, role)
        }))
    }

    /// The token's name if `token` is valid.
    pub async fn check_token(&self, token: &str) -> Result<Option<String>, AppError> {
        Ok(self.db.token_name(&token_hash(token)).await?)
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Push code (and read, save views).
    Push,
    /// Everything a push token may, and steer rollouts, pin releases, change fleet settings.
    Operator,
}

impl Role {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Push => "push",
            Role::Operator => "operator",
        }
    }
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut secret = vec![0u8; n];
    rand::rng().fill_bytes(&mut secret);
    hex::encode(secret)
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> String {
    shoal_protocol::Digest::of(token.as_bytes()).to_string()
}

/// The signed trust root of `fleet` in data directory `root`.
pub fn trust_root_path(root: &Path, fleet: &str) -> PathBuf {
    root.join("fleets").join(fleet).join("trust-root.bin")
}

/// Writes the fleet repository's `pre-receive` hook, pointing at this executable (see
/// [`crate::http::hook`]).
pub fn configure_repo(repo: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe()?;
    let exe = exe.display().to_string().replace('\'', r"'\''");
    let hooks = repo.join("hooks");
    std::fs::create_dir_all(&hooks)?;
    let path = hooks.join("pre-receive");
    let tmp = hooks.join("pre-receive.tmp");
    std::fs::write(
        &tmp,
        format!(
            "#!/bin/sh\n# Written by shoal-builder: builds master before the push is accepted.\nexec '{exe}' hook pre-receive\n"
        ),
    )?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)
}
