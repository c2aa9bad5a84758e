//! The dashboard in headless Chromium: filter the releases, save a view, reload and find it
//! again, open a release and see its log and wave progress, follow a live build log, and check
//! that user-controlled text is shown, never run. Skips (printing why) only when Chromium is not
//! installed. With `SHOAL_SCREENSHOTS=DIR` it also saves PNGs of the main pages there (the ones
//! under `docs/` were made this way).

mod support;

use std::sync::Arc;

use serde_json::json;
use shoal_builder::build_log::{BuildLog, Verdict};
use shoal_protocol::DeviceState;
use support::browser::Browser;
use support::inproc::{Dev, InProc};

const EVIL: &str = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=1</script>";

fn rows(b: &mut Browser, table: &str) -> usize {
    b.eval(&format!(
        "document.querySelectorAll('#{table} tbody tr').length"
    ))
    .as_u64()
    .unwrap() as usize
}

/// A fleet with history: two good releases, a failed one whose log and error carry markup, and
/// eight devices (one failing) on the latest release.
fn seed(b: &InProc) -> (support::inproc::Published, Vec<Dev>) {
    b.publish(
        "a1b2c3d4e5f60718293a4b5c6d7e8f9011223344",
        true,
        "Step 1/2 : FROM busybox\nStep 2/2 : COPY . /app\nSuccessfully built\n",
    );
    b.publish(
        "badbadbadbadbadbadbadbadbadbadbadbadbad0",
        false,
        &format!("Step 1/1 : RUN make\n{EVIL}\nerror: build failed\n"),
    );
    let log = "Step 1/3 : FROM busybox\nStep 2/3 : COPY web /srv\nStep 3/3 : CMD [\"httpd\"]\nexporting layers\nchunks: 412 (3.1 MiB new)\nsigned release manifest\n";
    let r = b.publish("c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00", true, log);
    let sites = [
        "store-12", "store-12", "store-40", "depot", "depot", "depot", "lab", "lab",
    ];
    let devs: Vec<Dev> = (0..8)
        .map(|i| Dev::new(10 + i as u8, &format!("kiosk-{:02}", i + 1)))
        .collect();
    for (d, site) in devs.iter().zip(sites) {
        b.register(d, site);
    }
    for (i, d) in devs.iter().enumerate() {
        let states: &[DeviceState] = match i {
            0..=3 => &[DeviceState::Staged, DeviceState::Healthy],
            4 => &[DeviceState::Staged, DeviceState::Failed],
            5 => &[DeviceState::Staged, DeviceState::Applying],
            6 => &[DeviceState::Staged],
            _ => &[],
        };
        for (n, st) in states.iter().enumerate() {
            let resp = b.post_report(d, &d.report(&r, *st, n as u64 + 1));
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    }
    (r, devs)
}

#[test]
fn the_releases_page_filters_saves_a_view_and_opens_a_release_with_its_log_and_waves() {
    let Some(mut br) = Browser::start("dashboard browser test") else {
        return;
    };
    let b = InProc::start();
    let (latest, _devs) = seed(&b);
    let base = b.url();

    // The releases page lists all three, newest first.
    br.goto(&format!("{base}/ui/fleets/demo/releases"));
    assert_eq!(rows(&mut br, "releases"), 3);
    assert_eq!(
        br.eval("document.querySelector('#releases tbody tr td:nth-child(3)').textContent"),
        json!("c0ffee00c0")
    );
    assert_eq!(
        br.eval("document.querySelector('#releases tbody tr td:nth-child(7)').textContent"),
        json!("4"),
        "device count of the latest release"
    );

    // Filter to the failed ones.
    br.navigating(
        "document.querySelector('select[name=status]').value = 'failed'; document.getElementById('filters').requestSubmit()",
    );
    assert!(
        br.eval("location.search")
            .as_str()
            .unwrap()
            .contains("status=failed")
    );
    assert_eq!(rows(&mut br, "releases"), 1);
    assert!(
        br.eval("document.querySelector('#releases tbody tr').textContent")
            .as_str()
            .unwrap()
            .contains("badbadbadb")
    );

    // Saving needs a token; without one the API's refusal is shown and nothing is saved.
    br.eval("document.querySelector('#save-view input[name=name]').value = 'Failures only'; document.getElementById('save-view').requestSubmit()");
    br.wait_until("document.getElementById('flash').textContent.startsWith('401')");
    assert_eq!(b.get_json("/api/v1/fleets/demo/views")["views"], json!([]));
    // Type the token into the header, save again.
    br.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('token-save').click()",
        json!(b.push_token)
    ));
    assert_eq!(
        br.eval("document.getElementById('token-state').textContent"),
        json!("token set")
    );
    br.navigating("document.getElementById('save-view').requestSubmit()");
    let views = b.get_json("/api/v1/fleets/demo/views");
    assert_eq!(views["views"][0]["name"], "Failures only");

    // A fresh, unfiltered load shows the view; following it filters again.
    br.goto(&format!("{base}/ui/fleets/demo/releases"));
    assert_eq!(rows(&mut br, "releases"), 3);
    br.call("Page.reload", json!({}));
    br.wait_loaded();
    assert_eq!(
        br.eval("Array.from(document.querySelectorAll('#views a.view')).map(a => a.textContent)"),
        json!(["Failures only"])
    );
    br.navigating("document.querySelector('#views a[data-view=\"Failures only\"]').click()");
    assert_eq!(rows(&mut br, "releases"), 1);
    assert_eq!(
        br.eval("document.querySelector('#views a.view.active').textContent"),
        json!("Failures only")
    );
    if let Ok(dir) = std::env::var("SHOAL_SCREENSHOTS") {
        br.goto(&format!("{base}/ui/fleets/demo/releases"));
        br.screenshot(&std::path::Path::new(&dir).join("releases.png"));
    }

    // The failed release: markup in its log and error is shown as text, never run.
    br.goto(&format!("{base}/ui/fleets/demo/releases?status=failed"));
    br.navigating("document.querySelector('#releases tbody tr a').click()");
    assert!(
        br.eval("document.getElementById('log').textContent")
            .as_str()
            .unwrap()
            .contains(EVIL)
    );
    assert_eq!(br.eval("typeof window.pwned"), json!("undefined"));
    assert_eq!(
        br.eval("document.querySelectorAll('main img, main script').length"),
        json!(0)
    );

    // The latest release: log, waves and devices.
    br.goto(&format!("{base}/ui/fleets/demo/releases"));
    br.navigating(&format!(
        "document.querySelector('#releases tr[data-release=\"{}\"] a').click()",
        latest.id
    ));
    assert!(
        br.eval("location.pathname")
            .as_str()
            .unwrap()
            .ends_with(&format!("/ui/releases/{}", latest.id))
    );
    let log = br.eval("document.getElementById('log').textContent");
    assert!(
        log.as_str().unwrap().contains("signed release manifest"),
        "{log}"
    );
    assert_eq!(
        br.eval("document.getElementById('log').dataset.live"),
        json!("false")
    );
    assert_eq!(rows(&mut br, "waves"), 4);
    let api = b.get_json(&format!("/api/v1/releases/{}/devices", latest.id));
    for w in 0..4 {
        let cells = br.eval(&format!(
            "Array.from(document.querySelectorAll('#waves tr[data-wave=\"{w}\"] td')).slice(2, 6).map(td => Number(td.textContent))"
        ));
        let want = &api["waves"][w];
        assert_eq!(
            cells,
            json!([
                want["devices"],
                want["reported"],
                want["healthy"],
                want["failed"]
            ]),
            "wave {w}"
        );
    }
    let total: u64 = (0..4)
        .map(|w| api["waves"][w]["devices"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 8);
    assert_eq!(rows(&mut br, "release-devices"), 8);
    let states = br.eval("Array.from(document.querySelectorAll('#release-devices .badge')).map(b => b.textContent).sort()");
    assert_eq!(
        states,
        json!([
            "applying", "failed", "healthy", "healthy", "healthy", "healthy", "staged"
        ])
    );
    assert!(
        br.eval("document.getElementById('compose').textContent")
            .as_str()
            .unwrap()
            .contains("web:")
    );
    if let Ok(dir) = std::env::var("SHOAL_SCREENSHOTS") {
        br.screenshot(&std::path::Path::new(&dir).join("release.png"));
        br.goto(&format!("{base}/ui/fleets/demo/devices"));
        br.screenshot(&std::path::Path::new(&dir).join("devices.png"));
        br.goto(&format!("{base}/ui/fleets/demo/settings"));
        br.screenshot(&std::path::Path::new(&dir).join("settings.png"));
    }
}

#[test]
fn a_running_build_log_streams_into_the_release_page() {
    let Some(mut br) = Browser::start("live log browser test") else {
        return;
    };
    let b = InProc::start();
    let (id, log) = b.rt.block_on(async {
        let fleet = b.app.db.fleet("demo").await.unwrap().unwrap();
        let id = b
            .app
            .db
            .start_release(
                &fleet,
                "feed0000feed0000feed0000feed0000feed0000",
                "refs/heads/master",
                support::now() as i64,
            )
            .await
            .unwrap();
        let log = Arc::new(BuildLog::default());
        log.line("Step 1/2 : FROM busybox");
        b.app.running.lock().unwrap().insert(id, log.clone());
        (id, log)
    });
    br.goto(&format!("{}/ui/releases/{id}", b.url()));
    assert_eq!(
        br.eval("document.getElementById('log').dataset.live"),
        json!("true")
    );
    br.wait_until("document.getElementById('log').textContent.includes('Step 1/2')");
    log.line("Step 2/2 : RUN <make> && echo done");
    br.wait_until(
        "document.getElementById('log').textContent.includes('Step 2/2 : RUN <make> && echo done')",
    );
    log.line("build finished");
    br.wait_until("document.getElementById('log').textContent.includes('build finished')");
    // When the build ends the page reloads with the stored log.
    b.rt.block_on(async {
        b.app.db.save_log(id, &log.text()).await.unwrap();
        b.app.running.lock().unwrap().remove(&id);
        log.finish(Verdict::Accept);
    });
    br.wait_until(
        "document.getElementById('log') && document.getElementById('log').dataset.live === 'false'",
    );
    assert!(
        br.eval("document.getElementById('log').textContent")
            .as_str()
            .unwrap()
            .contains("build finished")
    );
}

#[test]
fn operator_actions_from_the_dashboard_need_an_operator_token() {
    let Some(mut br) = Browser::start("dashboard operator browser test") else {
        return;
    };
    let b = InProc::start();
    let (latest, _) = seed(&b);
    let base = b.url();
    br.goto(&format!("{base}/ui/fleets/demo/settings"));
    br.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('token-save').click()",
        json!(b.push_token)
    ));
    br.eval(&format!(
        "document.querySelector('form[data-pin] select').value = '{}'; document.querySelector('form[data-pin]').requestSubmit()",
        latest.sequence
    ));
    br.wait_until("document.getElementById('flash').textContent.startsWith('403')");
    assert_eq!(
        b.get_json("/api/v1/fleets/demo/audit")["entries"],
        json!([])
    );
    // Forget the push token, use the operator's.
    br.eval("document.getElementById('token-save').click()");
    br.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('token-save').click()",
        json!(b.operator_token)
    ));
    br.navigating(&format!(
        "document.querySelector('form[data-pin] select').value = '{}'; document.querySelector('form[data-pin]').requestSubmit()",
        latest.sequence
    ));
    assert!(
        br.eval("document.querySelector('.grid').textContent")
            .as_str()
            .unwrap()
            .contains(&format!("#{}", latest.sequence))
    );
    br.goto(&format!("{base}/ui/fleets/demo/audit"));
    assert_eq!(rows(&mut br, "audit"), 1);
    assert!(
        br.eval("document.querySelector('#audit tbody tr').textContent")
            .as_str()
            .unwrap()
            .contains("fleet.pin")
    );
}
