//! floe: runs Mixture-of-Experts LLMs larger than memory by streaming the routed experts from SSD.
//!
//! Data flow: [`checkpoint`] (safetensors files) → [`config`] + [`weights`] (one canonical form) → [`convert`]
//! (writes floe's [`format`], quantized by [`quant`]) → [`model`] (state and forward pass, on the [`cpu`]
//! kernels) → [`generate`] (tokens to text).

pub mod backend;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod conversation;
pub mod convert;
pub mod cpu;
pub mod format;
pub mod generate;
pub mod gpu;
pub mod model;
pub mod npy;
pub mod quant;
pub mod sample;
pub mod serve;
pub mod store;
pub mod synthetic;
pub mod tensor;
pub mod tool_calls;
pub mod weights;
