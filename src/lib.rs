//! runner: a declarative deep-learning experiment runner for computer vision, on candle.
//!
//! Data flow: [`config`] (TOML files merged, strict) -> [`plan`] (validated, shapes
//! inferred, no tensors) -> [`data`] and [`model`] -> [`train`] (optimizer, metrics) ->
//! [`runlog`] (the run folder and its parquet tables). [`cli`] wires them to commands.

pub mod board;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod config;
pub mod data;
pub mod device;
pub mod export;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plan;
pub mod plots;
pub mod predict;
pub mod progress;
pub mod protobuf;
pub mod rng;
pub mod runlog;
pub mod schedule;
pub mod signals;
pub mod step;
pub mod sweep;
pub mod task;
pub mod train;
