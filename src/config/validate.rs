//! Validation (stub; being written).
use super::{Config, ConfigError, yaml::Document};

pub fn validate(_doc: &Document, _origin: &str) -> Result<Config, ConfigError> {
    unimplemented!()
}
