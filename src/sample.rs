//! Choosing the next token from the logits: greedy, or sampled with temperature, top-k, top-p and min-p, after
//! repetition, presence and frequency penalties; seeded, so a run can be repeated exactly.
//!
//! The order, as llama.cpp and vLLM apply them: penalties, temperature, top-k, top-p, min-p, then a draw from
//! what is left. The repetition penalty (transformers' form: a positive logit divided by it, a negative one
//! multiplied) covers the prompt and the generated tokens; presence and frequency penalties (OpenAI's form:
//! minus `presence` once a token appeared, minus `frequency` per appearance) cover the generated tokens.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one; 0 keeps all.
    pub min_p: f32,
    /// 1 is off.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Whether the choice is the most likely token, whatever was generated before (then the backend can pick it
    /// and read back one id instead of the logits).
    pub fn is_greedy(&self) -> bool {
        (self.temperature <= 0.0 || self.top_k == 1)
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }
}

pub struct Sampler {
    config: Sampling,
    rng: ChaCha8Rng,
    /// Tokens of the prompt (for the repetition penalty only).
    prompt: Vec<u32>,
    /// How often each token was generated.
    generated: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(config: Sampling, prompt: &[u32]) -> Sampler {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Sampler { config, rng, prompt: prompt.to_vec(), generated: HashMap::new() }
    }

    pub fn is_greedy(&self) -> bool {
        self.config.is_greedy()
    }

    /// Records a generated token (for the penalties).
    pub fn observe(&mut self, token: u32) {
        *self.generated.entry(token).or_default() += 1;
    }

    /// The next token from these logits (changed in place by the penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let c = &self.config;
        if c.repetition_penalty != 1.0 {
            let mut seen: Vec<u32> = self.prompt.iter().copied().chain(self.generated.keys().copied()).collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / c.repetition_penalty } else { *l * c.repetition_penalty };
                }
            }
        }
        for (&t, &count) in &self.generated {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= c.presence_penalty + c.frequency_penalty * count as f32;
            }
        }
        if c.temperature <= 0.0 || c.top_k == 1 {
            return crate::cpu::argmax(logits);
        }
        // Candidates by decreasing logit (ties: lower id first), cut by top-k.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        if c.top_k > 0 {
            order.truncate(c.top_k);
        }
        let top = logits[order[0] as usize] / c.temperature;
        let mut probs: Vec<f32> = order.iter().map(|&t| (logits[t as usize] / c.temperature - top).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        // top-p: the smallest prefix whose mass reaches p (at least one token).
        let mut keep = probs.len();
        if c.top_p < 1.0 {
            let mut mass = 0.0;
            if let Some(i) = probs.iter().position(|p| {
                mass += p;
                mass >= c.top_p
            }) {
                keep = i + 1;
            }
        }
        // min-p: relative to the most likely token.
        let floor = c.min_p * probs[0];
        keep = probs[..keep].iter().take_while(|&&p| p >= floor).count().max(1);
        let mass: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * mass;
        for (i, p) in probs[..keep].iter().enumerate() {
            r -= p;
            if r < 0.0 {
                return order[i];
            }
        }
        order[keep - 1]
    }
}
