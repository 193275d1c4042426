//! Header names of weir's wire contract (SPEC §3), as constants: a `&str` name is parsed
//! on every use, which showed in profiles of the request path.

use http::HeaderName;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_WEIR_BACKEND: HeaderName = HeaderName::from_static("x-weir-backend");
pub const X_WEIR_VARIANT: HeaderName = HeaderName::from_static("x-weir-variant");
pub const X_WEIR_CACHE: HeaderName = HeaderName::from_static("x-weir-cache");
pub const X_WEIR_OVERHEAD_MS: HeaderName = HeaderName::from_static("x-weir-overhead-ms");
pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
