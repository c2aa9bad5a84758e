//! The project's build configuration file, `.shoal/shoal.yml` or balena's `.balena/balena.yml`:
//! bytes in, a typed [`BuildConfig`] or a typed [`ConfigError`] out, with no git tree behind it
//! (the `parse` feature; [`crate::pipeline::project`] finds the file in the pushed tree and reads the
//! secrets' files).
//!
//! ```yaml
//! build-variables:
//!   global: [A=one]
//!   services:
//!     web: [W=x]
//! build-secrets:
//!   global:
//!     - source: key.txt     # under .shoal/secrets/ (or .balena/secrets/)
//!       dest: api-key       # mounted at /run/secrets/api-key while building
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// Where the configuration is looked for, first match wins, each with the directory its secrets'
/// `source` paths are relative to.
pub const CONFIG_FILES: [(&str, &str); 2] = [
    (".shoal/shoal.yml", ".shoal/secrets"),
    (".balena/balena.yml", ".balena/secrets"),
];

/// The secrets directory of a project without a configuration file.
pub const DEFAULT_SECRETS_DIR: &str = ".shoal/secrets";

/// Why the configuration is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is not valid YAML of the expected shape.
    #[error("{file}: {message}")]
    Syntax {
        /// Which file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// A build variable is not `NAME=value`.
    #[error("build-variables: {0:?} is not NAME=value")]
    Variable(String),
    /// A secret's source leaves the tree.
    #[error("secret source {0:?}")]
    SecretSource(String),
    /// A secret's destination is empty or leaves `/run/secrets`.
    #[error("secret dest {0:?}")]
    SecretDest(String),
}

/// A `global` list and per-service lists.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Scoped<T> {
    /// For every service.
    #[serde(default)]
    pub global: Option<T>,
    /// For one service each, after the global ones.
    #[serde(default)]
    pub services: BTreeMap<String, T>,
}

/// One build secret as written.
#[derive(Debug, Clone, Deserialize)]
pub struct SecretSpec {
    /// Its file, relative to the secrets directory.
    pub source: String,
    /// Its name under `/run/secrets/`.
    pub dest: String,
}

/// A parsed `.shoal/shoal.yml`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct BuildConfig {
    /// `NAME=value` build arguments.
    #[serde(default, rename = "build-variables")]
    pub build_variables: Option<Scoped<Vec<String>>>,
    /// Files mounted while building.
    #[serde(default, rename = "build-secrets")]
    pub build_secrets: Option<Scoped<Vec<SecretSpec>>>,
}

/// A secret resolved for one service: which file of the tree, mounted under which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    /// The file's path in the tree (normalised, inside it).
    pub source: String,
    /// Its name under `/run/secrets/` (normalised, not empty).
    pub dest: String,
}

/// Normalises a relative path inside the tree (`./a/../b` → `b`); `None` if it leaves the tree.
pub fn normalize(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    if path.starts_with('/') {
        return None;
    }
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(out.join("/"))
}

/// `dir/name`, or `name` at the root.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Parses the bytes of `file` (one of [`CONFIG_FILES`]); invalid UTF-8 is replaced, as the
/// pushed tree's text is read.
pub fn parse(file: &str, bytes: &[u8]) -> Result<BuildConfig, ConfigError> {
    let text = String::from_utf8_lossy(bytes);
    serde_saphyr::from_str(&text).map_err(|e| ConfigError::Syntax {
        file: file.into(),
        message: e.to_string(),
    })
}

impl BuildConfig {
    /// The build arguments of `service`: the global ones, then its own (a later one wins).
    pub fn vars_for(&self, service: &str) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = BTreeMap::new();
        if let Some(v) = &self.build_variables {
            for kv in v
                .global
                .iter()
                .flatten()
                .chain(v.services.get(service).into_iter().flatten())
            {
                let (k, val) = kv
                    .split_once('=')
                    .ok_or_else(|| ConfigError::Variable(kv.clone()))?;
                out.insert(k.trim().to_string(), val.to_string());
            }
        }
        Ok(out)
    }

    /// The secrets of `service` (the global ones, then its own), their sources under
    /// `secrets_dir`.
    pub fn secrets_for(
        &self,
        secrets_dir: &str,
        service: &str,
    ) -> Result<Vec<SecretMount>, ConfigError> {
        let mut out = Vec::new();
        if let Some(s) = &self.build_secrets {
            for spec in s
                .global
                .iter()
                .flatten()
                .chain(s.services.get(service).into_iter().flatten())
            {
                let source = normalize(&join(secrets_dir, &spec.source))
                    .ok_or_else(|| ConfigError::SecretSource(spec.source.clone()))?;
                let dest = normalize(&spec.dest)
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| ConfigError::SecretDest(spec.dest.clone()))?;
                out.push(SecretMount { source, dest });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_and_secrets_per_service() {
        let c = parse(
            ".shoal/shoal.yml",
            b"build-variables:\n  global: [A=one, W=g]\n  services:\n    web: [W=x=y]\nbuild-secrets:\n  services:\n    web:\n      - source: ./k/../key.txt\n        dest: d/api-key\n",
        )
        .unwrap();
        let web = c.vars_for("web").unwrap();
        assert_eq!(web["A"], "one");
        assert_eq!(web["W"], "x=y");
        assert_eq!(c.vars_for("api").unwrap()["W"], "g");
        assert_eq!(
            c.secrets_for(".shoal/secrets", "web").unwrap(),
            [SecretMount {
                source: ".shoal/secrets/key.txt".into(),
                dest: "d/api-key".into()
            }]
        );
        assert!(c.secrets_for(".shoal/secrets", "api").unwrap().is_empty());
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        assert!(matches!(
            parse(".shoal/shoal.yml", b"build-variables: 3\n"),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            parse(
                ".shoal/shoal.yml",
                b"build-secrets:\n  global:\n    - source: a\n"
            ),
            Err(ConfigError::Syntax { .. })
        ));
        let c = parse(
            ".balena/balena.yml",
            b"build-variables:\n  global: [NOVALUE]\n",
        )
        .unwrap();
        assert_eq!(
            c.vars_for("main"),
            Err(ConfigError::Variable("NOVALUE".into()))
        );
        for (source, dest, err) in [
            (
                "../../../etc/passwd",
                "x",
                ConfigError::SecretSource("../../../etc/passwd".into()),
            ),
            ("k", "..", ConfigError::SecretDest("..".into())),
            ("k", "/etc/x", ConfigError::SecretDest("/etc/x".into())),
            ("k", "./", ConfigError::SecretDest("./".into())),
        ] {
            let text = format!(
                "build-secrets:\n  global:\n    - source: {source:?}\n      dest: {dest:?}\n"
            );
            let c = parse(".shoal/shoal.yml", text.as_bytes()).unwrap();
            assert_eq!(c.secrets_for(".shoal/secrets", "main"), Err(err));
        }
        // An empty file is an empty configuration.
        let c = parse(".shoal/shoal.yml", b"").unwrap();
        assert!(c.vars_for("main").unwrap().is_empty());
    }
}
