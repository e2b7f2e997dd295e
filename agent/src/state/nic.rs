//! `ConfigureNic` / `DeconfigureNic`: a microVM's spare NICs joining and leaving networks
//! while the container runs (`docker network connect/disconnect`), see `guest_net.rs`;
//! `RewriteEtcHosts`: the /etc/hosts that goes with them.

use berth_agent_protocol::{
    ErrorKind, NicConfig, Reply, Response, NIC_REQUESTS_V6_VERSION, NIC_REQUESTS_VERSION,
};

use super::{err, Agent};

/// Only the VM's own agent (PID 1) owns its NICs: an agent on the host (process mode) or
/// a pod member must never reconfigure the network it runs in.
fn check(version: u32) -> Result<(), berth_agent_protocol::RemoteError> {
    if std::process::id() != 1 {
        return Err(err(
            ErrorKind::InvalidArgument,
            "only a microVM's guest agent configures network interfaces",
        ));
    }
    if version != NIC_REQUESTS_VERSION && version != NIC_REQUESTS_V6_VERSION {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!(
                "NIC request version {version} is not supported (the guest agent speaks {NIC_REQUESTS_VERSION} and {NIC_REQUESTS_V6_VERSION})"
            ),
        ));
    }
    Ok(())
}

fn io_kind(e: &std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    }
}

impl Agent {
    pub(super) async fn configure_nic(
        &self,
        version: u32,
        nic: NicConfig,
        resolv_conf: Option<String>,
    ) -> Reply {
        check(version)?;
        tokio::task::spawn_blocking(move || crate::guest_net::configure_nic(&nic))
            .await
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
            .map_err(|e| err(io_kind(&e), e.to_string()))?;
        if let Some(text) = resolv_conf {
            self.rewrite_etc_file(version, "resolv.conf", text)?;
        }
        Ok(Response::Ok)
    }

    /// One of the host's /etc files the container holds, `name` in the exec dir.
    pub(super) fn rewrite_etc_file(&self, version: u32, name: &str, text: String) -> Reply {
        check(version)?;
        // Bind-mounted into the container: rewritten in place, so the container sees the
        // new contents (a rename would leave it looking at the old inode). A container
        // started without the file (it brought its own) keeps its own.
        let p = self.exec_dir.join(name);
        if p.exists() {
            std::fs::write(&p, text)
                .map_err(|e| err(ErrorKind::Internal, format!("rewriting {name}: {e}")))?;
        }
        Ok(Response::Ok)
    }

    pub(super) async fn deconfigure_nic(
        &self,
        version: u32,
        mac: String,
        spare_name: String,
    ) -> Reply {
        check(version)?;
        tokio::task::spawn_blocking(move || crate::guest_net::deconfigure_nic(&mac, &spare_name))
            .await
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
            .map_err(|e| err(io_kind(&e), e.to_string()))?;
        Ok(Response::Ok)
    }
}
