//! Names shared by every layer of the crate, from the backend handle down to error mapping.

/// The backend's short name, as reported by `backend_name()` and in errors.
pub const BACKEND_NAME: &str = "sqlite";
