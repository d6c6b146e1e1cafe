//! Support for netwall's end-to-end tests: the sample service, and (in `harness`) helpers that
//! start gateways, connectors and clients over real sockets.

pub mod browser;
pub mod cluster;
pub mod databases;
pub mod harness;
pub mod pebble;
pub mod redis;
pub mod sample;
pub mod wg;
