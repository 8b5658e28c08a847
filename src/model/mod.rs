//! A loaded model and its per-sequence state (KV caches, linear-attention conv and recurrent states).

pub mod qwen35;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::config::{LayerType, ModelConfig};
use crate::cpu::Cpu;
use crate::store::{ExpertStore, StreamOptions};
use crate::weights::Weights;

/// A model on a backend: its configuration, its weights where the backend keeps them, and the backend.
pub struct Model<B: Backend = Cpu> {
    pub config: ModelConfig,
    pub weights: Weights<B>,
    pub backend: B,
    /// Where the routed experts are read from when they are streamed (`LoadOptions::stream`).
    pub store: Option<Arc<ExpertStore>>,
}

/// How to load a model.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Experts per token instead of the model's own (`--k`).
    pub k: Option<usize>,
    /// Stream the routed experts from disk under these budgets instead of mapping them all (floe models only).
    pub stream: Option<StreamOptions>,
}

/// Which positions of a forward pass need logits: all (for `floe logits`) or the last (generation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    All,
    Last,
}

/// What a forward call runs: token ids, or one token a greedy choice left on the device ([`Model::choose`]).
pub enum Input<'a, B: Backend> {
    Ids(&'a [u32]),
    Chosen(&'a B::Chosen),
}

// By hand: a derive would ask B itself to be Copy.
impl<B: Backend> Clone for Input<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Input<'_, B> {}

impl<B: Backend> Input<'_, B> {
    /// Tokens it holds.
    pub fn tokens(&self) -> usize {
        match self {
            Input::Ids(ids) => ids.len(),
            Input::Chosen(_) => 1,
        }
    }
}

/// Everything a sequence carries from one forward call to the next.
pub struct State<B: Backend = Cpu> {
    /// Tokens already processed (the position of the next one).
    pub pos: usize,
    pub layers: Vec<LayerState<B>>,
}

pub enum LayerState<B: Backend = Cpu> {
    Attention(B::KvCache),
    Linear(B::LinearState),
}

impl Model {
    /// Loads a model directory: a floe model (floe.json), or a Hugging Face or mlx-community checkpoint
    /// (config.json + safetensors), read in place.
    pub fn load(dir: &Path) -> Result<Model> {
        Model::load_with(dir, &LoadOptions::default())
    }

    pub fn load_with(dir: &Path, options: &LoadOptions) -> Result<Model> {
        Model::load_weights(dir, options)?.with_k(options.k)
    }

    /// The model with `k` experts per token instead of its own (`--k`; none: its own).
    pub fn with_k(mut self, k: Option<usize>) -> Result<Model> {
        if let Some(k) = k {
            let c = &mut self.config;
            if k == 0 || k > c.num_experts {
                bail!("--k {k} must be between 1 and the model's {} experts", c.num_experts);
            }
            if k < c.experts_per_token {
                eprintln!(
                    "floe: warning: --k {k} is below the model's {} experts per token: expect lower quality",
                    c.experts_per_token
                );
            }
            c.experts_per_token = k;
        }
        Ok(self)
    }

    fn load_weights(dir: &Path, options: &LoadOptions) -> Result<Model> {
        if !dir.is_dir() {
            bail!("model directory {} does not exist", dir.display());
        }
        if dir.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".partial")) {
            bail!("{} is an interrupted conversion, not a model: run `floe convert` again", dir.display());
        }
        if crate::format::is_floe_dir(dir) {
            let floe = crate::format::FloeModel::open(dir)?;
            let loading = || format!("loading {}", dir.display());
            let Some(stream) = &options.stream else {
                let weights = floe.weights().with_context(loading)?;
                return Ok(Model { config: floe.manifest.config, weights, backend: Cpu, store: None });
            };
            let k = options.k.unwrap_or(floe.manifest.config.experts_per_token);
            let store = Arc::new(ExpertStore::open(&floe, k, stream)?);
            let weights = floe.streamed_weights(store.clone()).with_context(loading)?;
            return Ok(Model { config: floe.manifest.config, weights, backend: Cpu, store: Some(store) });
        }
        if options.stream.is_some() {
            bail!("{}: experts stream only from a floe model: run `floe convert {0} DST` first", dir.display());
        }
        let config = ModelConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let weights = Weights::load(&checkpoint, &config).with_context(|| format!("loading {}", dir.display()))?;
        Ok(Model { config, weights, backend: Cpu, store: None })
    }

    /// This model on another backend, its weights moved there.
    pub fn to_backend<B: WeightsFrom>(&self, backend: B) -> Result<Model<B>> {
        backend.supports(&self.config)?;
        let weights = backend.weights_from(&self.weights)?;
        Ok(Model { config: self.config.clone(), weights, backend, store: self.store.clone() })
    }
}

/// A backend that can take host weights (uploading them, for a GPU).
pub trait WeightsFrom: Backend {
    /// Whether this backend can run a model of this configuration (a clear error if not, before any upload).
    fn supports(&self, _config: &ModelConfig) -> Result<()> {
        Ok(())
    }
    fn weights_from(&self, host: &Weights) -> Result<Weights<Self>>;
}

impl<B: Backend> Model<B> {

    pub fn new_state(&self) -> Result<State<B>> {
        let c = &self.config;
        let mut layers = Vec::with_capacity(c.layer_types.len());
        for lt in &c.layer_types {
            layers.push(match lt {
                LayerType::FullAttention => LayerState::Attention(self.backend.new_kv_cache(c.num_kv_heads * c.head_dim)?),
                LayerType::LinearAttention => {
                    let l = c.linear.as_ref().context("linear-attention layer without linear-attention config")?;
                    LayerState::Linear(self.backend.new_linear_state(l)?)
                }
            });
        }
        Ok(State { pos: 0, layers })
    }

    /// A copy of `state`: the same sequence, to be continued separately.
    pub fn copy_state(&self, state: &State<B>) -> Result<State<B>> {
        let layers = state
            .layers
            .iter()
            .map(|l| match l {
                LayerState::Attention(c) => self.backend.copy_kv_cache(c).map(LayerState::Attention),
                LayerState::Linear(s) => self.backend.copy_linear_state(s).map(LayerState::Linear),
            })
            .collect::<Result<_>>()?;
        Ok(State { pos: state.pos, layers })
    }

    /// Runs `tokens` through the model after what `state` holds, updating it. Several tokens are one batched
    /// prefill; one token is a decode step. Returns logits `[n, vocab]` for the positions `which` selects.
    pub fn forward(&self, tokens: &[u32], state: &mut State<B>, which: Logits) -> Result<Vec<f32>> {
        let logits = self.logits(Input::Ids(tokens), state, which)?;
        self.backend.read(&logits)
    }

    /// Like [`Model::forward`] for the last position, returning only its most likely next token (greedy
    /// decoding: the backend reads back one id, not the logits).
    pub fn forward_greedy(&self, tokens: &[u32], state: &mut State<B>) -> Result<u32> {
        let logits = self.logits(Input::Ids(tokens), state, Logits::Last)?;
        self.backend.argmax(&logits)
    }

    /// Like [`Model::forward_greedy`], its choice left on the device ([`Backend::choose`]): a token chosen so
    /// can be the next call's input before the CPU reads it ([`Backend::read_chosen`]).
    pub fn choose(&self, input: Input<B>, state: &mut State<B>) -> Result<B::Chosen> {
        let logits = self.logits(input, state, Logits::Last)?;
        self.backend.choose(&logits)
    }

    fn logits(&self, input: Input<B>, state: &mut State<B>, which: Logits) -> Result<B::Act> {
        if let Input::Ids(tokens) = input {
            if tokens.is_empty() {
                bail!("no tokens to run");
            }
            self.config.check_tokens(tokens)?;
        }
        qwen35::forward(&self.backend, &self.config, &self.weights, input, state, which)
    }
}
