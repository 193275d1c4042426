//! Durations and sizes (stub; being written).
use std::time::Duration;

pub fn parse_duration(_s: &str) -> Result<Duration, String> {
    unimplemented!()
}

pub fn parse_size(_s: &str) -> Result<u64, String> {
    unimplemented!()
}
