//! Healthchecks (`--health-*`, an image's `HEALTHCHECK`): while a container runs, its probe
//! is exec'd through the agent at the configured interval; the result feeds
//! `State.Health` (status, failing streak, the last five results), `docker ps`'s
//! "(healthy)" and `health_status` events, as dockerd does.

use std::sync::Arc;
use std::time::Duration;

use super::record::{ContainerRecord, Health, HealthResult, Status};
use super::{Container, Containers};
use berth_agent_protocol::{ExecSpec, ProcessSpec};

/// Docker's defaults (`HEALTHCHECK` reference).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;
/// dockerd keeps this many results and this much output per result.
const MAX_LOG_ENTRIES: usize = 5;
const MAX_OUTPUT_BYTES: usize = 4096;

/// The probe of a container, resolved from its config (image values already merged).
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: u32,
}

fn nanos(v: Option<i64>, default: Duration) -> Duration {
    match v {
        Some(n) if n > 0 => Duration::from_nanos(n as u64),
        _ => default,
    }
}

/// The probe, or `None` when the container has no healthcheck (or `NONE`).
pub fn probe(rec: &ContainerRecord) -> Option<Probe> {
    let hc = rec.config.healthcheck.as_ref()?;
    let test = hc.test.clone().unwrap_or_default();
    let argv = match test.first().map(String::as_str) {
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => {
            let mut sh = vec!["/bin/sh".to_string(), "-c".to_string()];
            sh.push(test[1..].join(" "));
            sh
        }
        _ => return None,
    };
    if argv.is_empty() {
        return None;
    }
    Some(Probe {
        argv,
        interval: nanos(hc.interval, DEFAULT_INTERVAL),
        timeout: nanos(hc.timeout, DEFAULT_TIMEOUT),
        start_period: nanos(hc.start_period, Duration::ZERO),
        start_interval: nanos(hc.start_interval, DEFAULT_START_INTERVAL),
        retries: hc
            .retries
            .filter(|r| *r > 0)
            .map(|r| r as u32)
            .unwrap_or(DEFAULT_RETRIES),
    })
}

/// Fill the container's healthcheck from the image's, as dockerd merges them: an unset
/// test inherits the image's, zero durations and retries inherit the image's values.
pub fn merge_image_healthcheck(
    container: Option<bollard_stubs::models::HealthConfig>,
    image: Option<&serde_json::Value>,
) -> Option<bollard_stubs::models::HealthConfig> {
    let image: Option<bollard_stubs::models::HealthConfig> =
        image.and_then(|v| serde_json::from_value(v.clone()).ok());
    match (container, image) {
        (None, img) => img,
        (Some(c), None) => Some(c),
        (Some(mut c), Some(img)) => {
            if c.test.as_ref().is_none_or(|t| t.is_empty()) {
                c.test = img.test;
            }
            let zero = |v: Option<i64>| v.is_none_or(|n| n == 0);
            if zero(c.interval) {
                c.interval = img.interval;
            }
            if zero(c.timeout) {
                c.timeout = img.timeout;
            }
            if zero(c.start_period) {
                c.start_period = img.start_period;
            }
            if zero(c.start_interval) {
                c.start_interval = img.start_interval;
            }
            if zero(c.retries) {
                c.retries = img.retries;
            }
            Some(c)
        }
    }
}

impl Containers {
    /// Probe until the run ends. A new run starts as `starting`; a run re-adopted after a
    /// daemon restart (`fresh == false`) keeps its recorded health.
    pub(crate) fn spawn_health_monitor(self: &Arc<Self>, c: Arc<Container>, fresh: bool) {
        let Some(probe) = probe(&c.record()) else {
            return;
        };
        // This run, as opposed to a later one with its own monitor.
        let run = c.record().state.started_at.clone();
        c.update(|r| {
            if fresh || r.state.health.is_none() {
                r.state.health = Some(Health {
                    status: "starting".into(),
                    ..Default::default()
                })
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut running = c.running.subscribe();
            loop {
                let in_start_period = started.elapsed() < probe.start_period;
                let wait = if in_start_period {
                    probe.start_interval
                } else {
                    probe.interval
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = running.wait_for(|r| !r) => return,
                }
                let rec = c.record();
                // A new run has its own monitor.
                if rec.state.started_at != run {
                    return;
                }
                if c.status() != Status::Running {
                    // Paused: no probe, as in dockerd.
                    continue;
                }
                let result = this.run_probe(&c, &rec, &probe).await;
                let in_start_period = started.elapsed() < probe.start_period;
                this.record_health(&c, result, &probe, in_start_period);
            }
        });
    }

    async fn run_probe(
        &self,
        c: &Arc<Container>,
        rec: &ContainerRecord,
        p: &Probe,
    ) -> HealthResult {
        let start = crate::fsutil::now_rfc3339();
        let finish = |code: i64, output: String| HealthResult {
            start: start.clone(),
            end: crate::fsutil::now_rfc3339(),
            exit_code: code,
            output,
        };
        let Some(agent) = c.agent() else {
            return finish(-1, "container is not running".into());
        };
        let spec = ExecSpec {
            process: ProcessSpec {
                args: p.argv.clone(),
                env: rec.config.env.clone().unwrap_or_default(),
                cwd: rec.config.working_dir.clone().unwrap_or_default(),
                user: rec.config.user.clone().unwrap_or_default(),
                additional_groups: rec.host_config.group_add.clone().unwrap_or_default(),
                ..Default::default()
            },
            privileged: false,
        };
        let process = match agent.exec(spec).await {
            Ok(p) => p,
            Err(e) => return finish(-1, format!("health check exec: {e}")),
        };
        let mut out = match agent.output(process).await {
            Ok(o) => o,
            Err(e) => return finish(-1, format!("health check output: {e}")),
        };
        if let Err(e) = agent.start(process).await {
            return finish(-1, e.to_string());
        }
        let collect = async {
            let mut buf = Vec::new();
            while let Some(chunk) = out.recv().await {
                let room = MAX_OUTPUT_BYTES.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
            }
            let code = agent
                .wait(process)
                .await
                .map(|s| s.code as i64)
                .unwrap_or(-1);
            (code, String::from_utf8_lossy(&buf).into_owned())
        };
        match tokio::time::timeout(p.timeout, collect).await {
            Ok((code, output)) => finish(code, output),
            Err(_) => {
                let _ = agent.signal(process, libc::SIGKILL).await;
                finish(
                    -1,
                    format!(
                        "Health check exceeded timeout ({})",
                        humantime_secs(p.timeout)
                    ),
                )
            }
        }
    }

    fn record_health(&self, c: &Arc<Container>, result: HealthResult, p: &Probe, starting: bool) {
        let ok = result.exit_code == 0;
        let mut changed_to = None;
        c.update(|r| {
            let h = r.state.health.get_or_insert_with(Default::default);
            h.log.push(result);
            if h.log.len() > MAX_LOG_ENTRIES {
                h.log.remove(0);
            }
            let before = h.status.clone();
            if ok {
                h.failing_streak = 0;
                h.status = "healthy".into();
            } else if !starting || h.status != "starting" {
                // Failures in the start period do not count until a probe has passed.
                h.failing_streak += 1;
                if h.failing_streak >= p.retries {
                    h.status = "unhealthy".into();
                }
            }
            if h.status != before {
                changed_to = Some(h.status.clone());
            }
        });
        let _ = self.save(c);
        if let Some(status) = changed_to {
            self.publish(&c.record(), &format!("health_status: {status}"), &[]);
        }
    }
}

/// Go's duration string for whole and fractional seconds (`30s`, `1.5s`).
fn humantime_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}s", s as u64)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard_stubs::models::HealthConfig;

    #[test]
    fn merge_takes_the_image_values_the_container_leaves_unset() {
        let img = serde_json::json!({"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000i64, "Retries": 7});
        let c = HealthConfig {
            interval: Some(1_000_000_000),
            ..Default::default()
        };
        let m = merge_image_healthcheck(Some(c), Some(&img)).unwrap();
        assert_eq!(
            m.test.unwrap(),
            vec!["CMD-SHELL".to_string(), "true".into()]
        );
        assert_eq!(m.interval, Some(1_000_000_000));
        assert_eq!(m.retries, Some(7));
        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        // NONE stays NONE: the image's probe does not come back.
        let m = merge_image_healthcheck(Some(none), Some(&img)).unwrap();
        assert_eq!(m.test.unwrap(), vec!["NONE".to_string()]);
    }

    #[test]
    fn timeouts_print_like_go() {
        assert_eq!(humantime_secs(Duration::from_secs(30)), "30s");
        assert_eq!(humantime_secs(Duration::from_millis(1500)), "1.5s");
    }
}
