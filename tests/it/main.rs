//! End-to-end tests against a real Docker daemon and a real kernel, one binary for all.

mod browser;
mod cli;
mod common;
mod compose;
mod engine;
mod executions;
mod faults;
mod file_ops;
mod files_attack;
mod guard;
mod hostile;
mod isolation;
mod lifetimes;
mod limits;
mod mcp;
mod mcp_sessions;
mod mcp_state;
mod net;
mod ops;
mod packages;
mod pip;
mod processes;
mod proxy;
mod quota;
mod rest;
mod starts;
