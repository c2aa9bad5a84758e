//! Project resolution: from a pushed tree to the list of images to build.
//!
//! First match wins, at the root of the tree:
//! 1. `docker-compose.yml` (or `.yaml`): one build per service, each in its own context;
//! 2. `Dockerfile.<device-type>`, 3. `Dockerfile.<arch>`, 4. `Dockerfile.template`,
//! 5. `Dockerfile`, 6. `package.json` (an implicit Node.js Dockerfile);
//!
//! the same order applies inside each compose service's context. A single-image project has one
//! service, `main`. `%%SHOAL_*%%` and balena's `%%BALENA_*%%` variables are replaced in template
//! and architecture-specific Dockerfiles. Build variables and secrets come from
//! `.shoal/shoal.yml` or `.balena/balena.yml` (`build-variables`, `build-secrets`, each with a
//! `global` list and per-`services` lists); a secret's file is read from `.shoal/secrets/` or
//! `.balena/secrets/` in the pushed tree and is mounted at `/run/secrets/<dest>` while building.

use std::collections::BTreeMap;

use shoal_protocol::ServiceSettings;

pub use crate::pipeline::build_config::normalize;
use crate::pipeline::build_config::{
    self, BuildConfig, CONFIG_FILES, ConfigError, DEFAULT_SECRETS_DIR, join,
};
use crate::pipeline::compose::{self, Build, ComposeError};
use crate::pipeline::git_tree::SourceTree;

/// The base image of the implicit Dockerfile of a `package.json` project.
pub const NODE_BASE_IMAGE: &str = "node";

/// What the build is for.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Fleet name.
    pub fleet: &'a str,
    /// Fleet architecture.
    pub arch: &'a str,
    /// Fleet device type.
    pub device_type: &'a str,
    /// The commit being built (hex).
    pub commit: &'a str,
}

/// Which rule chose a service's Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// A Dockerfile (resolved text) and the file it came from.
    Dockerfile {
        /// The text sent to the Engine, variables substituted.
        text: String,
        /// Which file (`Dockerfile.template`, `package.json (implicit)`, ...).
        source: String,
    },
    /// A ready image in the Engine (compose `image:` without `build:`).
    Image(String),
}

/// One service to build.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    /// The service name (`main` for a single image).
    pub name: String,
    /// Its context directory in the tree (`""` for the root).
    pub context: String,
    /// How its image is made.
    pub recipe: Recipe,
    /// Build arguments.
    pub build_args: BTreeMap<String, String>,
    /// Secrets: file name under `/run/secrets/` → contents.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Settings the device applies.
    pub settings: ServiceSettings,
}

/// A resolved project.
#[derive(Debug, Clone)]
pub struct Project {
    /// Which rule matched at the root.
    pub kind: String,
    /// The compose file, for compose projects.
    pub compose: Option<String>,
    /// Services in name order.
    pub services: Vec<ServicePlan>,
}

/// Why a project cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectError {
    /// No rule matched.
    #[error(
        "no docker-compose.yml, Dockerfile.{device_type}, Dockerfile.{arch}, Dockerfile.template, Dockerfile or package.json in {dir}"
    )]
    NothingToBuild {
        /// The directory searched.
        dir: String,
        /// Fleet device type.
        device_type: String,
        /// Fleet architecture.
        arch: String,
    },
    /// The compose file is not usable.
    #[error(transparent)]
    Compose(#[from] ComposeError),
    /// `.shoal/shoal.yml` is not usable.
    #[error("{file}: {message}")]
    Config {
        /// Which file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A path leaves the tree or does not exist.
    #[error("{0}")]
    BadPath(String),
}

impl From<ConfigError> for ProjectError {
    fn from(e: ConfigError) -> ProjectError {
        match e {
            ConfigError::Syntax { file, message } => ProjectError::Config { file, message },
            ConfigError::Variable(kv) => ProjectError::Config {
                file: "build-variables".into(),
                message: format!("{kv:?} is not NAME=value"),
            },
            ConfigError::SecretSource(s) => ProjectError::BadPath(format!("secret source {s:?}")),
            ConfigError::SecretDest(d) => ProjectError::BadPath(format!("secret dest {d:?}")),
        }
    }
}

/// Replaces the `%%SHOAL_*%%` and `%%BALENA_*%%` variables.
pub fn substitute(text: &str, t: &Target<'_>, service: &str) -> String {
    let vars = [
        ("SHOAL_ARCH", t.arch),
        ("SHOAL_DEVICE_TYPE", t.device_type),
        ("SHOAL_FLEET", t.fleet),
        ("SHOAL_RELEASE_HASH", t.commit),
        ("SHOAL_SERVICE_NAME", service),
        ("BALENA_ARCH", t.arch),
        ("BALENA_MACHINE_NAME", t.device_type),
        ("BALENA_APP_NAME", t.fleet),
        ("BALENA_RELEASE_HASH", t.commit),
        ("BALENA_SERVICE_NAME", service),
        ("RESIN_ARCH", t.arch),
        ("RESIN_MACHINE_NAME", t.device_type),
    ];
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("%%{k}%%"), v);
    }
    out
}

/// The implicit Dockerfile of a Node.js project.
pub fn node_dockerfile() -> String {
    format!(
        "FROM {NODE_BASE_IMAGE}\nWORKDIR /usr/src/app\nCOPY package.json ./\nRUN npm install --omit=dev\nCOPY . ./\nCMD [\"npm\", \"start\"]\n"
    )
}

fn recipe_in(
    tree: &SourceTree,
    dir: &str,
    t: &Target<'_>,
    service: &str,
) -> Result<Recipe, ProjectError> {
    let candidates = [
        (format!("Dockerfile.{}", t.device_type), true),
        (format!("Dockerfile.{}", t.arch), true),
        ("Dockerfile.template".to_string(), true),
        ("Dockerfile".to_string(), false),
    ];
    for (name, template) in candidates {
        if let Some(text) = tree.text(&join(dir, &name)) {
            let text = if template {
                substitute(&text, t, service)
            } else {
                text
            };
            return Ok(Recipe::Dockerfile { text, source: name });
        }
    }
    if tree.file(&join(dir, "package.json")).is_some() {
        return Ok(Recipe::Dockerfile {
            text: node_dockerfile(),
            source: "package.json (implicit Dockerfile)".into(),
        });
    }
    Err(ProjectError::NothingToBuild {
        dir: if dir.is_empty() {
            "/".into()
        } else {
            dir.into()
        },
        device_type: t.device_type.into(),
        arch: t.arch.into(),
    })
}

fn config(tree: &SourceTree) -> Result<(BuildConfig, &'static str), ProjectError> {
    for (file, secrets) in CONFIG_FILES {
        if let Some(bytes) = tree.file(file) {
            return Ok((build_config::parse(file, bytes)?, secrets));
        }
    }
    Ok((BuildConfig::default(), DEFAULT_SECRETS_DIR))
}

fn secrets_for(
    tree: &SourceTree,
    c: &BuildConfig,
    dir: &str,
    service: &str,
) -> Result<BTreeMap<String, Vec<u8>>, ProjectError> {
    let mut out = BTreeMap::new();
    for m in c.secrets_for(dir, service)? {
        let data = tree.file(&m.source).ok_or_else(|| {
            ProjectError::BadPath(format!("secret file {} is not in the push", m.source))
        })?;
        out.insert(m.dest, data.to_vec());
    }
    Ok(out)
}

/// Resolves what to build for `t` from `tree`.
pub fn resolve(tree: &SourceTree, t: &Target<'_>) -> Result<Project, ProjectError> {
    let (cfg, secrets_dir) = config(tree)?;
    for compose_name in ["docker-compose.yml", "docker-compose.yaml"] {
        let Some(text) = tree.text(compose_name) else {
            continue;
        };
        let c = compose::parse(&text)?;
        let mut services = Vec::new();
        for (name, s) in &c.services {
            let settings = s.settings(name)?;
            let mut build_args = cfg.vars_for(name)?;
            let (context, recipe) = match &s.build {
                None => (
                    String::new(),
                    Recipe::Image(s.image.clone().unwrap_or_default()),
                ),
                Some(b) => {
                    let (ctx, dockerfile, args) = match b {
                        Build::Path(p) => (p.clone(), None, None),
                        Build::Full {
                            context,
                            dockerfile,
                            args,
                        } => (
                            context.clone().unwrap_or_else(|| ".".into()),
                            dockerfile.clone(),
                            args.clone(),
                        ),
                    };
                    let ctx = normalize(&ctx).ok_or_else(|| {
                        ProjectError::BadPath(format!(
                            "service {name}: context {ctx:?} leaves the project"
                        ))
                    })?;
                    if let Some(a) = args {
                        build_args.extend(a.to_map());
                    }
                    let recipe = match dockerfile {
                        Some(df) => {
                            let path = normalize(&join(&ctx, &df)).ok_or_else(|| {
                                ProjectError::BadPath(format!(
                                    "service {name}: dockerfile {df:?} leaves the project"
                                ))
                            })?;
                            let text = tree.text(&path).ok_or_else(|| {
                                ProjectError::BadPath(format!(
                                    "service {name}: {path} is not in the push"
                                ))
                            })?;
                            let text = if df.ends_with(".template") {
                                substitute(&text, t, name)
                            } else {
                                text
                            };
                            Recipe::Dockerfile { text, source: df }
                        }
                        None => recipe_in(tree, &ctx, t, name)?,
                    };
                    (ctx, recipe)
                }
            };
            let secrets = secrets_for(tree, &cfg, secrets_dir, name)?;
            services.push(ServicePlan {
                name: name.clone(),
                context,
                recipe,
                build_args,
                secrets,
                settings,
            });
        }
        return Ok(Project {
            kind: compose_name.into(),
            compose: Some(text),
            services,
        });
    }
    let recipe = recipe_in(tree, "", t, "main")?;
    let kind = match &recipe {
        Recipe::Dockerfile { source, .. } => source.clone(),
        Recipe::Image(i) => i.clone(),
    };
    Ok(Project {
        kind,
        compose: None,
        services: vec![ServicePlan {
            name: "main".into(),
            context: String::new(),
            recipe,
            build_args: cfg.vars_for("main")?,
            secrets: secrets_for(tree, &cfg, secrets_dir, "main")?,
            settings: ServiceSettings::default(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::git_tree::Entry;

    fn tree(files: &[(&str, &str)]) -> SourceTree {
        SourceTree {
            files: files
                .iter()
                .map(|(p, d)| {
                    (
                        p.to_string(),
                        Entry::File {
                            data: d.as_bytes().to_vec(),
                            executable: false,
                        },
                    )
                })
                .collect(),
        }
    }

    const T: Target<'static> = Target {
        fleet: "demo",
        arch: "amd64",
        device_type: "generic-amd64",
        commit: "abc123",
    };

    fn source(p: &Project) -> &str {
        match &p.services[0].recipe {
            Recipe::Dockerfile { source, .. } => source,
            Recipe::Image(i) => i,
        }
    }

    #[test]
    fn first_match_wins() {
        let all = [
            ("Dockerfile.generic-amd64", "FROM a"),
            ("Dockerfile.amd64", "FROM b"),
            ("Dockerfile.template", "FROM c"),
            ("Dockerfile", "FROM d"),
            ("package.json", "{}"),
        ];
        for skip in 0..all.len() {
            let p = resolve(&tree(&all[skip..]), &T).unwrap();
            assert_eq!(
                source(&p),
                all[skip]
                    .0
                    .replace("package.json", "package.json (implicit Dockerfile)")
            );
            assert_eq!(p.services[0].name, "main");
        }
        assert!(matches!(
            resolve(&tree(&[("README", "x")]), &T),
            Err(ProjectError::NothingToBuild { .. })
        ));
    }

    #[test]
    fn template_variables_are_replaced() {
        let p = resolve(
            &tree(&[(
                "Dockerfile.template",
                "FROM busybox\nRUN echo %%SHOAL_ARCH%% %%BALENA_MACHINE_NAME%% %%SHOAL_FLEET%% %%BALENA_RELEASE_HASH%% %%SHOAL_SERVICE_NAME%%",
            )]),
            &T,
        )
        .unwrap();
        let Recipe::Dockerfile { text, .. } = &p.services[0].recipe else {
            panic!()
        };
        assert!(
            text.ends_with("RUN echo amd64 generic-amd64 demo abc123 main"),
            "{text}"
        );
    }

    #[test]
    fn compose_services_variables_and_secrets() {
        let p = resolve(
            &tree(&[
                ("docker-compose.yml", "services:\n  web:\n    build: ./web\n  api:\n    build:\n      context: api\n      args: {B: two}\n"),
                ("web/Dockerfile", "FROM busybox"),
                ("api/Dockerfile.template", "FROM busybox\nLABEL s=%%SHOAL_SERVICE_NAME%%"),
                ("Dockerfile", "FROM ignored"),
                (".shoal/shoal.yml", "build-variables:\n  global: [A=one]\n  services:\n    web: [W=x=y]\nbuild-secrets:\n  global:\n    - source: key.txt\n      dest: api-key\n"),
                (".shoal/secrets/key.txt", "s3cret"),
            ]),
            &T,
        )
        .unwrap();
        assert_eq!(p.kind, "docker-compose.yml");
        let names: Vec<_> = p.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        let api = &p.services[0];
        assert_eq!(api.context, "api");
        assert_eq!(api.build_args["A"], "one");
        assert_eq!(api.build_args["B"], "two");
        assert!(matches!(&api.recipe, Recipe::Dockerfile { text, .. } if text.contains("s=api")));
        assert_eq!(p.services[1].build_args["W"], "x=y");
        assert_eq!(api.secrets["api-key"], b"s3cret");
    }

    #[test]
    fn paths_cannot_leave_the_tree() {
        assert_eq!(normalize("./a/../b/").as_deref(), Some("b"));
        assert_eq!(normalize(".."), None);
        assert_eq!(normalize("/etc"), None);
        let r = resolve(
            &tree(&[("docker-compose.yml", "services:\n  a:\n    build: ../x\n")]),
            &T,
        );
        assert!(matches!(r, Err(ProjectError::BadPath(_))));
    }
}
