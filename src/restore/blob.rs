//! The embedded restorer blob and the offsets build.rs read from its ELF.
include!(concat!(env!("OUT_DIR"), "/blobs.rs"));
