//! The `sentinel.v1` protocol for Rust: prost messages and tonic client and server stubs,
//! compiled from `proto/sentinel/v1/sentinel.proto` at build time.

/// The `sentinel.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sentinel.v1");

    /// The encoded `FileDescriptorSet` of the package, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sentinel_descriptor.bin"));
}
