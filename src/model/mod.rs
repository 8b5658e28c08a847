//! A loaded model and its per-sequence state (KV caches, linear-attention conv and recurrent states).

mod qwen35;

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::checkpoint::Checkpoint;
use crate::config::{LayerType, ModelConfig};
use crate::weights::Weights;

pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
}

/// Which positions of a forward pass need logits: all (for `floe logits`) or the last (generation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    All,
    Last,
}

/// Everything a sequence carries from one forward call to the next.
pub struct State {
    /// Tokens already processed (the position of the next one).
    pub pos: usize,
    pub layers: Vec<LayerState>,
}

pub enum LayerState {
    /// Post-norm, post-RoPE keys and the values, `[pos, kv_heads, head_dim]` each.
    Attention { keys: Vec<f32>, values: Vec<f32> },
    /// The last `kernel - 1` pre-conv inputs `[kernel - 1, channels]` and the delta-rule state `[Hv, dk, dv]`.
    Linear { conv: Vec<f32>, recurrent: Vec<f32> },
}

impl Model {
    /// Loads a model directory: a floe model (floe.json), or a Hugging Face or mlx-community checkpoint
    /// (config.json + safetensors), read in place.
    pub fn load(dir: &Path) -> Result<Model> {
        if !dir.is_dir() {
            bail!("model directory {} does not exist", dir.display());
        }
        if dir.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".partial")) {
            bail!("{} is an interrupted conversion, not a model: run `floe convert` again", dir.display());
        }
        if crate::format::is_floe_dir(dir) {
            let floe = crate::format::FloeModel::open(dir)?;
            let weights = floe.weights().with_context(|| format!("loading {}", dir.display()))?;
            return Ok(Model { config: floe.manifest.config, weights });
        }
        let config = ModelConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let weights = Weights::load(&checkpoint, &config).with_context(|| format!("loading {}", dir.display()))?;
        Ok(Model { config, weights })
    }

    pub fn new_state(&self) -> State {
        let c = &self.config;
        let layers = c
            .layer_types
            .iter()
            .map(|lt| match lt {
                LayerType::FullAttention => LayerState::Attention { keys: vec![], values: vec![] },
                LayerType::LinearAttention => {
                    let l = c.linear.as_ref().expect("linear layer without linear-attention config");
                    LayerState::Linear {
                        conv: vec![0.0; (l.conv_kernel - 1) * l.conv_channels()],
                        recurrent: vec![0.0; l.num_value_heads * l.key_head_dim * l.value_head_dim],
                    }
                }
            })
            .collect();
        State { pos: 0, layers }
    }

    /// Runs `tokens` through the model after what `state` holds, updating it. Several tokens are one batched
    /// prefill; one token is a decode step. Returns logits `[n, vocab]` for the positions `which` selects.
    pub fn forward(&self, tokens: &[u32], state: &mut State, which: Logits) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            bail!("no tokens to run");
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            bail!("token id {bad} is outside the vocabulary (size {})", self.config.vocab_size);
        }
        Ok(qwen35::forward(&self.config, &self.weights, tokens, state, which))
    }
}
