//! Messages on the wire: exactly one protobuf message per SOCK_SEQPACKET packet, no length
//! prefix, at most one descriptor attached (SCM_RIGHTS). Both the server and the library's
//! client side use these.

use std::os::fd::{BorrowedFd, OwnedFd};

use prost::Message;

use crate::error::{Error, Result};
use crate::sys::sock;

/// A decoded message and the descriptor that came with it.
pub struct Received<M> {
    pub msg: M,
    pub fd: Option<OwnedFd>,
}

/// Sends `msg` as one packet, with `fd` attached when given.
pub fn send<M: Message>(sk: BorrowedFd<'_>, msg: &M, fd: Option<BorrowedFd<'_>>) -> Result<()> {
    sock::send_packet(sk, &msg.encode_to_vec(), fd)
        .map_err(|e| Error::sys("sending an RPC message", e))
}

/// Receives one message. `Ok(None)`: the peer closed the connection. A packet that does not
/// decode as `M` is an `Error::Rpc` naming `what` was expected.
pub fn recv<M: Message + Default>(sk: BorrowedFd<'_>, what: &str) -> Result<Option<Received<M>>> {
    let packet =
        match sock::recv_packet(sk).map_err(|e| Error::sys("receiving an RPC message", e))? {
            Some(p) => p,
            None => return Ok(None),
        };
    let msg = M::decode(packet.data.as_slice()).map_err(|e| {
        Error::Rpc(format!(
            "malformed {what} ({} bytes): {e}",
            packet.data.len()
        ))
    })?;
    Ok(Some(Received { msg, fd: packet.fd }))
}
