//! Protobuf messages of the images and the RPC protocol, generated from `proto/` by build.rs.
#![allow(clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/criu.rs"));

/// Every message of `proto/` as an encoded `google.protobuf.FileDescriptorSet`, for tools and
/// tests that need reflection (decoding an image generically, comparing with crit's schemas).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/criu-descriptors.bin"));
