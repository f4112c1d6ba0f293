//! Architecture-specific code. Only x86-64 exists today.
#[allow(unsafe_code)]
pub mod x86_64;
pub use self::x86_64 as cur;
