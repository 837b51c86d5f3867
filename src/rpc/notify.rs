//! Notifications over RPC: the engine's `Notify` calls become criu_notify round trips with the
//! client, which runs its callback (libcriu) or script and answers success or failure.

use std::os::fd::BorrowedFd;

use crate::engine::Notify;
use crate::error::{Error, Result};
use crate::pb::{CriuNotify, CriuReq, CriuReqType, CriuResp};
use crate::rpc::wire;

/// Sends each notification to the client on `sk` and waits for its answer.
pub struct RpcNotify<'a> {
    sk: BorrowedFd<'a>,
}

impl<'a> RpcNotify<'a> {
    pub fn new(sk: BorrowedFd<'a>) -> Self {
        RpcNotify { sk }
    }
}

impl Notify for RpcNotify<'_> {
    /// `pid` goes out only with the actions CRIU sends it with (setup-namespaces and
    /// post-restore; libcriu's criu_notify_pid() reports 0 for the others). `fd`
    /// (orphan-pts-master) rides along as SCM_RIGHTS.
    fn notify(&mut self, action: &str, pid: i32, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        log::debug!("notify {action} (pid {pid})");
        let with_pid = matches!(action, "setup-namespaces" | "post-restore");
        let msg = CriuResp {
            r#type: CriuReqType::Notify as i32,
            success: true,
            notify: Some(CriuNotify {
                script: Some(action.to_string()),
                pid: (with_pid && pid != 0).then_some(pid),
            }),
            ..Default::default()
        };
        wire::send(self.sk, &msg, fd)?;
        let answer = wire::recv::<CriuReq>(self.sk, "notify answer")?.ok_or_else(|| {
            Error::Aborted(format!("the client went away during notification {action}"))
        })?;
        let answer = answer.msg;
        if answer.r#type != CriuReqType::Notify as i32 {
            return Err(Error::Rpc(format!(
                "expected the answer to notification {action}, got request type {}",
                answer.r#type
            )));
        }
        if !answer.notify_success() {
            return Err(Error::Aborted(format!(
                "the client's callback failed notification {action}"
            )));
        }
        // The answer to query-ext-files may name external resources (`opts.external`).
        if let Some(external) = answer.opts.map(|o| o.external).filter(|e| !e.is_empty()) {
            log::error!("the client named external resources {external:?}");
            return Err(Error::OptionNotSupported("external"));
        }
        Ok(())
    }
}
