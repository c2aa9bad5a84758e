//! `shoal-builder keys ...`: trust-root rotation and offline root keys (the work is in
//! `shoal_builder::rotation`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use shoal_builder::app::now_s;
use shoal_builder::{keys, rotation};
use shoal_protocol::encoding::{decode, encode};
use shoal_protocol::{Envelope, PublicKey, TrustRoot, UnixTime};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Rotate a fleet's trust root to its next version. With the root key on this machine: a
    /// new root key (and with --new-release-key a new release key), signed by the old and the
    /// new root key, installed at once. With --unsigned-out: only write the proposal, to be
    /// signed with `keys sign-rotation` where the root keys live and installed with
    /// `keys install-rotation`.
    Rotate {
        /// The fleet.
        #[arg(long)]
        fleet: String,
        /// Replace the release key too (the old one is revoked for this fleet).
        #[arg(long)]
        new_release_key: bool,
        /// Write the unsigned proposal here instead of signing with local keys.
        #[arg(long)]
        unsigned_out: Option<PathBuf>,
        /// With --unsigned-out: the new version's root public keys (hex, from `keys generate`).
        #[arg(long = "root-pub")]
        root_pub: Vec<String>,
        /// With --unsigned-out: how many of them must sign.
        #[arg(long)]
        root_threshold: Option<u8>,
        /// The data directory.
        #[arg(long, default_value = "shoal-builder-data")]
        data: PathBuf,
    },
    /// Make a new key file (0600) and print its public key, e.g. a root key kept offline.
    Generate {
        /// The key file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add one root key's signature to a rotation (run where the key lives; no data directory).
    SignRotation {
        /// The root key file.
        #[arg(long)]
        root_key: PathBuf,
        /// The rotation so far.
        #[arg(long = "in")]
        input: PathBuf,
        /// Where to write it with the signature added.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a signed rotation as a device will and make it the fleet's trust root.
    InstallRotation {
        /// The fleet.
        #[arg(long)]
        fleet: String,
        /// The signed rotation.
        #[arg(long = "in")]
        input: PathBuf,
        /// The data directory.
        #[arg(long, default_value = "shoal-builder-data")]
        data: PathBuf,
    },
    /// Move the root key out of the data directory (to live offline); the server keeps only the
    /// release key.
    ExportRoot {
        /// Where to write it (a new file, 0600).
        #[arg(long)]
        out: PathBuf,
        /// The data directory.
        #[arg(long, default_value = "shoal-builder-data")]
        data: PathBuf,
    },
    /// Show a fleet's current trust root.
    Show {
        /// The fleet.
        #[arg(long)]
        fleet: String,
        /// The data directory.
        #[arg(long, default_value = "shoal-builder-data")]
        data: PathBuf,
    },
}

fn now() -> UnixTime {
    UnixTime(now_s().max(0) as u64)
}

fn read_envelope(path: &Path) -> anyhow::Result<Envelope> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    decode(&bytes).with_context(|| format!("{} is not a rotation envelope", path.display()))
}

fn describe(root: &TrustRoot) -> String {
    let list = |keys: &[PublicKey]| {
        keys.iter()
            .map(PublicKey::fingerprint)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "fleet {} version {}: root keys [{}] threshold {}, release keys [{}] threshold {}, expires {}",
        root.fleet,
        root.version,
        list(&root.root_keys),
        root.root_threshold,
        list(&root.release_keys),
        root.release_threshold,
        root.expires.0
    )
}

pub(crate) fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate {
            fleet,
            new_release_key,
            unsigned_out: None,
            root_pub,
            root_threshold,
            data,
        } => {
            anyhow::ensure!(
                root_pub.is_empty() && root_threshold.is_none(),
                "--root-pub and --root-threshold go with --unsigned-out"
            );
            let r = rotation::rotate_online(&data, &fleet, new_release_key, now())?;
            println!("installed {}", describe(&r.root));
            println!("devices learn it by gossip from the builder's origin node");
        }
        KeysCommand::Rotate {
            fleet,
            new_release_key,
            unsigned_out: Some(out),
            root_pub,
            root_threshold,
            data,
        } => {
            let (cur, _) = rotation::current(&data, &fleet)?;
            let root_keys = root_pub
                .iter()
                .map(|h| h.parse::<PublicKey>())
                .collect::<Result<Vec<_>, _>>()
                .context("--root-pub takes a public key in hex")?;
            let release_keys = if new_release_key {
                let pending = data.join("keys").join("release.next.key");
                let k = if pending.exists() {
                    keys::load(&pending)?
                } else {
                    keys::generate(&pending)?
                };
                Some(vec![k.public_key()])
            } else {
                None
            };
            let env = rotation::propose(
                &cur,
                rotation::Changes {
                    root_threshold: if root_keys.is_empty() {
                        root_threshold
                    } else {
                        Some(root_threshold.unwrap_or(1))
                    },
                    root_keys: (!root_keys.is_empty()).then_some(root_keys),
                    release_threshold: release_keys.as_ref().map(|_| 1),
                    release_keys,
                    expires: Some(now().plus_secs(keys::TRUST_ROOT_VALIDITY_S)),
                },
            )?;
            let next = rotation::open_unverified(&env)?;
            keys::write_new(&out, &encode(&env))
                .with_context(|| format!("write {}", out.display()))?;
            println!("proposed {}", describe(&next));
            println!(
                "sign it with `shoal-builder keys sign-rotation` by {} of the current root keys and {} of the new ones, then `keys install-rotation`",
                cur.root_threshold, next.root_threshold
            );
        }
        KeysCommand::Generate { out } => {
            let k = keys::generate(&out)?;
            println!("{}", k.public_key());
            eprintln!(
                "key {} written to {}",
                k.public_key().fingerprint(),
                out.display()
            );
        }
        KeysCommand::SignRotation {
            root_key,
            input,
            out,
        } => {
            let key = keys::load(&root_key)?;
            let mut env = read_envelope(&input)?;
            let root = rotation::sign(&mut env, &key)?;
            keys::write_new(&out, &encode(&env))
                .with_context(|| format!("write {}", out.display()))?;
            println!(
                "signed with {}: {}",
                key.public_key().fingerprint(),
                describe(&root)
            );
        }
        KeysCommand::InstallRotation { fleet, input, data } => {
            let env = read_envelope(&input)?;
            let root = rotation::install(&data, &fleet, &env, now())?;
            println!("installed {}", describe(&root));
        }
        KeysCommand::ExportRoot { out, data } => {
            let from = data.join("keys").join("root.key");
            let key = keys::load(&from)?;
            keys::write_new(&out, &key.to_bytes())
                .with_context(|| format!("write {}", out.display()))?;
            std::fs::remove_file(&from).with_context(|| format!("remove {}", from.display()))?;
            println!(
                "root key {} moved to {}; this builder now holds only the release key",
                key.public_key().fingerprint(),
                out.display()
            );
        }
        KeysCommand::Show { fleet, data } => {
            let (root, _) = rotation::current(&data, &fleet)?;
            println!("{}", describe(&root));
        }
    }
    Ok(())
}
