//! The embedded blobs (restorer and parasite) and the offsets build.rs
//! read from their ELF files.
include!(concat!(env!("OUT_DIR"), "/blobs.rs"));
