//! The model configuration, read from a Hugging Face `config.json`.
//!
//! Supported `model_type`s: `qwen3_5_moe` (official releases: the text model nested in `text_config`),
//! `qwen3_5_moe_text`, `qwen3_next` and `qwen3_moe`. Any field the forward pass needs and the file lacks is an
//! error naming it; fields with a documented default in transformers take that default.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Qwen3.5-MoE: gated attention + Gated DeltaNet, split linear-attention projections.
    Qwen35Moe,
    /// Qwen3-Next: as Qwen3.5-MoE, but linear-attention projections grouped per key head (converted on load).
    Qwen3Next,
    /// Qwen3-MoE: plain attention with full RoPE, no linear attention, no shared expert.
    Qwen3Moe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    FullAttention,
    LinearAttention,
}

/// Gated DeltaNet dimensions (Qwen3.5-MoE and Qwen3-Next).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearAttnConfig {
    pub num_key_heads: usize,
    pub num_value_heads: usize,
    pub key_head_dim: usize,
    pub value_head_dim: usize,
    pub conv_kernel: usize,
}

impl LinearAttnConfig {
    /// Channels of the causal conv: [q all heads | k all heads | v all heads].
    pub fn conv_channels(&self) -> usize {
        2 * self.num_key_heads * self.key_head_dim + self.num_value_heads * self.value_head_dim
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub layer_types: Vec<LayerType>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates (head_dim × partial_rotary_factor).
    pub rotary_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f32,
    pub linear: Option<LinearAttnConfig>,
    pub num_experts: usize,
    pub experts_per_token: usize,
    pub moe_intermediate_size: usize,
    pub shared_expert_intermediate_size: Option<usize>,
    /// Renormalize the top-k routing weights to sum to 1 (always on in Qwen3.5-MoE).
    pub norm_topk_prob: bool,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// An error unless every id is in the vocabulary.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            Some(bad) => bail!("token id {bad} is outside the vocabulary (size {})", self.vocab_size),
            None => Ok(()),
        }
    }

    pub fn load(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        ModelConfig::from_hf(&json).with_context(|| format!("{}", path.display()))
    }

    pub fn num_layers(&self) -> usize {
        self.layer_types.len()
    }

    /// Gated attention (query rows interleaved with output-gate rows per head): Qwen3.5-MoE and Qwen3-Next.
    pub fn attn_output_gate(&self) -> bool {
        self.arch != Arch::Qwen3Moe
    }

    pub fn from_hf(root: &Value) -> Result<ModelConfig> {
        let model_type = root.get("model_type").and_then(Value::as_str).unwrap_or("");
        let (arch, c) = match model_type {
            "qwen3_5_moe" => {
                let text = root.get("text_config").context("missing field `text_config`")?;
                (Arch::Qwen35Moe, text)
            }
            "qwen3_5_moe_text" => (Arch::Qwen35Moe, root),
            "qwen3_next" => (Arch::Qwen3Next, root),
            "qwen3_moe" => (Arch::Qwen3Moe, root),
            "" => bail!("missing field `model_type`"),
            other => bail!(
                "unsupported model_type `{other}` (floe runs qwen3_5_moe, qwen3_5_moe_text, qwen3_next, qwen3_moe)"
            ),
        };
        let f = Fields(c);
        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_layers = f.usize("num_hidden_layers")?;
        let head_dim = f.opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads);

        let layer_types = match arch {
            Arch::Qwen3Moe => vec![LayerType::FullAttention; num_layers],
            _ => match c.get("layer_types") {
                Some(v) => parse_layer_types(v, num_layers)?,
                None => {
                    let interval = f.opt_usize("full_attention_interval")?.unwrap_or(4);
                    (0..num_layers)
                        .map(|i| {
                            if (i + 1) % interval == 0 { LayerType::FullAttention } else { LayerType::LinearAttention }
                        })
                        .collect()
                }
            },
        };

        // RoPE parameters live at the top level (older configs) or in `rope_parameters` (transformers 5).
        let rope = c.get("rope_parameters").or_else(|| c.get("rope_scaling")).filter(|v| v.is_object());
        if let Some(kind) = rope.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(Value::as_str) {
            if kind != "default" {
                bail!("unsupported rope_type `{kind}` (floe implements the default RoPE)");
            }
        }
        let rope_field = |name: &str| rope.and_then(|r| r.get(name)).or_else(|| c.get(name)).and_then(Value::as_f64);
        let rope_theta = rope_field("rope_theta").context("missing field `rope_theta`")?;
        let partial = rope_field("partial_rotary_factor").unwrap_or(1.0);
        let rotary_dim = (head_dim as f64 * partial) as usize;

        let linear = if arch == Arch::Qwen3Moe {
            None
        } else {
            Some(LinearAttnConfig {
                num_key_heads: f.usize("linear_num_key_heads")?,
                num_value_heads: f.usize("linear_num_value_heads")?,
                key_head_dim: f.usize("linear_key_head_dim")?,
                value_head_dim: f.usize("linear_value_head_dim")?,
                conv_kernel: f.usize("linear_conv_kernel_dim")?,
            })
        };
        if arch != Arch::Qwen35Moe {
            // Qwen3-Next and Qwen3-MoE may declare dense-MLP layers; no released MoE checkpoint uses them.
            let sparse_step = f.opt_usize("decoder_sparse_step")?.unwrap_or(1);
            let dense = c.get("mlp_only_layers").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            if sparse_step != 1 || dense {
                bail!("unsupported: dense MLP layers (decoder_sparse_step ≠ 1 or mlp_only_layers non-empty)");
            }
        }
        if c.get("attention_bias").and_then(Value::as_bool) == Some(true) {
            bail!("unsupported: attention_bias = true");
        }
        let num_experts = match f.opt_usize("num_experts")? {
            Some(n) => n,
            None => f.usize("num_local_experts").context("missing field `num_experts`")?,
        };
        let eos = root.get("eos_token_id").filter(|v| !v.is_null()).or_else(|| c.get("eos_token_id"));
        let eos_token_ids = match eos {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
            Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            None => vec![],
        };
        let rms_norm_eps = c.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6) as f32;
        let tie = c.get("tie_word_embeddings").or_else(|| root.get("tie_word_embeddings"));
        Ok(ModelConfig {
            arch,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            layer_types,
            num_heads,
            num_kv_heads: f.usize("num_key_value_heads")?,
            head_dim,
            rotary_dim,
            rope_theta,
            rms_norm_eps,
            linear,
            num_experts,
            experts_per_token: f.usize("num_experts_per_tok")?,
            moe_intermediate_size: f.usize("moe_intermediate_size")?,
            shared_expert_intermediate_size: match arch {
                Arch::Qwen3Moe => None,
                _ => Some(f.usize("shared_expert_intermediate_size")?),
            },
            // Qwen3.5-MoE's router always renormalizes; the others follow the flag (transformers' default: false).
            norm_topk_prob: arch == Arch::Qwen35Moe
                || c.get("norm_topk_prob").and_then(Value::as_bool).unwrap_or(false),
            tie_word_embeddings: tie.and_then(Value::as_bool).unwrap_or(false),
            eos_token_ids,
        }
        .validated()?)
    }

    fn validated(self) -> Result<ModelConfig> {
        if self.num_heads % self.num_kv_heads != 0 {
            bail!("num_attention_heads {} is not a multiple of num_key_value_heads {}", self.num_heads, self.num_kv_heads);
        }
        if self.rotary_dim % 2 != 0 || self.rotary_dim > self.head_dim {
            bail!("rotary dimension {} must be even and at most head_dim {}", self.rotary_dim, self.head_dim);
        }
        if let Some(l) = &self.linear {
            if l.num_value_heads % l.num_key_heads != 0 {
                bail!("linear_num_value_heads {} is not a multiple of linear_num_key_heads {}", l.num_value_heads, l.num_key_heads);
            }
        }
        if self.experts_per_token == 0 || self.experts_per_token > self.num_experts {
            bail!("num_experts_per_tok {} must be between 1 and num_experts {}", self.experts_per_token, self.num_experts);
        }
        Ok(self)
    }
}

fn parse_layer_types(v: &Value, num_layers: usize) -> Result<Vec<LayerType>> {
    let list = v.as_array().context("field `layer_types` is not a list")?;
    let types = list
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(LayerType::FullAttention),
            Some("linear_attention") => Ok(LayerType::LinearAttention),
            _ => bail!("field `layer_types`: unknown layer type {t}"),
        })
        .collect::<Result<Vec<_>>>()?;
    if types.len() != num_layers {
        bail!("field `layer_types` has {} entries but num_hidden_layers is {num_layers}", types.len());
    }
    Ok(types)
}

/// Typed access to the fields of one JSON object, with errors that name the field.
struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).with_context(|| format!("field `{name}` is not an integer: {v}")),
        }
    }

    fn usize(&self, name: &str) -> Result<usize> {
        self.opt_usize(name)?.with_context(|| format!("missing field `{name}`"))
    }
}
