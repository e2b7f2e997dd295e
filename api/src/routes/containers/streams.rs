//! Streaming container endpoints: attach (hijacked), logs, stats; resize and top.

use super::*;
use berth_agent_protocol::Stats;
use bollard_stubs::models::{
    ContainerBlkioStats, ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats,
    ContainerPidsStats, ContainerStatsResponse, ContainerStorageStats, ContainerThrottlingData,
    ContainerTopResponse,
};

#[derive(Deserialize)]
pub(super) struct AttachQuery {
    stream: Option<String>,
    stdin: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    logs: Option<String>,
    #[serde(rename = "detachKeys")]
    detach_keys: Option<String>,
}

pub(super) fn log_frame(e: &LogEntry, tty: bool, timestamps: bool) -> Bytes {
    let mut payload = Vec::with_capacity(e.line.len() + 32);
    if timestamps {
        payload.extend_from_slice(
            berth_engine::fsutil::rfc3339_nanos(
                UNIX_EPOCH + Duration::from_nanos(e.time_nano.max(0) as u64),
            )
            .as_bytes(),
        );
        payload.push(b' ');
    }
    payload.extend_from_slice(&e.line);
    if tty {
        Bytes::from(payload)
    } else {
        frame(if e.source == Source::Stderr { 2 } else { 1 }, &payload)
    }
}

pub(super) async fn attach(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Extension(ver): Extension<ApiVersion>,
    Q(q): Q<AttachQuery>,
    mut req: Request,
) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let rec = c.record();
    if matches!(rec.state.status, Status::Paused) {
        return Err(ApiError::conflict(format!(
            "container {} is paused, unpause the container before attach",
            rec.id
        )));
    }
    let tty = rec.config.tty.unwrap_or(false);
    let want_stdin = opt_bool(&q.stdin) && rec.config.open_stdin.unwrap_or(false);
    let stream = opt_bool(&q.stream);
    let opts = AttachOpts {
        stdin: want_stdin,
        stdout: opt_bool(&q.stdout),
        stderr: opt_bool(&q.stderr),
    };
    let detach = DetachKeys::parse(q.detach_keys.as_deref()).map_err(ApiError::bad_request)?;
    // Register before responding: output from the first instant of the run is kept.
    let attachment = stream.then(|| engine.containers.attach(&c, opts));
    let replay = if opt_bool(&q.logs) {
        Some(engine.containers.logs(&c, ReadOpts::default()).ok())
    } else {
        None
    };
    let ct = stream_content_type(tty, ver);
    let stdin_once = rec.config.stdin_once.unwrap_or(false);

    if !wants_upgrade(&req) {
        // Non-upgraded attach: stream output only, as Docker's 200 raw-stream.
        let body = async_stream(replay.flatten(), attachment, tty, opts);
        let mut resp = Response::new(Body::from_stream(body));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(hijack::RAW));
        return Ok(resp);
    }
    let (resp, pending) = hijack::upgrade(&mut req, ct)
        .ok_or_else(|| ApiError::bad_request("connection cannot be upgraded"))?;
    let engine2 = engine.clone();
    tokio::spawn(async move {
        let Some(io) = pending.established().await else {
            return;
        };
        let (mut rd, mut wr) = tokio::io::split(io);
        let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
        if opts.stdin {
            let c2 = c.clone();
            let mut detach = detach;
            tokio::spawn(async move {
                let Some(mut stdin) = engine2.containers.stdin_writer(&c2).await else {
                    return;
                };
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            // Half-close: end stdin for StdinOnce (non-tty) containers.
                            if stdin_once && !tty {
                                engine2.containers.close_stdin(&c2).await;
                            }
                            return;
                        }
                        Ok(n) => {
                            let (data, det) = detach.feed(&buf[..n]);
                            if !data.is_empty() && stdin.write(&data).await.is_err() {
                                return;
                            }
                            if det {
                                let _ = detach_tx.send(());
                                return;
                            }
                        }
                    }
                }
            });
        }
        if let Some(Some(mut rx)) = replay {
            while let Some(e) = rx.recv().await {
                if wr.write_all(&log_frame(&e, tty, false)).await.is_err() {
                    return;
                }
            }
        }
        if let Some(mut att) = attachment {
            loop {
                tokio::select! {
                    chunk = att.output.recv() => match chunk {
                        Some(ch) => {
                            let bytes = if tty { ch.data.clone() } else { frame(ch.stream.stdcopy_id(), &ch.data) };
                            if wr.write_all(&bytes).await.is_err() { break; }
                        }
                        None => break,
                    },
                    _ = &mut detach_rx => break,
                }
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    });
    Ok(resp)
}

pub(super) fn async_stream(
    replay: Option<tokio::sync::mpsc::Receiver<LogEntry>>,
    attachment: Option<berth_engine::containers::Attachment>,
    tty: bool,
    _opts: AttachOpts,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let replay = futures::stream::iter(replay)
        .flat_map(tokio_stream::wrappers::ReceiverStream::new)
        .map(move |e| Ok(log_frame(&e, tty, false)));
    let live = futures::stream::iter(attachment).flat_map(move |mut a| {
        futures::stream::poll_fn(move |cx| a.output.poll_recv(cx)).map(move |ch| {
            Ok(if tty {
                ch.data.clone()
            } else {
                frame(ch.stream.stdcopy_id(), &ch.data)
            })
        })
    });
    replay.chain(live)
}

#[derive(Deserialize)]
pub(super) struct LogsQuery {
    follow: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    since: Option<String>,
    until: Option<String>,
    timestamps: Option<String>,
    tail: Option<String>,
}

pub(super) async fn logs(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Extension(ver): Extension<ApiVersion>,
    Q(q): Q<LogsQuery>,
) -> ApiResult<Response> {
    let (want_out, want_err) = (opt_bool(&q.stdout), opt_bool(&q.stderr));
    if !want_out && !want_err {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let c = container(&engine, &id)?;
    let tty = c.record().config.tty.unwrap_or(false);
    let ts = |v: &Option<String>| -> ApiResult<Option<i64>> {
        match v.as_deref().filter(|s| !s.is_empty() && *s != "0") {
            Some(s) => Ok(Some(crate::query::parse_timestamp(s)?)),
            None => Ok(None),
        }
    };
    let tail = match q.tail.as_deref() {
        None | Some("") | Some("all") => None,
        Some(n) => Some(
            n.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid tail value: {n}")))?
                .max(0) as usize,
        ),
    };
    let opts = ReadOpts {
        since_nano: ts(&q.since)?,
        until_nano: ts(&q.until)?,
        tail,
        follow: opt_bool(&q.follow).then(|| c.running_watch()),
    };
    let rx = engine.containers.logs(&c, opts)?;
    let timestamps = opt_bool(&q.timestamps);
    let body = tokio_stream::wrappers::ReceiverStream::new(rx)
        .filter(move |e| {
            futures::future::ready(match e.source {
                Source::Stdout => want_out,
                Source::Stderr => want_err,
            })
        })
        .map(move |e| log_frame(&e, tty, timestamps));
    let mut resp = Response::new(Body::from_stream(crate::stream::coalesce(body, 1024)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(stream_content_type(tty, ver)),
    );
    Ok(resp)
}

#[derive(Deserialize)]
pub(super) struct ResizeQuery {
    h: Option<String>,
    w: Option<String>,
}

pub fn parse_size(q: &Option<String>, what: &str) -> ApiResult<u16> {
    let v = q.as_deref().unwrap_or("0");
    v.parse::<u16>()
        .map_err(|_| ApiError::bad_request(format!("invalid resize {what}: {v}")))
}

pub(super) async fn resize(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<ResizeQuery>,
) -> ApiResult<StatusCode> {
    let (h, w) = (parse_size(&q.h, "height")?, parse_size(&q.w, "width")?);
    let c = container(&engine, &id)?;
    engine.containers.resize(&c, h, w).await?;
    Ok(StatusCode::OK)
}

pub(super) async fn top(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ContainerTopResponse>> {
    let c = container(&engine, &id)?;
    let t = engine.containers.top(&c).await?;
    Ok(Json(ContainerTopResponse {
        titles: Some(t.titles),
        processes: Some(t.processes),
    }))
}

#[derive(Deserialize)]
pub(super) struct StatsQuery {
    stream: Option<String>,
    #[serde(rename = "one-shot")]
    one_shot: Option<String>,
}

/// One `cpu_stats`/`precpu_stats`; without a sample (not running) only a zero total.
fn cpu_stats(s: Option<&Stats>) -> ContainerCpuStats {
    let Some(s) = s else {
        return ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(0),
                ..Default::default()
            }),
            throttling_data: Some(ContainerThrottlingData::default()),
            ..Default::default()
        };
    };
    ContainerCpuStats {
        cpu_usage: Some(ContainerCpuUsage {
            total_usage: Some(s.cpu_usage_ns),
            usage_in_kernelmode: Some(s.cpu_system_ns),
            usage_in_usermode: Some(s.cpu_user_ns),
            percpu_usage: None,
        }),
        system_cpu_usage: Some(s.system_cpu_usage_ns),
        online_cpus: Some(s.online_cpus),
        // The agent does not sample cpu.stat's throttling counters; zeros, as unthrottled.
        throttling_data: Some(ContainerThrottlingData {
            periods: Some(0),
            throttled_periods: Some(0),
            throttled_time: Some(0),
        }),
    }
}

fn memory_stats(s: &Stats) -> ContainerMemoryStats {
    ContainerMemoryStats {
        usage: Some(s.memory_usage),
        max_usage: Some(s.memory_max_usage),
        limit: Some(s.memory_limit),
        // `docker stats` shows usage minus `total_inactive_file`: page cache stands in for it.
        stats: Some(HashMap::from([
            ("cache".to_string(), s.memory_cache),
            ("total_inactive_file".to_string(), s.memory_cache),
        ])),
        ..Default::default()
    }
}

/// One stats sample as the API shows it; `pre` is the sample before, from which the CLI
/// computes the CPU percentage.
pub(super) fn stats_json(
    rec: &ContainerRecord,
    s: Option<&Stats>,
    pre: Option<&Stats>,
) -> serde_json::Value {
    let read = berth_engine::fsutil::now_rfc3339();
    let resp = ContainerStatsResponse {
        name: Some(format!("/{}", rec.name)),
        id: Some(rec.id.clone()),
        preread: Some(if pre.is_some() {
            read.clone()
        } else {
            // Before there is a previous sample, as dockerd: Go's zero time.
            berth_engine::containers::record::ZERO_TIME.to_string()
        }),
        read: Some(read),
        pids_stats: Some(
            s.map_or_else(ContainerPidsStats::default, |s| ContainerPidsStats {
                current: Some(s.pids_current),
                // The agent's 0 is `pids.max` = "max".
                limit: Some(if s.pids_limit == 0 {
                    u64::MAX
                } else {
                    s.pids_limit
                }),
            }),
        ),
        blkio_stats: Some(ContainerBlkioStats::default()),
        num_procs: Some(0),
        storage_stats: Some(ContainerStorageStats::default()),
        cpu_stats: Some(cpu_stats(s)),
        precpu_stats: Some(cpu_stats(pre)),
        memory_stats: Some(s.map(memory_stats).unwrap_or_default()),
        networks: Some(HashMap::new()),
        os_type: None,
    };
    let mut v = serde_json::to_value(&resp).unwrap_or_default();
    crate::zero_values::stats(&mut v);
    v
}

pub(super) async fn stats(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<StatsQuery>,
) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let stream = q.stream.as_deref().map(parse_bool).unwrap_or(true);
    let one_shot = opt_bool(&q.one_shot);
    if !stream {
        let rec = c.record();
        let first = engine.containers.stats(&c).await?;
        let pre = if one_shot || first.is_none() {
            None
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let second = engine.containers.stats(&c).await?;
            return Ok(Json(stats_json(&rec, second.as_ref(), first.as_ref())).into_response());
        };
        return Ok(Json(stats_json(&rec, first.as_ref(), pre)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<serde_json::Value>(4);
    tokio::spawn(async move {
        let mut prev: Option<Stats> = None;
        loop {
            let rec = c.record();
            let cur = engine.containers.stats(&c).await.ok().flatten();
            if tx
                .send(stats_json(&rec, cur.as_ref(), prev.as_ref()))
                .await
                .is_err()
            {
                return;
            }
            if cur.is_none()
                && !rec.state.status.is_running()
                && rec.state.status != Status::Created
            {
                // Docker keeps streaming zeros for stopped containers; a slower beat is enough.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            prev = cur;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(crate::stream::json_stream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `read` and `preread` are the clock's; the rest is compared whole.
    fn without_times(mut v: serde_json::Value) -> serde_json::Value {
        let o = v.as_object_mut().unwrap();
        o.remove("read");
        let preread = o.remove("preread").unwrap();
        assert!(preread.is_string());
        v
    }

    #[test]
    fn stats_without_a_sample_are_zeros_under_every_key() {
        let rec = ContainerRecord {
            id: "abc".into(),
            name: "web".into(),
            ..Default::default()
        };
        let v = stats_json(&rec, None, None);
        assert_eq!(v["preread"], "0001-01-01T00:00:00Z");
        let blkio_null = json!({
            "io_service_bytes_recursive": null, "io_serviced_recursive": null,
            "io_queue_recursive": null, "io_service_time_recursive": null,
            "io_wait_time_recursive": null, "io_merged_recursive": null,
            "io_time_recursive": null, "sectors_recursive": null,
        });
        let cpu = json!({ "cpu_usage": { "total_usage": 0, "percpu_usage": null }, "throttling_data": {} });
        assert_eq!(
            without_times(v),
            json!({
                "name": "/web", "id": "abc", "pids_stats": {}, "blkio_stats": blkio_null,
                "num_procs": 0, "storage_stats": {}, "cpu_stats": cpu, "precpu_stats": cpu,
                "memory_stats": {}, "networks": {},
            })
        );
    }

    #[test]
    fn stats_of_a_sample() {
        let rec = ContainerRecord {
            id: "abc".into(),
            name: "web".into(),
            ..Default::default()
        };
        let s = Stats {
            memory_usage: 100,
            memory_max_usage: 200,
            memory_limit: 300,
            memory_cache: 40,
            cpu_usage_ns: 5,
            cpu_user_ns: 3,
            cpu_system_ns: 2,
            system_cpu_usage_ns: 1000,
            online_cpus: 2,
            pids_current: 1,
            pids_limit: 0,
            ..Default::default()
        };
        let v = without_times(stats_json(&rec, Some(&s), Some(&s)));
        let cpu = json!({
            "cpu_usage": {
                "total_usage": 5, "usage_in_kernelmode": 2, "usage_in_usermode": 3,
                "percpu_usage": null,
            },
            "system_cpu_usage": 1000, "online_cpus": 2,
            "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 },
        });
        assert_eq!(v["cpu_stats"], cpu);
        assert_eq!(v["precpu_stats"], cpu);
        assert_eq!(
            v["memory_stats"],
            json!({
                "usage": 100, "max_usage": 200, "limit": 300,
                "stats": { "cache": 40, "total_inactive_file": 40 },
            })
        );
        assert_eq!(v["pids_stats"], json!({ "current": 1, "limit": u64::MAX }));
    }
}
