//! From a release's compose settings to Engine objects: names, labels and container specs.
//!
//! Every object a node creates carries its fleet, release, service and node in labels
//! ([`LABEL_FLEET`], ...), and its name starts with the runtime's prefix and the node's short id
//! ([`Names`]), so several nodes can share one Engine. A node's services share one bridge network
//! (one per node and fleet) on which each answers to its service name, as under compose. Named
//! volumes are per node and fleet and outlive releases; host bind mounts are refused (a release
//! must not reach into the device's file system).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkingConfig, PortBinding,
    RestartPolicy, RestartPolicyNameEnum,
};
use shoal_protocol::{DeviceId, ReleaseManifest, ReleaseSeq, ServiceSettings};

/// Label: the fleet.
pub const LABEL_FLEET: &str = "io.shoal.fleet";
/// Label: the release sequence (decimal).
pub const LABEL_RELEASE: &str = "io.shoal.release";
/// Label: the service name.
pub const LABEL_SERVICE: &str = "io.shoal.service";
/// Label: the node's device id (hex).
pub const LABEL_NODE: &str = "io.shoal.node";

/// A service's compose settings that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A port mapping that does not parse.
    #[error("service {service}: bad port mapping {port:?}")]
    Port {
        /// The service.
        service: String,
        /// The mapping.
        port: String,
    },
    /// A host bind mount (only named volumes are allowed).
    #[error("service {service}: volume {volume:?} mounts a host path; use a named volume")]
    BindMount {
        /// The service.
        service: String,
        /// The volume entry.
        volume: String,
    },
    /// A volume entry that does not parse.
    #[error("service {service}: bad volume {volume:?}")]
    Volume {
        /// The service.
        service: String,
        /// The volume entry.
        volume: String,
    },
    /// An unknown restart policy.
    #[error("service {service}: unknown restart policy {policy:?}")]
    Restart {
        /// The service.
        service: String,
        /// The policy.
        policy: String,
    },
    /// A network mode other than bridge, host, none or `service:<name>`.
    #[error("service {service}: unsupported network mode {mode:?}")]
    NetworkMode {
        /// The service.
        service: String,
        /// The mode.
        mode: String,
    },
    /// `depends_on` names a service the release does not have, or the services depend on each
    /// other in a cycle.
    #[error("depends_on: {0}")]
    DependsOn(String),
}

/// How a node names its Engine objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The runtime's prefix (default `shoal`).
    pub prefix: String,
    /// The fleet.
    pub fleet: String,
    /// The node's device id.
    pub node: DeviceId,
}

/// Lowercase letters, digits and `-`; anything else becomes `-` (Docker object names and image
/// repositories accept that everywhere).
pub fn sanitize(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let out = out.trim_matches('-').to_string();
    if out.is_empty() { "x".to_string() } else { out }
}

impl Names {
    /// The node's short id in names (first 12 hex digits).
    pub fn node_short(&self) -> String {
        self.node.to_string().chars().take(12).collect()
    }
    /// The container of `service` in release `seq`.
    pub fn container(&self, service: &str, seq: ReleaseSeq) -> String {
        format!(
            "{}-{}-{}-{}-r{}",
            sanitize(&self.prefix),
            sanitize(&self.fleet),
            self.node_short(),
            sanitize(service),
            seq.0
        )
    }
    /// The image tag of `service` in release `seq` for this node. Nodes sharing an Engine tag
    /// separately, so one node removing its old image never takes it from another.
    pub fn image(&self, service: &str, seq: ReleaseSeq) -> String {
        format!(
            "{}-{}/{}:r{}-{}",
            sanitize(&self.prefix),
            sanitize(&self.fleet),
            sanitize(service),
            seq.0,
            self.node_short()
        )
    }
    /// Whether `tag` is one of this node's image tags (any service, any release).
    pub fn is_own_image(&self, tag: &str) -> bool {
        let repo = format!("{}-{}/", sanitize(&self.prefix), sanitize(&self.fleet));
        let node = format!("-{}", self.node_short());
        tag.strip_prefix(&repo)
            .and_then(|rest| rest.split_once(":r"))
            .is_some_and(|(service, release)| {
                !service.is_empty()
                    && !service.contains('/')
                    && release.strip_suffix(&node).is_some_and(|seq| {
                        !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit())
                    })
            })
    }
    /// The node's network.
    pub fn network(&self) -> String {
        format!(
            "{}-{}-{}",
            sanitize(&self.prefix),
            sanitize(&self.fleet),
            self.node_short()
        )
    }
    /// The node's named volume `name`.
    pub fn volume(&self, name: &str) -> String {
        format!(
            "{}-{}-{}-{}",
            sanitize(&self.prefix),
            sanitize(&self.fleet),
            self.node_short(),
            sanitize(name)
        )
    }
    /// Labels every object of this node carries.
    pub fn node_labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_FLEET.to_string(), self.fleet.clone()),
            (LABEL_NODE.to_string(), self.node.to_string()),
        ])
    }
    /// The label filter selecting this node's objects.
    pub fn filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_FLEET}={}", self.fleet),
                format!("{LABEL_NODE}={}", self.node),
            ],
        )])
    }
}

/// A named volume a service mounts: its name in the release and its mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The name in the compose file.
    pub name: String,
    /// The path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Parses the service's volumes: named volumes, and anonymous ones (a bare container path).
pub fn volumes(
    service: &str,
    s: &ServiceSettings,
) -> Result<(Vec<VolumeMount>, Vec<String>), SpecError> {
    let mut named = Vec::new();
    let mut anonymous = Vec::new();
    for v in &s.volumes {
        let err = || SpecError::Volume {
            service: service.to_string(),
            volume: v.clone(),
        };
        let parts: Vec<&str> = v.split(':').collect();
        match parts.as_slice() {
            [target] if target.starts_with('/') => anonymous.push(target.to_string()),
            [source, target, rest @ ..] if rest.len() <= 1 => {
                if source.starts_with('/') || source.starts_with('.') || source.starts_with('~') {
                    return Err(SpecError::BindMount {
                        service: service.to_string(),
                        volume: v.clone(),
                    });
                }
                if source.is_empty() || !target.starts_with('/') {
                    return Err(err());
                }
                let read_only = match rest.first() {
                    None | Some(&"rw") => false,
                    Some(&"ro") => true,
                    Some(_) => return Err(err()),
                };
                named.push(VolumeMount {
                    name: source.to_string(),
                    target: target.to_string(),
                    read_only,
                });
            }
            _ => return Err(err()),
        }
    }
    Ok((named, anonymous))
}

/// Parses published ports into the Engine's port map.
pub fn ports(
    service: &str,
    s: &ServiceSettings,
) -> Result<HashMap<String, Option<Vec<PortBinding>>>, SpecError> {
    let mut map: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &s.ports {
        let err = || SpecError::Port {
            service: service.to_string(),
            port: p.clone(),
        };
        let (spec, proto) = match p.rsplit_once('/') {
            Some((spec, proto @ ("tcp" | "udp" | "sctp"))) => (spec, proto),
            Some(_) => return Err(err()),
            None => (p.as_str(), "tcp"),
        };
        let num = |x: &str| x.parse::<u16>().ok().filter(|n| *n > 0);
        let parts: Vec<&str> = spec.split(':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [ip, h, c] => (Some(*ip), Some(*h), *c),
            _ => return Err(err()),
        };
        let container = num(container).ok_or_else(err)?;
        if let Some(h) = host
            && !h.is_empty()
        {
            num(h).ok_or_else(err)?;
        }
        if let Some(ip) = ip {
            ip.parse::<std::net::IpAddr>().map_err(|_| err())?;
        }
        let binding = PortBinding {
            host_ip: ip.map(str::to_string),
            host_port: host.filter(|h| !h.is_empty()).map(str::to_string),
        };
        map.entry(format!("{container}/{proto}"))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(binding);
    }
    Ok(map)
}

fn restart(service: &str, s: &ServiceSettings) -> Result<Option<RestartPolicy>, SpecError> {
    let Some(policy) = &s.restart else {
        return Ok(None);
    };
    let (name, retries) = match policy.split_once(':') {
        Some(("on-failure", n)) => (
            RestartPolicyNameEnum::ON_FAILURE,
            Some(n.parse::<i64>().map_err(|_| SpecError::Restart {
                service: service.to_string(),
                policy: policy.clone(),
            })?),
        ),
        None => (
            match policy.as_str() {
                "no" => RestartPolicyNameEnum::NO,
                "always" => RestartPolicyNameEnum::ALWAYS,
                "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
                "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
                _ => {
                    return Err(SpecError::Restart {
                        service: service.to_string(),
                        policy: policy.clone(),
                    });
                }
            },
            None,
        ),
        Some(_) => {
            return Err(SpecError::Restart {
                service: service.to_string(),
                policy: policy.clone(),
            });
        }
    };
    Ok(Some(RestartPolicy {
        name: Some(name),
        maximum_retry_count: retries,
    }))
}

const NANOS: i64 = 1_000_000_000;

/// The container spec of `service` in `manifest` for this node.
pub fn container(
    names: &Names,
    manifest: &ReleaseManifest,
    service: &str,
) -> Result<ContainerCreateBody, SpecError> {
    let Some(svc) = manifest.services.get(service) else {
        return Err(SpecError::DependsOn(format!("no service {service}")));
    };
    let s = &svc.settings;
    let seq = manifest.sequence;
    let mut labels: HashMap<String, String> = s.labels.clone().into_iter().collect();
    labels.extend(names.node_labels());
    labels.insert(LABEL_RELEASE.to_string(), seq.0.to_string());
    labels.insert(LABEL_SERVICE.to_string(), service.to_string());
    let (named, anonymous) = volumes(service, s)?;
    let binds: Vec<String> = named
        .iter()
        .map(|v| {
            let mode = if v.read_only { ":ro" } else { "" };
            format!("{}:{}{mode}", names.volume(&v.name), v.target)
        })
        .collect();
    let port_map = ports(service, s)?;
    let (network_mode, networking) = match s.network_mode.as_deref() {
        None => {
            let endpoint = EndpointSettings {
                aliases: Some(vec![service.to_string()]),
                ..Default::default()
            };
            (
                Some(names.network()),
                Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(names.network(), endpoint)])),
                }),
            )
        }
        Some(m @ ("bridge" | "host" | "none")) => (Some(m.to_string()), None),
        Some(m) => match m.strip_prefix("service:") {
            Some(other) if manifest.services.contains_key(other) => (
                Some(format!("container:{}", names.container(other, seq))),
                None,
            ),
            _ => {
                return Err(SpecError::NetworkMode {
                    service: service.to_string(),
                    mode: m.to_string(),
                });
            }
        },
    };
    let healthcheck = s.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(h.test.clone()),
        interval: (h.interval_s > 0).then_some(i64::from(h.interval_s) * NANOS),
        timeout: (h.timeout_s > 0).then_some(i64::from(h.timeout_s) * NANOS),
        retries: (h.retries > 0).then_some(i64::from(h.retries)),
        start_period: (h.start_period_s > 0).then_some(i64::from(h.start_period_s) * NANOS),
        start_interval: None,
    });
    Ok(ContainerCreateBody {
        image: Some(names.image(service, seq)),
        cmd: s.command.clone(),
        entrypoint: s.entrypoint.clone(),
        env: Some(
            s.environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        labels: Some(labels),
        exposed_ports: Some(port_map.keys().cloned().collect()),
        volumes: (!anonymous.is_empty()).then_some(anonymous),
        healthcheck,
        hostname: (s.network_mode.is_none()).then(|| sanitize(service)),
        host_config: Some(HostConfig {
            binds: Some(binds),
            port_bindings: Some(port_map),
            restart_policy: restart(service, s)?,
            network_mode,
            ..Default::default()
        }),
        networking_config: networking,
        ..Default::default()
    })
}

/// The named volumes (compose names) the release's services mount.
pub fn release_volumes(manifest: &ReleaseManifest) -> Result<BTreeSet<String>, SpecError> {
    let mut out = BTreeSet::new();
    for (name, svc) in &manifest.services {
        for v in volumes(name, &svc.settings)?.0 {
            out.insert(v.name);
        }
    }
    Ok(out)
}

/// Services in start order: every service after those it depends on (ties by name).
pub fn start_order(manifest: &ReleaseManifest) -> Result<Vec<String>, SpecError> {
    let deps: BTreeMap<&str, Vec<&str>> = manifest
        .services
        .iter()
        .map(|(n, s)| {
            (
                n.as_str(),
                s.settings.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    for (n, ds) in &deps {
        if let Some(d) = ds.iter().find(|d| !deps.contains_key(*d)) {
            return Err(SpecError::DependsOn(format!(
                "{n} depends on {d}, which the release does not have"
            )));
        }
    }
    let mut order: Vec<String> = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    while done.len() < deps.len() {
        let ready: Vec<&str> = deps
            .iter()
            .filter(|(n, ds)| !done.contains(*n) && ds.iter().all(|d| done.contains(d)))
            .map(|(n, _)| *n)
            .collect();
        if ready.is_empty() {
            let left: Vec<&str> = deps
                .keys()
                .filter(|n| !done.contains(*n))
                .copied()
                .collect();
            return Err(SpecError::DependsOn(format!(
                "services depend on each other in a cycle: {}",
                left.join(", ")
            )));
        }
        for n in ready {
            done.insert(n);
            order.push(n.to_string());
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::{Digest, HealthCheck, ImageRef, RolloutPlan, Service, UnixTime};

    fn manifest(services: &[(&str, ServiceSettings)]) -> ReleaseManifest {
        ReleaseManifest {
            fleet: "Demo Fleet".into(),
            sequence: ReleaseSeq(7),
            commit: "c".into(),
            created: UnixTime(0),
            expires: UnixTime(1),
            arch: "amd64".into(),
            device_type: "t".into(),
            services: services
                .iter()
                .map(|(n, s)| {
                    (
                        n.to_string(),
                        Service {
                            image: ImageRef {
                                config: vec![],
                                config_digest: Digest::of(b""),
                                layers: vec![],
                            },
                            settings: s.clone(),
                        },
                    )
                })
                .collect(),
            rollout: RolloutPlan::all_at_once(),
        }
    }

    fn names() -> Names {
        Names {
            prefix: "shoal".into(),
            fleet: "Demo Fleet".into(),
            node: DeviceId([0xab; 32]),
        }
    }

    #[test]
    fn a_node_recognises_only_its_own_image_tags() {
        let names = Names {
            prefix: "shoal-local-7".into(),
            fleet: "local".into(),
            node: DeviceId([0xab; 32]),
        };
        let other = Names {
            node: DeviceId([0xcd; 32]),
            ..names.clone()
        };
        let mine = names.image("web", ReleaseSeq(12));
        assert!(names.is_own_image(&mine), "{mine}");
        assert!(!other.is_own_image(&mine), "{mine}");
        let other_prefix = Names {
            prefix: "shoal-local-8".into(),
            ..names.clone()
        };
        assert!(!other_prefix.is_own_image(&mine));
        for tag in [
            "busybox:latest",
            "shoal-local-7-local/web:latest",
            "shoal-local-7-local/web:r-abababababab",
            "shoal-local-7-local/a/b:r1-abababababab",
            "shoal-local-7-local/web:r1-abababababab-x",
        ] {
            assert!(!names.is_own_image(tag), "{tag}");
        }
    }

    #[test]
    fn specs_carry_settings_labels_and_per_node_names() {
        let s = ServiceSettings {
            command: Some(vec!["sleep".into(), "60".into()]),
            environment: [("A".to_string(), "1".to_string())].into(),
            ports: vec!["127.0.0.1:8080:80".into(), "53/udp".into()],
            volumes: vec!["data:/data".into(), "/cache".into()],
            restart: Some("unless-stopped".into()),
            labels: [("io.shoal.node".to_string(), "spoof".to_string())].into(),
            healthcheck: Some(HealthCheck {
                test: vec!["CMD".into(), "true".into()],
                interval_s: 1,
                timeout_s: 2,
                retries: 3,
                start_period_s: 0,
            }),
            ..Default::default()
        };
        let m = manifest(&[("web", s)]);
        let n = names();
        let c = container(&n, &m, "web").unwrap();
        assert_eq!(
            c.image.as_deref(),
            Some("shoal-demo-fleet/web:r7-abababababab")
        );
        assert_eq!(c.env, Some(vec!["A=1".to_string()]));
        let labels = c.labels.unwrap();
        assert_eq!(labels[LABEL_NODE], DeviceId([0xab; 32]).to_string());
        assert_eq!(labels[LABEL_RELEASE], "7");
        assert_eq!(labels[LABEL_SERVICE], "web");
        let h = c.host_config.unwrap();
        assert_eq!(
            h.binds,
            Some(vec!["shoal-demo-fleet-abababababab-data:/data".to_string()])
        );
        let ports = h.port_bindings.unwrap();
        assert_eq!(
            ports["80/tcp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some("8080")
        );
        assert!(ports.contains_key("53/udp"));
        assert_eq!(h.network_mode.as_deref(), Some(n.network().as_str()));
        assert_eq!(c.volumes, Some(vec!["/cache".to_string()]));
        assert_eq!(c.healthcheck.unwrap().interval, Some(NANOS));
        assert_eq!(
            n.container("web", ReleaseSeq(7)),
            "shoal-demo-fleet-abababababab-web-r7"
        );
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        let bad = |s: ServiceSettings| container(&names(), &manifest(&[("w", s)]), "w");
        let err = bad(ServiceSettings {
            volumes: vec!["/etc:/host-etc".into()],
            ..Default::default()
        });
        assert!(matches!(err, Err(SpecError::BindMount { .. })), "{err:?}");
        let err = bad(ServiceSettings {
            ports: vec!["99999:80".into()],
            ..Default::default()
        });
        assert!(matches!(err, Err(SpecError::Port { .. })), "{err:?}");
        let err = bad(ServiceSettings {
            restart: Some("sometimes".into()),
            ..Default::default()
        });
        assert!(matches!(err, Err(SpecError::Restart { .. })), "{err:?}");
        let err = bad(ServiceSettings {
            network_mode: Some("container:other".into()),
            ..Default::default()
        });
        assert!(matches!(err, Err(SpecError::NetworkMode { .. })), "{err:?}");
    }

    #[test]
    fn start_order_follows_depends_on_and_refuses_cycles() {
        let dep = |d: &[&str]| ServiceSettings {
            depends_on: d.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let m = manifest(&[("a", dep(&["c"])), ("b", dep(&[])), ("c", dep(&["b"]))]);
        assert_eq!(start_order(&m).unwrap(), ["b", "c", "a"]);
        let m = manifest(&[("a", dep(&["b"])), ("b", dep(&["a"]))]);
        assert!(matches!(start_order(&m), Err(SpecError::DependsOn(_))));
        let m = manifest(&[("a", dep(&["zzz"]))]);
        assert!(matches!(start_order(&m), Err(SpecError::DependsOn(_))));
    }
}
