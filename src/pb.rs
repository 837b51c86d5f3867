//! Protobuf messages of the images and the RPC protocol, generated from `proto/` by build.rs.
#![allow(clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/criu.rs"));
