//! Runs the unit tests of the `loadgen` bench binary, whose own target has no test harness
//! (`harness = false`): the bench's files are compiled here as one module.

#[allow(dead_code)]
#[path = "../benches/loadgen/main.rs"]
mod loadgen;
