//! End-to-end tests: a real `shoal-builder serve` process, the stock git client and the real
//! Docker Engine. Tests that need the Engine print why and return early when none is reachable.
//! The base image `busybox:latest` is made locally by `scripts/base-image.sh` when missing.

mod support;

use std::collections::BTreeSet;

use shoal_protocol::{TrustRoot, UnixTime};
use shoal_testing::pseudo_random;
use support::*;

#[test]
fn compose_project_with_two_services_builds_and_publishes_a_verifiable_release() {
    let Some(b) = Builder::start_with_engine("compose") else {
        return;
    };
    let p = Project::new(&[
        (
            "docker-compose.yml",
            "version: '2.1'\nservices:\n  web:\n    build: ./web\n    ports: ['8080:80']\n    labels:\n      io.balena.update.strategy: kill-then-download\n  api:\n    build: ./api\n    environment:\n      MODE: prod\n    depends_on: [web]\n",
        ),
        (
            "web/Dockerfile",
            "FROM busybox\nCOPY . /www/\nRUN test -f /www/index.html && test ! -e /www/notes.md\nCMD [\"httpd\", \"-f\", \"-h\", \"/www\"]\n",
        ),
        ("web/index.html", "<h1>hello</h1>\n"),
        ("web/notes.md", "not for the image\n"),
        ("web/.dockerignore", "*.md\n"),
        (
            "api/Dockerfile.template",
            "FROM busybox\nLABEL arch=%%SHOAL_ARCH%%\nRUN echo api-built-for-%%BALENA_MACHINE_NAME%% > /api.txt\n",
        ),
    ]);
    let out = p.push(&b.remote(), "master");
    assert!(out.ok, "push failed:\n{}", out.stderr);
    assert!(
        out.stderr.contains("remote: [web] Step 1/4 : FROM busybox"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("remote: [api] Step"), "{}", out.stderr);
    assert!(
        out.stderr.contains("api-built-for-generic-amd64"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("image size"),
        "summary table missing:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("published as sequence 1"),
        "{}",
        out.stderr
    );

    let list = b.get_json("/api/v1/fleets/demo/releases");
    let releases = list["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 1);
    let r = &releases[0];
    assert_eq!(r["status"], "success");
    assert_eq!(r["sequence"], 1);
    assert_eq!(r["commit"], p.head());
    assert!(r["compose"].as_str().unwrap().contains("services:"));
    let names: BTreeSet<_> = r["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["api".to_string(), "web".to_string()])
    );

    // A device provisioned with the fleet's trust root accepts the announcement and manifest.
    let m = b.verified_release(r["id"].as_i64().unwrap());
    assert_eq!(m.services.len(), 2);
    let web = &m.services["web"].settings;
    assert_eq!(web.ports, ["8080:80"]);
    assert_eq!(
        web.update_strategy,
        shoal_protocol::UpdateStrategy::KillThenDownload
    );
    assert_eq!(m.services["api"].settings.environment["MODE"], "prod");
    assert_eq!(m.services["api"].settings.depends_on, ["web"]);
    assert_eq!(m.rollout, shoal_protocol::RolloutPlan::canary());
    // Every chunk can be fetched and matches its digest.
    for c in m.unique_chunks() {
        let bytes = b.get_bytes(&format!("/chunks/{}", c.digest));
        assert_eq!(shoal_protocol::Digest::of(&bytes), c.digest);
    }
    for s in m.services.values() {
        assert!(s.image.layers.iter().all(|l| l.is_consistent()));
    }
}

#[test]
fn template_variables_are_resolved() {
    let Some(b) = Builder::start_with_engine("template") else {
        return;
    };
    let p = Project::new(&[(
        "Dockerfile.template",
        "FROM busybox\nLABEL fleet=%%SHOAL_FLEET%% service=%%SHOAL_SERVICE_NAME%% hash=%%BALENA_RELEASE_HASH%%\nRUN echo vars: %%SHOAL_ARCH%% %%SHOAL_DEVICE_TYPE%% %%BALENA_ARCH%% %%BALENA_APP_NAME%%\n",
    )]);
    let out = p.push(&b.remote(), "master");
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("vars: amd64 generic-amd64 amd64 demo"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("%%"), "{}", out.stderr);
    let m = b.verified_release(b.latest_release()["id"].as_i64().unwrap());
    let config: serde_json::Value =
        serde_json::from_slice(&m.services["main"].image.config).unwrap();
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["fleet"], "demo");
    assert_eq!(labels["service"], "main");
    assert_eq!(labels["hash"], p.head());
}

#[test]
fn second_push_changing_one_file_stores_far_fewer_new_bytes() {
    let Some(b) = Builder::start_with_engine("delta") else {
        return;
    };
    let p = Project::new(&[
        (
            "Dockerfile",
            "FROM busybox\nCOPY big.bin /data/big.bin\nCOPY small.txt /data/small.txt\n",
        ),
        ("small.txt", "version 1\n"),
    ]);
    p.write_bytes("big.bin", &pseudo_random(6 * 1024 * 1024, 7));
    p.commit("big file");
    let out = p.push(&b.remote(), "master");
    assert!(out.ok, "{}", out.stderr);
    let first = b.latest_release();
    assert_eq!(first["status"], "success");
    let image = first["image_bytes"].as_i64().unwrap();
    assert!(image > 6 * 1024 * 1024, "{first}");
    assert!(
        first["new_bytes"].as_i64().unwrap() > 6 * 1024 * 1024,
        "{first}"
    );

    p.write("small.txt", "version 2\n");
    p.commit("change one file");
    let out = p.push(&b.remote(), "master");
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("published as sequence 2"),
        "{}",
        out.stderr
    );
    let second = b.latest_release();
    let new2 = second["new_bytes"].as_i64().unwrap();
    let image2 = second["image_bytes"].as_i64().unwrap();
    println!("image {image2} bytes, second push stored {new2} new bytes");
    assert!(new2 > 0, "the changed layer is new: {second}");
    assert!(new2 * 20 < image2, "{new2} new of {image2}: {second}");

    // The list filters.
    let count = |q: &str| {
        b.get_json(&format!("/api/v1/fleets/demo/releases?{q}"))["releases"]
            .as_array()
            .unwrap()
            .len()
    };
    let first_commit = first["commit"].as_str().unwrap();
    assert_eq!(count(&format!("commit={}", &first_commit[..10])), 1);
    assert_eq!(count("status=success"), 2);
    assert_eq!(count("status=failed"), 0);
    assert_eq!(count(&format!("since={}", first["created"])), 2);
    assert_eq!(count(&format!("since={}", now() + 3600)), 0);
    assert_eq!(count("until=1000"), 0);
}

#[test]
fn package_json_project_gets_an_implicit_dockerfile() {
    let Some(b) = Builder::start_with_engine("node") else {
        return;
    };
    // No registry: the `node` base image is made locally, with a stand-in `npm`.
    ensure_node_image();
    let p = Project::new(&[
        (
            "package.json",
            "{\"name\": \"app\", \"scripts\": {\"start\": \"node index.js\"}}\n",
        ),
        ("index.js", "console.log('hi')\n"),
    ]);
    let out = p.push(&b.remote(), "master");
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("package.json (implicit Dockerfile)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("RUN npm install"), "{}", out.stderr);
    let m = b.verified_release(b.latest_release()["id"].as_i64().unwrap());
    let config: serde_json::Value =
        serde_json::from_slice(&m.services["main"].image.config).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["npm", "start"]));
    assert_eq!(config["config"]["WorkingDir"], "/usr/src/app");
}

#[test]
fn failing_build_rejects_the_push_and_records_a_failed_release() {
    let Some(b) = Builder::start_with_engine("failing") else {
        return;
    };
    let p = Project::new(&[(
        "Dockerfile",
        "FROM busybox\nRUN echo about-to-fail && exit 3\n",
    )]);
    let out = p.push(&b.remote(), "master");
    assert!(!out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("remote: about-to-fail"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("returned a non-zero code: 3"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("pre-receive hook declined"),
        "{}",
        out.stderr
    );
    let failed = b.get_json("/api/v1/fleets/demo/releases?status=failed");
    let r = &failed["releases"][0];
    assert_eq!(r["status"], "failed");
    assert_eq!(r["sequence"], serde_json::Value::Null);
    assert!(
        r["error"].as_str().unwrap().contains("non-zero code"),
        "{r}"
    );
    let log = b.get_text(&format!("/api/v1/releases/{}/logs", r["id"]));
    assert!(log.contains("about-to-fail"), "{log}");
    assert!(
        b.get_json("/api/v1/fleets/demo/releases?status=success")["releases"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The ref was not accepted.
    assert_eq!(ls_remote(&b.remote()), "");
}

#[test]
fn branch_push_is_accepted_without_a_build_and_builds_when_pushed_to_master() {
    let Some(b) = Builder::start_with_engine("branch") else {
        return;
    };
    let p = Project::new(&[("Dockerfile", "FROM busybox\nRUN echo branch-build\n")]);
    let out = p.push(&b.remote(), "master:feature");
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("feature: accepted without a build"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("branch-build"), "{}", out.stderr);
    assert!(
        b.get_json("/api/v1/fleets/demo/releases")["releases"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(ls_remote(&b.remote()).contains("refs/heads/feature"));

    let out = p.push(&b.remote(), "master:master");
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("branch-build"), "{}", out.stderr);
    assert_eq!(b.latest_release()["git_ref"], "refs/heads/master");
}

#[test]
fn push_without_a_valid_token_is_refused_and_stores_nothing() {
    let b = Builder::start("auth");
    let p = Project::new(&[("Dockerfile", "FROM busybox\n")]);
    let anonymous = format!("{}/git/demo.git", b.url);
    let out = p.push(&anonymous, "master");
    assert!(!out.ok, "{}", out.stderr);
    let wrong = format!("http://git:shoal_wrong@{}/git/demo.git", b.addr());
    let out = p.push(&wrong, "master");
    assert!(!out.ok);
    assert!(
        out.stderr.contains("Authentication failed"),
        "{}",
        out.stderr
    );
    let (status, headers, _) = http_request(
        &b.addr(),
        "GET",
        "/git/demo.git/info/refs?service=git-receive-pack",
        &[],
        b"",
    );
    assert_eq!(status, 401);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{headers}"
    );
    assert_eq!(ls_remote(&b.remote()), "");
    // No object reached the repository either.
    let objects = b.data.path().join("repos/demo.git/objects");
    let stored: Vec<_> = walk_files(&objects)
        .into_iter()
        .filter(|p| {
            let loose = p.parent().and_then(|d| d.file_name()).is_some_and(|d| {
                d.len() == 2 && d.to_string_lossy().bytes().all(|b| b.is_ascii_hexdigit())
            });
            loose || p.extension().is_some_and(|e| e == "pack")
        })
        .collect();
    assert!(stored.is_empty(), "{stored:?}");
    assert!(
        b.get_json("/api/v1/fleets/demo/releases")["releases"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn build_secrets_are_mounted_while_building_and_absent_from_the_image() {
    let Some(b) = Builder::start_with_engine("secrets") else {
        return;
    };
    let p = Project::new(&[
        (
            "Dockerfile",
            // md5 of the secret: the Dockerfile (and so the image history) never holds the secret.
            "FROM busybox\nCOPY . /app\nRUN md5sum /run/secrets/api-key | grep -q 9a84ce21d06a7631a81e3563853dedda && echo secret-was-mounted > /proof\nRUN test ! -e /app/.shoal/secrets/key.txt\n",
        ),
        (
            ".shoal/shoal.yml",
            "build-secrets:\n  global:\n    - source: key.txt\n      dest: api-key\n",
        ),
        (".shoal/secrets/key.txt", "TOPSECRET-4711"),
    ]);
    let out = p.push(&b.remote(), "master");
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("mount 1 secret(s)"), "{}", out.stderr);
    let r = b.latest_release();
    assert_eq!(r["status"], "success");
    let m = b.verified_release(r["id"].as_i64().unwrap());
    let config = String::from_utf8_lossy(&m.services["main"].image.config).to_string();
    assert!(!config.contains("TOPSECRET"), "{config}");
    // Every byte of every layer is in the store: the secret is in none of them, the proof is.
    assert!(b.store_contains(b"secret-was-mounted"));
    assert!(!b.store_contains(b"TOPSECRET-4711"));
}

#[test]
fn garbage_requests_get_json_4xx() {
    let b = Builder::start("garbage");
    let auth = format!("Authorization: Bearer {}", b.token);
    for (method, path, headers, body, want) in [
        (
            "POST",
            "/api/v1/fleets",
            vec![auth.as_str()],
            &b"\x00\xffnot json"[..],
            400,
        ),
        (
            "POST",
            "/api/v1/fleets",
            vec![auth.as_str()],
            &b"{\"name\": 5}"[..],
            400,
        ),
        ("POST", "/api/v1/fleets", vec![], &b"{}"[..], 401),
        (
            "POST",
            "/api/v1/fleets",
            vec![auth.as_str()],
            &b"{\"name\":\"Bad Name\",\"arch\":\"amd64\",\"device_type\":\"x\"}"[..],
            422,
        ),
        (
            "POST",
            "/api/v1/fleets",
            vec![auth.as_str()],
            &b"{\"name\":\"demo\",\"arch\":\"amd64\",\"device_type\":\"x\"}"[..],
            409,
        ),
        (
            "POST",
            "/internal/hooks/pre-receive",
            vec![],
            &b"garbage"[..],
            401,
        ),
        (
            "POST",
            "/internal/hooks/pre-receive",
            vec!["X-Shoal-Hook-Secret: nope"],
            &b"garbage"[..],
            401,
        ),
        ("GET", "/api/v1/releases/abc", vec![], &b""[..], 400),
        ("GET", "/api/v1/releases/999", vec![], &b""[..], 404),
        (
            "GET",
            "/api/v1/fleets/demo/releases?since=yesterday",
            vec![],
            &b""[..],
            400,
        ),
        (
            "GET",
            "/api/v1/fleets/demo/releases?status=great",
            vec![],
            &b""[..],
            400,
        ),
        ("GET", "/api/v1/fleets/nope/releases", vec![], &b""[..], 404),
        ("GET", "/chunks/not-a-digest", vec![], &b""[..], 400),
        ("GET", "/nowhere", vec![], &b""[..], 404),
    ] {
        let (status, _, body) = http_request(&b.addr(), method, path, &headers, body);
        assert_eq!(
            status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&body)
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            panic!(
                "{method} {path}: not JSON: {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert!(v["error"].is_string(), "{v}");
    }
    // A well-formed request still works afterwards.
    let (status, _, _) = http_request(
        &b.addr(),
        "POST",
        "/api/v1/fleets",
        &[auth.as_str()],
        b"{\"name\":\"other\",\"arch\":\"aarch64\",\"device_type\":\"raspberrypi4-64\"}",
    );
    assert_eq!(status, 201);
}

#[test]
fn data_dir_keys_and_trust_root_are_made_on_first_start() {
    use std::os::unix::fs::PermissionsExt;
    let b = Builder::start("firststart");
    for k in ["root.key", "release.key"] {
        let mode = std::fs::metadata(b.data.path().join("keys").join(k))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{k}");
    }
    assert!(
        b.stdout_lines
            .iter()
            .any(|l| l.starts_with("release key fingerprint: "))
    );
    let bytes = b.get_bytes("/api/v1/fleets/demo/trust-root");
    assert_eq!(
        bytes,
        std::fs::read(b.data.path().join("fleets/demo/trust-root.bin")).unwrap()
    );
    let env: shoal_protocol::Envelope = shoal_protocol::encoding::decode(&bytes).unwrap();
    let root = TrustRoot::open_initial(&env).unwrap();
    assert_eq!(root.fleet, "demo");
    assert!(root.expires > UnixTime(now()));
}

#[test]
fn a_release_running_at_restart_is_marked_interrupted() {
    let Some(mut b) = Builder::start_with_engine("restart") else {
        return;
    };
    let p = Project::new(&[(
        "Dockerfile",
        &format!(
            "FROM busybox\nLABEL nonce={}\nRUN echo sleeping && sleep 120\n",
            nonce()
        ),
    )]);
    let remote = b.remote();
    let pusher = std::thread::spawn(move || p.push(&remote, "master"));
    let id = wait_for(|| {
        let r = b.get_json("/api/v1/fleets/demo/releases?status=running");
        r["releases"][0]["id"].as_i64()
    });
    // Follow the live log until the build is inside the long step.
    wait_for(|| {
        let (_, _, body) = http_request(
            &b.addr(),
            "GET",
            &format!("/api/v1/releases/{id}/logs?follow=false"),
            &[],
            b"",
        );
        String::from_utf8_lossy(&body)
            .contains("Step 3/3")
            .then_some(())
    });
    b.kill();
    let _ = pusher.join();
    b.restart();
    assert!(
        b.stdout_lines.iter().any(|l| l.contains("as interrupted")),
        "{:?}",
        b.stdout_lines
    );
    let r = b.get_json(&format!("/api/v1/releases/{id}"));
    assert_eq!(r["status"], "interrupted");
}

#[test]
fn a_pusher_that_goes_away_cancels_the_build_and_log_followers_see_it_live() {
    let Some(b) = Builder::start_with_engine("cancel") else {
        return;
    };
    // A fresh label first, so the Engine's build cache cannot skip the slow step.
    let p = Project::new(&[(
        "Dockerfile",
        &format!(
            "FROM busybox\nLABEL nonce={}\nRUN for i in $(seq 1 300); do echo tick $i; sleep 1; done\n",
            nonce()
        ),
    )]);
    let mut pusher = p.push_in_background(&b.remote(), "master");
    let id = wait_for(|| {
        b.get_json("/api/v1/fleets/demo/releases?status=running")["releases"][0]["id"].as_i64()
    });
    let addr = b.addr();
    let follower = std::thread::spawn(move || {
        http_request(
            &addr,
            "GET",
            &format!("/api/v1/releases/{id}/logs"),
            &[],
            b"",
        )
    });
    wait_for(|| {
        let (_, _, body) = http_request(
            &b.addr(),
            "GET",
            &format!("/api/v1/releases/{id}/logs?follow=false"),
            &[],
            b"",
        );
        String::from_utf8_lossy(&body)
            .contains("tick 2")
            .then_some(())
    });
    pusher.kill_group();
    let (status, _, body) = follower.join().unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert!(text.contains("tick 2"), "{text}");
    assert!(text.contains("error: the pusher disconnected"), "{text}");
    let r = b.get_json(&format!("/api/v1/releases/{id}"));
    assert_eq!(r["status"], "cancelled", "{r}");
    assert!(!text.contains("tick 300"), "{text}");
}
