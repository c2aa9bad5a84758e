//! Any bytes as a pushed `.shoal/shoal.yml` (or `.balena/balena.yml`): parsed, then every
//! service's build variables and secret mounts derived as the pipeline derives them; a secret's
//! source must stay inside the tree and its destination inside `/run/secrets`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_builder::pipeline::build_config::{self, CONFIG_FILES};

fuzz_target!(|data: &[u8]| {
    let (file, secrets_dir) = CONFIG_FILES[usize::from(data.first().is_some_and(|b| b & 1 == 1))];
    let Ok(c) = build_config::parse(file, data) else {
        return;
    };
    let mut services: Vec<&str> = vec!["main"];
    if let Some(v) = &c.build_variables {
        services.extend(v.services.keys().map(String::as_str));
    }
    if let Some(s) = &c.build_secrets {
        services.extend(s.services.keys().map(String::as_str));
    }
    for service in services {
        if let Ok(vars) = c.vars_for(service) {
            assert!(vars.keys().all(|k| k.trim() == k));
        }
        if let Ok(mounts) = c.secrets_for(secrets_dir, service) {
            for m in mounts {
                for p in [&m.source, &m.dest] {
                    assert!(!p.starts_with('/'));
                    assert!(p.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                    assert_eq!(build_config::normalize(p).as_deref(), Some(p.as_str()));
                }
                assert!(!m.dest.is_empty());
            }
        }
    }
});
