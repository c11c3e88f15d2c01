//! metalherd: provisions bare-metal Kubernetes across data centers and
//! replaces whole clusters like cattle.
//!
//! Data flows one way: [`fleet`] loads and validates the fleet
//! repository, [`render`] turns it into per-machine boot configs, and the
//! command modules in [`cli`] act on them.

pub mod assets;
pub mod bootstrap;
pub mod cli;
pub mod errfmt;
pub mod example;
pub mod exec;
pub mod fleet;
pub mod fsutil;
pub mod infra;
pub mod job;
pub mod keys;
pub mod kubeconfig;
pub mod lab;
pub mod lifecycle;
pub mod metrics;
pub mod operation;
pub mod parallel;
pub mod pki;
pub mod power;
pub mod provision;
pub mod render;
pub mod runtime;
pub mod serve;
pub mod ssh;
pub mod state;
