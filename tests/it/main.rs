//! End-to-end tests against a real Docker daemon and a real kernel, one binary for all.

mod cli;
mod common;
mod engine;
mod faults;
mod files_attack;
mod hostile;
mod isolation;
mod mcp;
mod net;
mod proxy;
mod rest;
