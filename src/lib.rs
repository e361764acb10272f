//! Courier facade (placeholder while the workspace is assembled).
pub use courier_core as core;
