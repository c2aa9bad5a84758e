//! `shoal-builder local-fleet`: starts a [`LocalFleet`], pushes the bundled `examples/hello`,
//! shows the build, the rollout wave by wave and every device with progress bars, then the
//! running containers; then pushes a one-line change and shows the delta rolling out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_node::daemon::BoxFuture;
use shoal_node::daemon::metrics::PeerClass;

use super::{HELLO, LocalError, LocalFleet, Options, commit_all, init_project};
use crate::pipeline::human;
use crate::steering::Progress;

/// Longest a rollout may take before the demo gives up on it.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);

/// Lists the fleet's running containers as `(name, state, image)`.
pub type ContainersFn = Arc<dyn Fn() -> BoxFuture<Vec<(String, String, String)>> + Send + Sync>;

/// What the demo needs besides the fleet.
#[derive(Clone)]
pub struct Demo {
    /// How to start the fleet.
    pub fleet: Options,
    /// Lists the containers the devices run.
    pub containers: ContainersFn,
    /// End after the second rollout with a summary.
    pub exit: bool,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("fleet", &self.fleet)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

/// Timings and bytes of one push, for the summary. The builder's figures come from the
/// release it recorded; distribution and apply from the devices' own milestones
/// ([`shoal_node::daemon::Status::milestones`]), all on this machine's clock.
#[derive(Debug, Clone, Default)]
pub struct Rollout {
    /// Sequence published.
    pub sequence: u64,
    /// Push start to git's "accepted" (the builder answers once it has published).
    pub push_ms: u64,
    /// The builder building the images in the Engine.
    pub build_ms: u64,
    /// The builder exporting, chunking and storing the images, signing and seeding the release.
    pub publish_ms: u64,
    /// The first device's announcement to the last device having every chunk (staged).
    pub distribute_ms: Option<u64>,
    /// The longest any device took from activating (its wave open, the release staged) to
    /// running the release's containers.
    pub apply_ms: Option<u64>,
    /// The longest any device took from running to healthy (committed).
    pub health_ms: Option<u64>,
    /// Push start to the last device running the release.
    pub running_ms: Option<u64>,
    /// Push start to the last device healthy.
    pub healthy_ms: Option<u64>,
    /// Layer bytes of the release's images.
    pub image_bytes: u64,
    /// Bytes the builder stored new for it.
    pub new_bytes: u64,
    /// Bytes devices received, from the builder's origin and from peers.
    pub from_builder: u64,
    /// Bytes devices received from each other.
    pub from_peers: u64,
    /// Whether every device committed it.
    pub complete: bool,
}

/// Unix milliseconds now.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn secs(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "n/a".to_string(),
        |ms| format!("{:.1}s", ms as f64 / 1e3),
    )
}

impl Rollout {
    /// Fills the distribution and apply figures from the devices' milestones of the release;
    /// `pushed_ms` is when the push started.
    pub fn time_from(&mut self, statuses: &[shoal_node::daemon::Status], pushed_ms: u64) {
        let seq = self.sequence;
        let each = |what: &str| -> Option<Vec<u64>> {
            statuses.iter().map(|s| s.milestone(seq, what)).collect()
        };
        let announced = each("announced").and_then(|v| v.into_iter().min());
        let staged = each("staged").and_then(|v| v.into_iter().max());
        self.distribute_ms = announced.zip(staged).map(|(a, s)| s.saturating_sub(a));
        let span = |from: &str, to: &str| -> Option<u64> {
            statuses
                .iter()
                .map(|s| {
                    Some(
                        s.milestone(seq, to)?
                            .saturating_sub(s.milestone(seq, from)?),
                    )
                })
                .collect::<Option<Vec<u64>>>()
                .and_then(|v| v.into_iter().max())
        };
        self.apply_ms = span("applying", "running");
        self.health_ms = span("running", "healthy");
        let last = |what: &str| {
            each(what)
                .and_then(|v| v.into_iter().max())
                .map(|t| t.saturating_sub(pushed_ms))
        };
        self.running_ms = last("running");
        self.healthy_ms = last("healthy");
    }

    /// The summary lines.
    pub fn summary(&self, name: &str) -> [String; 3] {
        [
            format!(
                "  {name} (sequence {}): all devices running {} after the push began, healthy after {}",
                self.sequence,
                secs(self.running_ms),
                secs(self.healthy_ms),
            ),
            format!(
                "    build {}, publish {} (push accepted after {}), distribution {} (announcement to the last device staged), apply {} (longest device: activation to running), health {}",
                secs(Some(self.build_ms)),
                secs(Some(self.publish_ms)),
                secs(Some(self.push_ms)),
                secs(self.distribute_ms),
                secs(self.apply_ms),
                secs(self.health_ms),
            ),
            format!(
                "    image {}, new in the builder {}, moved {} from the builder + {} between devices",
                human(self.image_bytes),
                human(self.new_bytes),
                human(self.from_builder),
                human(self.from_peers)
            ),
        ]
    }
}

/// Runs the demo; returns whether every device runs the last release.
pub async fn run(demo: Demo) -> Result<bool, LocalError> {
    let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
    let say = |s: String| say_line(&mp, s);
    say(format!(
        "Starting a local fleet: a builder and {} devices on loopback",
        demo.fleet.keys.len()
    ));
    let fleet = LocalFleet::start(demo.fleet.clone()).await?;
    say(format!(
        "  data in {} (builder log: builder.log), builder at {}",
        fleet.dir.path().display(),
        fleet.url
    ));
    let project = fleet.dir.path().join("hello");
    init_project(&project, HELLO)?;

    let first = push_and_roll_out(&mp, &fleet, &project, "examples/hello").await?;
    show_containers(&mp, &demo).await;

    // The one-line change.
    let index = project.join("web/index.html");
    let text = std::fs::read_to_string(&index).map_err(|e| LocalError::Run {
        what: "read web/index.html".into(),
        message: e.to_string(),
    })?;
    std::fs::write(&index, text.replace("version 1", "version 2")).map_err(|e| {
        LocalError::Run {
            what: "write web/index.html".into(),
            message: e.to_string(),
        }
    })?;
    commit_all(&project, "web: version 2")?;
    say(String::new());
    say("Pushing a one-line change (web/index.html: version 1 -> version 2)".into());
    let second = push_and_roll_out(&mp, &fleet, &project, "the one-line change").await?;
    show_containers(&mp, &demo).await;

    say(String::new());
    say("Summary".into());
    for (name, r) in [("first push", &first), ("one-line change", &second)] {
        for line in r.summary(name) {
            say(line);
        }
    }
    let ok = first.complete && second.complete;
    if demo.exit {
        say(if ok {
            format!(
                "Every device runs sequence {}: the rollout is complete.",
                second.sequence
            )
        } else {
            "Not every device runs the last release.".into()
        });
        fleet.shutdown().await;
        return Ok(ok);
    }
    say("The fleet keeps running; press Ctrl-C to stop it.".into());
    let _ = tokio::signal::ctrl_c().await;
    fleet.shutdown().await;
    Ok(ok)
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Pushes, follows the build, then the rollout until it completes, pauses or times out.
async fn push_and_roll_out(
    mp: &MultiProgress,
    fleet: &LocalFleet,
    project: &std::path::Path,
    what: &str,
) -> Result<Rollout, LocalError> {
    let before: Vec<(u64, u64)> = fleet
        .devices
        .iter()
        .map(|d| {
            let c = d.handle.counters();
            (c.bytes_in(PeerClass::Origin), c.total_in())
        })
        .collect();
    let build = mp.add(ProgressBar::new_spinner());
    build.set_style(bar_style("{spinner} build  {elapsed:>4} {wide_msg}"));
    build.enable_steady_tick(Duration::from_millis(120));
    build.set_message(format!("git push {what}"));
    let started = Instant::now();
    let pushed_ms = unix_ms();
    let log_mp = mp.clone();
    let log_bar = build.clone();
    let out = fleet
        .push(project, move |line| {
            if let Some(l) = line.strip_prefix("remote: ") {
                say_line(&log_mp, format!("  | {l}"));
                log_bar.set_message(l.trim().to_string());
            }
        })
        .await?;
    let push_ms = started.elapsed().as_millis() as u64;
    if !out.ok {
        build.finish_with_message("push refused");
        return Err(LocalError::Run {
            what: "git push".into(),
            message: out.stderr,
        });
    }
    let release = fleet.latest_release().await?;
    let sequence = release["sequence"].as_u64().unwrap_or(0);
    let image_bytes = release["image_bytes"].as_u64().unwrap_or(0);
    let new_bytes = release["new_bytes"].as_u64().unwrap_or(0);
    build.finish_with_message(format!(
        "sequence {sequence} published: images {}, {} new",
        human(image_bytes),
        human(new_bytes)
    ));

    let waves_bar: Vec<ProgressBar> = Vec::new();
    let mut waves_bar = waves_bar;
    let devices: Vec<ProgressBar> = fleet
        .devices
        .iter()
        .map(|d| {
            let b = mp.add(ProgressBar::new(1));
            b.set_style(bar_style(
                "  {prefix:<9} [{bar:20}] {pos:>3}/{len:3} chunks {wide_msg}",
            ));
            b.set_prefix(d.name.clone());
            b
        })
        .collect();
    let accepted = Instant::now();
    // The builder's own timings: the Engine builds, then export, chunking, storing, signing
    // and seeding (the rest of the release's duration).
    let duration_ms = release["duration_ms"].as_u64().unwrap_or(0);
    let (mut built_ms, mut export_ms) = (0u64, 0u64);
    for s in release["services"].as_array().into_iter().flatten() {
        built_ms += s["build_ms"].as_u64().unwrap_or(0);
        export_ms += s["export_ms"].as_u64().unwrap_or(0);
    }
    let build_ms = built_ms.saturating_sub(export_ms);
    let mut rollout = Rollout {
        sequence,
        push_ms,
        build_ms,
        publish_ms: duration_ms.saturating_sub(build_ms),
        image_bytes,
        new_bytes,
        ..Rollout::default()
    };
    let last: Option<Progress> = loop {
        let progress = fleet.progress().await.filter(|p| p.sequence == sequence);
        if let Some(p) = &progress {
            while waves_bar.len() < p.waves.len() {
                let i = waves_bar.len();
                let b = mp.insert(i + 1, ProgressBar::new(1));
                b.set_style(bar_style(
                    "  wave {prefix:<3} [{bar:20}] {pos}/{len} healthy {wide_msg}",
                ));
                b.set_prefix(i.to_string());
                waves_bar.push(b);
            }
            for (w, b) in p.waves.iter().zip(&waves_bar) {
                b.set_length(u64::from(w.devices.max(1)));
                b.set_position(u64::from(w.healthy));
                b.set_message(format!(
                    "{}% of the fleet, {} device(s){}{}",
                    w.percent,
                    w.devices,
                    if w.open { ", open" } else { ", waiting" },
                    if w.failed > 0 {
                        format!(", {} failed", w.failed)
                    } else {
                        String::new()
                    }
                ));
            }
        }
        let mut all_running = true;
        let states: BTreeMap<String, String> = progress
            .as_ref()
            .map(|p| {
                p.devices
                    .iter()
                    .map(|d| (d.device.clone(), d.state.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for ((d, b), (origin0, total0)) in fleet.devices.iter().zip(&devices).zip(&before) {
            let s = d.handle.status();
            let c = d.handle.counters();
            let from_builder = c.bytes_in(PeerClass::Origin) - origin0;
            let from_peers = (c.total_in() - total0).saturating_sub(from_builder);
            b.set_length(u64::from(s.total_chunks.max(1)));
            b.set_position(u64::from(s.have_chunks));
            let state = if s.committed == Some(sequence) {
                "running".to_string()
            } else {
                states
                    .get(&s.device)
                    .cloned()
                    .or_else(|| s.phase.clone())
                    .unwrap_or_else(|| "waiting".into())
            };
            b.set_message(format!(
                "{state:<12} {} from devices, {} from the builder",
                human(from_peers),
                human(from_builder)
            ));
            all_running &= s.committed == Some(sequence);
        }
        let state = progress.as_ref().map(|p| p.state.clone());
        if all_running || matches!(state.as_deref(), Some("paused" | "halted")) {
            rollout.complete = all_running;
            break progress;
        }
        if accepted.elapsed() > ROLLOUT_TIMEOUT {
            break progress;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let statuses: Vec<_> = fleet.devices.iter().map(|d| d.handle.status()).collect();
    rollout.time_from(&statuses, pushed_ms);
    for (d, (origin0, total0)) in fleet.devices.iter().zip(&before) {
        let c = d.handle.counters();
        let fb = c.bytes_in(PeerClass::Origin) - origin0;
        rollout.from_builder += fb;
        rollout.from_peers += (c.total_in() - total0).saturating_sub(fb);
    }
    for b in waves_bar.iter().chain(&devices) {
        b.finish();
    }
    say_line(
        mp,
        match &last {
            Some(p) if rollout.complete => format!(
                "Rollout of sequence {sequence}: every device runs it ({} waves)",
                p.waves.len()
            ),
            Some(p) => format!(
                "Rollout of sequence {sequence} stopped: {} {}",
                p.state,
                p.pause_reason.clone().unwrap_or_default()
            ),
            None => format!("Rollout of sequence {sequence}: no progress from the builder"),
        },
    );
    for b in waves_bar.into_iter().chain(devices) {
        mp.remove(&b);
    }
    mp.remove(&build);
    Ok(rollout)
}

async fn show_containers(mp: &MultiProgress, demo: &Demo) {
    let list = (demo.containers)().await;
    say_line(mp, format!("Running containers ({}):", list.len()));
    for (name, state, image) in list {
        say_line(mp, format!("  {name:<60} {state:<8} {image}"));
    }
}

/// The `shoal-builder` executable this process runs as.
pub fn builder_exe() -> Result<PathBuf, LocalError> {
    std::env::current_exe().map_err(|e| LocalError::Run {
        what: "find the shoal-builder executable".into(),
        message: e.to_string(),
    })
}

/// Prints a line above the progress bars, or plainly on stdout when they are hidden (output
/// not a terminal), so a log of the run still shows what happened.
fn say_line(mp: &MultiProgress, s: String) {
    if mp.is_hidden() {
        println!("{s}");
    } else {
        let _ = mp.println(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_node::daemon::{Milestone, Status};

    fn device(steps: &[(&str, u64)]) -> Status {
        Status {
            milestones: steps
                .iter()
                .map(|(what, at_ms)| Milestone {
                    sequence: 2,
                    what: (*what).to_string(),
                    at_ms: *at_ms,
                })
                .collect(),
            ..Status::default()
        }
    }

    #[test]
    fn the_split_comes_from_the_devices_milestones() {
        let a = device(&[
            ("announced", 1_000),
            ("staged", 1_400),
            ("applying", 1_500),
            ("running", 2_100),
            ("healthy", 4_100),
        ]);
        let b = device(&[
            ("announced", 1_050),
            ("staged", 1_900),
            ("applying", 6_000),
            ("running", 6_300),
            ("healthy", 9_000),
        ]);
        let mut r = Rollout {
            sequence: 2,
            ..Rollout::default()
        };
        r.time_from(&[a.clone(), b], 500);
        assert_eq!(r.distribute_ms, Some(900));
        assert_eq!(r.apply_ms, Some(600));
        assert_eq!(r.health_ms, Some(2_700));
        assert_eq!(r.running_ms, Some(5_800));
        assert_eq!(r.healthy_ms, Some(8_500));
        // A device that never staged leaves distribution unknown, not zero.
        let late = device(&[("announced", 1_000)]);
        r.time_from(&[a, late], 500);
        assert_eq!(r.distribute_ms, None);
        assert_eq!(r.running_ms, None);
        assert!(r.summary("x")[0].contains("n/a"), "{:?}", r.summary("x"));
    }
}
