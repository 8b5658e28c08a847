//! Text generation: tokenize, prefill, decode (greedy or sampled), stream the text as it comes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokenizers::Tokenizer;

use crate::backend::Backend;
use crate::model::{Logits, Model, State};
use crate::sample::{Sampler, Sampling};

/// The built-in default model's tokenizer: a 512-token byte-level BPE made by tools/make_fixtures.py.
const DEFAULT_TOKENIZER: &str = include_str!("../assets/default-model/tokenizer.json");

pub fn default_tokenizer() -> Tokenizer {
    Tokenizer::from_bytes(DEFAULT_TOKENIZER).expect("the embedded default tokenizer is valid")
}

pub fn load_tokenizer(model_dir: &Path) -> Result<Tokenizer> {
    let path = model_dir.join("tokenizer.json");
    if !path.exists() {
        anyhow::bail!("{}: no tokenizer.json (needed to turn the prompt into tokens)", model_dir.display());
    }
    Tokenizer::from_file(&path).map_err(|e| anyhow!("{}: cannot load the tokenizer: {e}", path.display()))
}

pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token: Duration,
    pub decode_time: Duration,
}

/// Generates up to `max_tokens` tokens after `prompt`, chosen as `sampling` says, calling `emit` with each new
/// piece of text. Text is emitted only up to the last complete UTF-8 character, so a character split across tokens
/// is never broken.
pub fn generate<B: Backend>(
    model: &Model<B>,
    tokenizer: &Tokenizer,
    prompt: &str,
    max_tokens: usize,
    sampling: &Sampling,
    mut emit: impl FnMut(&str),
) -> Result<Stats> {
    let encoding = tokenizer.encode(prompt, false).map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
    let prompt_ids = encoding.get_ids().to_vec();
    if prompt_ids.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let mut sampler = Sampler::new(sampling.clone(), &prompt_ids);
    // Greedy decoding lets the backend pick the token (one id read back); sampling needs the logits.
    let step = |tokens: &[u32], state: &mut State<B>, sampler: &mut Sampler| -> Result<u32> {
        if sampler.is_greedy() {
            return model.forward_greedy(tokens, state);
        }
        let mut logits = model.forward(tokens, state, Logits::Last)?;
        Ok(sampler.sample(&mut logits))
    };
    let start = Instant::now();
    let mut state = model.new_state()?;
    let mut next = step(&prompt_ids, &mut state, &mut sampler).context("prefill")?;
    let time_to_first_token = start.elapsed();
    let mut generated: Vec<u32> = Vec::new();
    let mut printed = 0;
    let decode_start = Instant::now();
    while generated.len() < max_tokens {
        if model.config.eos_token_ids.contains(&next) {
            break;
        }
        generated.push(next);
        sampler.observe(next);
        let text = tokenizer.decode(&generated, true).map_err(|e| anyhow!("cannot decode tokens: {e}"))?;
        if text.len() > printed && !text.ends_with('\u{FFFD}') {
            emit(&text[printed..]);
            printed = text.len();
        }
        if generated.len() < max_tokens {
            next = step(&[next], &mut state, &mut sampler).context("decode")?;
        }
    }
    Ok(Stats {
        prompt_tokens: prompt_ids.len(),
        generated_tokens: generated.len(),
        time_to_first_token,
        decode_time: decode_start.elapsed(),
    })
}
