//! `--action-script FILE`: the command line's `Notify`. At each stage the engine reports, every
//! script runs with CRTOOLS_SCRIPT_ACTION=<stage>, CRTOOLS_IMAGE_DIR and, once the tree's root
//! is known, CRTOOLS_INIT_PID; a script exiting non-zero aborts the operation, as in CRIU.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::process::Stdio;

use crate::engine::Notify;
use crate::error::{Error, Result};

pub struct ActionScripts {
    /// In the order they run.
    scripts: Vec<PathBuf>,
    images_dir: PathBuf,
    root_pid: Option<i32>,
}

impl ActionScripts {
    pub fn new(scripts: Vec<PathBuf>, images_dir: PathBuf) -> Self {
        ActionScripts {
            scripts,
            images_dir,
            root_pid: None,
        }
    }
}

/// Stages that carry an fd or a query for an RPC client; CRIU runs no shell script for them.
const RPC_ONLY: &[&str] = &["orphan-pts-master", "query-ext-files"];

impl Notify for ActionScripts {
    fn notify(&mut self, action: &str, pid: i32, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        if self.scripts.is_empty() || fd.is_some() || RPC_ONLY.contains(&action) {
            return Ok(());
        }
        if pid > 0 && self.root_pid.is_none() {
            self.root_pid = Some(pid);
        }
        log::debug!("Running {action} scripts");
        let mut failed = Vec::new();
        for script in &self.scripts {
            let mut cmd = std::process::Command::new(script);
            cmd.env("CRTOOLS_SCRIPT_ACTION", action)
                .env("CRTOOLS_IMAGE_DIR", &self.images_dir)
                .stdin(Stdio::null());
            if let Some(pid) = self.root_pid {
                cmd.env("CRTOOLS_INIT_PID", pid.to_string());
            }
            let status = cmd
                .status()
                .map_err(|e| Error::io(format!("action script {}", script.display()), e))?;
            if !status.success() {
                log::error!("Script {} exited with {status}", script.display());
                failed.push(script.display().to_string());
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Aborted(format!(
                "{action} action script failed: {}",
                failed.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn scripts_see_the_action_and_failures_abort() {
        let dir = std::env::temp_dir().join(format!("criu-rs-scripts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let ok = script(
            &dir,
            "ok.sh",
            &format!(
                "echo \"$CRTOOLS_SCRIPT_ACTION $CRTOOLS_INIT_PID $CRTOOLS_IMAGE_DIR\" >> {}",
                out.display()
            ),
        );
        let mut s = ActionScripts::new(vec![ok.clone()], PathBuf::from("/imgs"));
        s.notify("pre-dump", 0, None).unwrap();
        s.notify("post-dump", 42, None).unwrap();
        s.notify("orphan-pts-master", 42, None).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "pre-dump  /imgs\npost-dump 42 /imgs\n");

        let bad = script(&dir, "bad.sh", "exit 3");
        let mut s = ActionScripts::new(vec![bad, ok], PathBuf::from("/imgs"));
        let err = s.notify("network-lock", 7, None).unwrap_err();
        assert!(err.to_string().contains("network-lock"), "{err}");
        // The other scripts still ran, as in CRIU.
        assert!(std::fs::read_to_string(&out)
            .unwrap()
            .ends_with("network-lock 7 /imgs\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
