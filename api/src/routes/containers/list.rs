//! `docker ps` and how a container record is shown: summaries, status strings,
//! durations, filters.

use super::*;

/// go-units HumanDuration, as in `docker ps` Status strings.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 1 {
        return "Less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let mins = secs / 60;
    if mins == 1 {
        return "About a minute".into();
    }
    if mins < 60 {
        return format!("{mins} minutes");
    }
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", hours / 24 / 365)
}

pub(super) fn since(ts: &str) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i128;
    let t = berth_engine::fsutil::parse_rfc3339_utc(ts).unwrap_or(now);
    Duration::from_nanos((now - t).max(0) as u64)
}

pub(super) fn unix_secs(ts: &str) -> i64 {
    berth_engine::fsutil::parse_rfc3339_utc(ts)
        .map(|n| (n / 1_000_000_000) as i64)
        .unwrap_or(0)
}

/// Docker's `Status` column.
pub fn status_string(r: &ContainerRecord) -> String {
    let s = &r.state;
    match s.status {
        Status::Running => {
            let health = match s.health.as_ref().map(|h| h.status.as_str()) {
                Some("starting") => " (health: starting)",
                Some("healthy") => " (healthy)",
                Some("unhealthy") => " (unhealthy)",
                _ => "",
            };
            format!("Up {}{health}", human_duration(since(&s.started_at)))
        }
        Status::Paused => format!("Up {} (Paused)", human_duration(since(&s.started_at))),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            s.exit_code,
            human_duration(since(&s.finished_at))
        ),
        Status::Removing => "Removal In Progress".into(),
        Status::Dead => "Dead".into(),
        Status::Created => "Created".into(),
        Status::Exited => {
            if s.finished_at == berth_engine::containers::record::ZERO_TIME {
                String::new()
            } else {
                format!(
                    "Exited ({}) {} ago",
                    s.exit_code,
                    human_duration(since(&s.finished_at))
                )
            }
        }
    }
}

pub(super) fn mount_points(r: &ContainerRecord) -> Vec<MountPoint> {
    r.mounts
        .iter()
        .map(|m| MountPoint {
            typ: Some(m.kind.clone()),
            name: (!m.name.is_empty()).then(|| m.name.clone()),
            source: Some(m.source.clone()),
            destination: Some(m.destination.clone()),
            driver: (!m.driver.is_empty()).then(|| m.driver.clone()),
            mode: Some(m.options.clone()),
            rw: Some(m.rw),
            propagation: Some(if m.kind == "bind" {
                // Records from before propagation was recorded: Docker's default.
                if m.propagation.is_empty() {
                    "rprivate".into()
                } else {
                    m.propagation.clone()
                }
            } else {
                String::new()
            }),
        })
        .collect()
}

pub(super) fn command_string(r: &ContainerRecord) -> String {
    std::iter::once(r.path.as_str())
        .chain(r.args.iter().map(|s| s.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An engine-owned /etc file of the container (empty until its first start writes it).
pub(super) fn etc_path(engine: &AppState, r: &ContainerRecord, name: &str) -> String {
    let p = engine
        .config
        .data_root
        .join("containers")
        .join(&r.id)
        .join(name);
    if p.exists() {
        p.display().to_string()
    } else {
        String::new()
    }
}

fn summary_state(status: Status) -> ContainerSummaryStateEnum {
    match status {
        Status::Created => ContainerSummaryStateEnum::CREATED,
        Status::Running => ContainerSummaryStateEnum::RUNNING,
        Status::Paused => ContainerSummaryStateEnum::PAUSED,
        Status::Restarting => ContainerSummaryStateEnum::RESTARTING,
        Status::Removing => ContainerSummaryStateEnum::REMOVING,
        Status::Exited => ContainerSummaryStateEnum::EXITED,
        Status::Dead => ContainerSummaryStateEnum::DEAD,
    }
}

/// What every container row says: identity, command, state, labels and mounts.
fn summary_common(r: &ContainerRecord) -> ContainerSummary {
    ContainerSummary {
        id: Some(r.id.clone()),
        names: Some(vec![format!("/{}", r.name)]),
        image: Some(r.image_ref.clone()),
        image_id: Some(r.image_id.clone()),
        command: Some(command_string(r)),
        created: Some(unix_secs(&r.created)),
        labels: Some(r.config.labels.clone().unwrap_or_default()),
        state: Some(summary_state(r.state.status)),
        status: Some(status_string(r)),
        mounts: Some(mount_points(r)),
        ..Default::default()
    }
}

/// A row of `system/df`'s `Containers`: the common row (`docker system df -v` counts a
/// volume's links from its mounts) and the writable layer's size (`size`, shown as both
/// `SizeRw` and `SizeRootFs`), without the ports and networks of `docker ps`.
pub fn disk_usage_summary(r: &ContainerRecord, size: i64) -> ContainerSummary {
    ContainerSummary {
        size_rw: Some(size),
        size_root_fs: Some(size),
        ..summary_common(r)
    }
}

pub(super) fn summary(engine: &AppState, r: &ContainerRecord) -> ContainerSummary {
    let net = crate::routes::networks::container_net(engine, r);
    ContainerSummary {
        ports: Some(net.summary_ports),
        host_config: Some(ContainerSummaryHostConfig {
            network_mode: r.host_config.network_mode.clone(),
            annotations: None,
        }),
        network_settings: Some(ContainerSummaryNetworkSettings {
            networks: Some(net.networks),
        }),
        ..summary_common(r)
    }
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    all: Option<String>,
    limit: Option<i64>,
    #[allow(dead_code)]
    size: Option<String>,
    filters: Option<String>,
}

pub(super) fn matches_filters(f: &Filters, r: &ContainerRecord, all: &[ContainerRecord]) -> bool {
    let any = |key: &str, pred: &dyn Fn(&str) -> bool| {
        let v = f.get(key);
        v.is_empty() || v.iter().any(|x| pred(x))
    };
    let created_of = |name: &str| {
        all.iter()
            .find(|o| o.id.starts_with(name) || o.name == name.trim_start_matches('/'))
            .map(|o| o.created.clone())
    };
    any("id", &|x| r.id.starts_with(x))
        && any("name", &|x| r.name.contains(x.trim_start_matches('/')))
        && any("status", &|x| x == r.state.status.as_str())
        && any("exited", &|x| {
            r.state.status == Status::Exited && x.parse::<i64>().ok() == Some(r.state.exit_code)
        })
        && any("ancestor", &|x| {
            r.image_ref == x
                || r.image_id.starts_with(x)
                || r.image_id.trim_start_matches("sha256:").starts_with(x)
        })
        && any("isolation", &|x| x == r.isolation.as_str())
        && any("health", &|x| {
            let status = match &r.state.health {
                Some(h) if r.state.status.is_running() => h.status.as_str(),
                _ => "none",
            };
            x == status
        })
        && any("before", &|x| created_of(x).is_some_and(|c| r.created < c))
        && any("since", &|x| created_of(x).is_some_and(|c| r.created > c))
        && any("volume", &|x| {
            r.mounts.iter().any(|m| m.name == x || m.destination == x)
        })
        && any("network", &|x| {
            r.networks
                .iter()
                .any(|a| a.network_name == x || a.network_id.starts_with(x))
                || r.host_config.network_mode.as_deref() == Some(x)
        })
        && any("expose", &|x| {
            let key = if x.contains('/') {
                x.to_string()
            } else {
                format!("{x}/tcp")
            };
            r.config
                .exposed_ports
                .as_ref()
                .is_some_and(|p| p.contains(&key))
        })
        && f.match_labels("label", &r.config.labels.clone().unwrap_or_default())
}

pub(super) async fn list(
    State(engine): State<AppState>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<ContainerSummary>>> {
    let filters = Filters::parse(q.filters.as_deref())?;
    filters.validate(&[
        "ancestor",
        "before",
        "expose",
        "exited",
        "health",
        "id",
        "isolation",
        "is-task",
        "label",
        "name",
        "network",
        "publish",
        "since",
        "status",
        "volume",
    ])?;
    for s in filters.get("status") {
        if ![
            "created",
            "restarting",
            "running",
            "removing",
            "paused",
            "exited",
            "dead",
        ]
        .contains(&s.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "invalid filter 'status={s}'"
            )));
        }
    }
    let all = opt_bool(&q.all)
        || q.limit.is_some_and(|l| l > 0)
        || filters.contains_key("status")
        || filters.contains_key("exited");
    let mut recs: Vec<ContainerRecord> =
        engine.containers.all().iter().map(|c| c.record()).collect();
    recs.sort_by(|a, b| b.created.cmp(&a.created));
    let snapshot = recs.clone();
    let mut out: Vec<ContainerSummary> = recs
        .iter()
        .filter(|r| all || r.state.status.is_running())
        .filter(|r| matches_filters(&filters, r, &snapshot))
        .map(|r| summary(&engine, r))
        .collect();
    if let Some(l) = q.limit.filter(|l| *l > 0) {
        out.truncate(l as usize);
    }
    Ok(Json(out))
}
