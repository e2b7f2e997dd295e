//! A RUN step: an ordinary container of the daemon's default isolation (a microVM
//! where that is the default), its output streamed into the build, then committed.

use std::sync::Arc;

use bollard_stubs::models::{ContainerCreateBody, HostConfig};
use serde_json::{json, Value};

use crate::containers::{
    AttachOpts, CommitOptions, Container, Containers, CreateRequest, WaitCondition,
};
use crate::images::Progress;
use crate::{Error, Result};

pub struct RunStep {
    pub image: String,
    pub argv: Vec<String>,
    /// Build args passed as environment for this step only.
    pub extra_env: Vec<String>,
    pub user: String,
    pub workdir: String,
    pub host_config: HostConfig,
}

/// Create and run the step's container; returns it (exited) with its exit code, and the
/// layer tar its changes were saved to at exit when the host cannot read its files (a
/// microVM's: read while the VM is still up instead of booting it again to commit).
pub async fn run(
    containers: &Arc<Containers>,
    step: RunStep,
    progress: &Progress,
    quiet: bool,
) -> Result<(Arc<Container>, i64, Option<std::path::PathBuf>)> {
    let body = ContainerCreateBody {
        image: Some(step.image.clone()),
        entrypoint: Some(step.argv.clone()),
        cmd: None,
        env: Some(step.extra_env),
        user: Some(step.user),
        working_dir: Some(step.workdir),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(step.host_config),
        ..Default::default()
    };
    let (id, _) = containers
        .create(CreateRequest {
            name: None,
            body,
            isolation: String::new(),
        })
        .await?;
    let c = containers.get(&id)?;
    let saved = containers.save_changes_at_exit(&c);
    if !quiet {
        progress
            .send(json!({ "stream": format!(" ---> Running in {}\n", super::short_id(&id)) }))
            .await?;
    }
    let mut out = containers.attach(
        &c,
        AttachOpts {
            stdin: false,
            stdout: true,
            stderr: true,
        },
    );
    let exited = containers.wait(&c, WaitCondition::NextExit);
    if let Err(e) = containers.start(&c).await {
        let _ = containers.remove(&c, true, true).await;
        return Err(e);
    }
    while let Some(chunk) = out.output.recv().await {
        if !quiet {
            let text = String::from_utf8_lossy(&chunk.data).into_owned();
            progress.send(json!({ "stream": text })).await?;
        }
    }
    let notice = exited.await;
    Ok((c, notice.code, saved))
}

/// Commit the step's container as the next image, with the builder's config.
pub async fn commit(
    containers: &Arc<Containers>,
    c: &Arc<Container>,
    run_config: Value,
    created_by: String,
    layer_tar: Option<std::path::PathBuf>,
) -> Result<String> {
    containers
        .commit(
            c,
            CommitOptions {
                repo: None,
                tag: None,
                comment: String::new(),
                author: String::new(),
                pause: false,
                changes: Vec::new(),
                config: Some(run_config),
                replace_config: true,
                created_by: Some(created_by),
                layer_tar,
            },
        )
        .await
}

/// The message dockerd gives for a failing RUN.
pub fn failure(argv_shown: &str, code: i64) -> Error {
    Error::StepFailed {
        message: format!("The command '{argv_shown}' returned a non-zero code: {code}"),
        code,
    }
}
