//! Integration tests, built as one binary. Each module names what it guards.

mod bad_inputs;
mod board;
mod chaos;
mod cifar;
mod cluster;
mod coco;
mod common;
mod config_errors;
mod detection;
mod download;
mod end_to_end;
mod export;
mod fashion_mnist;
mod formats;
mod gpu_scripts;
mod image_folder;
mod layers;
mod learning;
mod localization;
mod mutation;
mod predict;
mod resume;
mod segmentation;
mod sweep;
mod torch_parity;
mod zoo;
