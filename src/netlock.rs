//! The network lock (`--network-lock`): while an established TCP connection is dumped and
//! until its restored copy is ready, packets of that connection are dropped, so that neither
//! side answers the other with a reset. Like CRIU for a tree in the host's network namespace,
//! the lock is per connection: rules matching its 4-tuple in both directions.
//!
//! - nftables: one table `inet CRIU-<run id>` (the run id is saved in inventory.img, so the
//!   restore finds the table and deletes it whole), with input and output chains.
//! - iptables: one DROP rule per direction in INPUT and OUTPUT (ip6tables for IPv6); the
//!   restore deletes the same rules, rebuilt from the saved sockets.
//! - skip: nothing; the peer must stay quiet by itself (a packet that reaches the host while
//!   no socket owns the connection is answered with a reset).
//!
//! The tools are run as commands (`nft -f -`, `iptables -w`), as CRIU does.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::options::NetworkLock;

/// One locked connection: our end and the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// The nftables table of run `run_id`.
pub fn table_name(run_id: &str) -> String {
    format!("CRIU-{run_id}")
}

/// A run id: unique on this host for as long as a dump's lock may live.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", std::process::id(), now.as_micros())
}

fn nft_family(c: &Connection) -> &'static str {
    if c.local.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// The nft rules dropping both directions of `c`.
fn nft_rules(table: &str, c: &Connection) -> String {
    let f = nft_family(c);
    let (l, p) = (c.local, c.peer);
    format!(
        "add rule inet {table} output {f} saddr {} tcp sport {} {f} daddr {} tcp dport {} drop\n\
         add rule inet {table} input {f} saddr {} tcp sport {} {f} daddr {} tcp dport {} drop\n",
        l.ip(),
        l.port(),
        p.ip(),
        p.port(),
        p.ip(),
        p.port(),
        l.ip(),
        l.port()
    )
}

fn run(cmd: &mut Command, stdin: Option<&str>, what: &str) -> Result<()> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("{what}: run {:?}", cmd.get_program()), e))?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|e| Error::io(format!("{what}: write to {:?}", cmd.get_program()), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("{what}: wait for {:?}", cmd.get_program()), e))?;
    if !out.status.success() {
        return Err(Error::InvalidOptions(format!(
            "{what}: {:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn iptables_for(c: &Connection) -> &'static str {
    if c.local.is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    }
}

/// (chain, source, destination) of the two iptables rules of `c`.
fn iptables_rules(c: &Connection) -> [(&'static str, SocketAddr, SocketAddr); 2] {
    [("OUTPUT", c.local, c.peer), ("INPUT", c.peer, c.local)]
}

fn iptables(c: &Connection, op: &str, chain: &str, src: SocketAddr, dst: SocketAddr) -> Command {
    let mut cmd = Command::new(iptables_for(c));
    cmd.args(["-w", "-t", "filter", op, chain, "-p", "tcp"])
        .args([
            "-s",
            &src.ip().to_string(),
            "--sport",
            &src.port().to_string(),
        ])
        .args([
            "-d",
            &dst.ip().to_string(),
            "--dport",
            &dst.port().to_string(),
        ])
        .args(["-j", "DROP"]);
    cmd
}

/// Drops every packet of `c` from now on.
pub fn lock(method: NetworkLock, run_id: &str, c: &Connection) -> Result<()> {
    let what = format!("lock connection {} <-> {}", c.local, c.peer);
    match method {
        NetworkLock::Skip => Ok(()),
        NetworkLock::Nftables => {
            let table = table_name(run_id);
            // `add` of an existing table or chain is not an error: one script per connection.
            let script = format!(
                "add table inet {table}\n\
                 add chain inet {table} output {{ type filter hook output priority 0; policy accept; }}\n\
                 add chain inet {table} input {{ type filter hook input priority 0; policy accept; }}\n\
                 {}",
                nft_rules(&table, c)
            );
            run(Command::new("nft").args(["-f", "-"]), Some(&script), &what)
        }
        NetworkLock::Iptables => {
            for (i, (chain, src, dst)) in iptables_rules(c).into_iter().enumerate() {
                if let Err(e) = run(&mut iptables(c, "-I", chain, src, dst), None, &what) {
                    if i > 0 {
                        let (chain, src, dst) = iptables_rules(c)[0];
                        let _ = run(&mut iptables(c, "-D", chain, src, dst), None, &what);
                    }
                    return Err(e);
                }
            }
            Ok(())
        }
    }
}

/// Lets the packets of `conns` through again. Every rule is tried; the first failure is
/// returned.
pub fn unlock(method: NetworkLock, run_id: &str, conns: &[Connection]) -> Result<()> {
    match method {
        NetworkLock::Skip => Ok(()),
        NetworkLock::Nftables => {
            if conns.is_empty() {
                return Ok(());
            }
            let table = table_name(run_id);
            run(
                Command::new("nft").args(["delete", "table", "inet", &table]),
                None,
                &format!("unlock the network (nftables table {table})"),
            )
        }
        NetworkLock::Iptables => {
            let mut first = None;
            for c in conns {
                let what = format!("unlock connection {} <-> {}", c.local, c.peer);
                for (chain, src, dst) in iptables_rules(c) {
                    if let Err(e) = run(&mut iptables(c, "-D", chain, src, dst), None, &what) {
                        first.get_or_insert(e);
                    }
                }
            }
            first.map_or(Ok(()), Err)
        }
    }
}

/// CRIU's numbering of the methods in inventory.img and RPC (iptables 1, nftables 2, skip 3).
pub fn method_from_number(n: u32) -> Option<NetworkLock> {
    match n {
        1 => Some(NetworkLock::Iptables),
        2 => Some(NetworkLock::Nftables),
        3 => Some(NetworkLock::Skip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_rules_match_both_directions() {
        let c = Connection {
            local: "127.0.0.1:80".parse().unwrap(),
            peer: "127.0.0.2:4000".parse().unwrap(),
        };
        let r = nft_rules("CRIU-1", &c);
        assert!(r.contains(
            "output ip saddr 127.0.0.1 tcp sport 80 ip daddr 127.0.0.2 tcp dport 4000 drop"
        ));
        assert!(r.contains(
            "input ip saddr 127.0.0.2 tcp sport 4000 ip daddr 127.0.0.1 tcp dport 80 drop"
        ));
        let c6 = Connection {
            local: "[::1]:80".parse().unwrap(),
            peer: "[::1]:4000".parse().unwrap(),
        };
        assert!(nft_rules("T", &c6).contains("ip6 saddr ::1 tcp sport 80"));
        assert_eq!(method_from_number(2), Some(NetworkLock::Nftables));
        assert_eq!(method_from_number(0), None);
    }
}
