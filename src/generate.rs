//! Text generation: a [`Session`] holds one sequence's model state, so a conversation prefills only each new
//! turn; [`Session::generate`] prefills text, then decodes (greedy or sampled) until an end-of-sequence token, a
//! stop string, the token limit or the caller's cancel, streaming the text as it comes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokenizers::Tokenizer;

use crate::backend::Backend;
use crate::model::{Input, Logits, Model, State};
use crate::sample::{Sampler, Sampling};

/// The built-in default model's tokenizer: a 512-token byte-level BPE made by tools/make_fixtures.py.
pub const DEFAULT_TOKENIZER: &str = include_str!("../assets/default-model/tokenizer.json");

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

/// The end-of-sequence ids of a model directory: generation_config.json's `eos_token_id` (an id or a list), else
/// the model config's.
pub fn eos_ids(model_dir: Option<&Path>, config_ids: &[u32]) -> Vec<u32> {
    let from_generation_config = model_dir
        .and_then(|d| std::fs::read_to_string(d.join("generation_config.json")).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| match v.get("eos_token_id")? {
            serde_json::Value::Number(n) => Some(vec![n.as_u64()? as u32]),
            serde_json::Value::Array(a) => a.iter().map(|n| n.as_u64().map(|n| n as u32)).collect(),
            _ => None,
        });
    let mut ids = from_generation_config.unwrap_or_default();
    for id in config_ids {
        if !ids.contains(id) {
            ids.push(*id);
        }
    }
    ids
}

/// How to generate.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Stop when the text contains one of these (the text ends before it).
    pub stop: Vec<String>,
    /// Close an open `<think>` after this many tokens of thinking (Qwen3.5 opens it in the prompt).
    pub think_budget: Option<usize>,
    /// Whether the prompt leaves the model inside `<think>` (for the budget).
    pub thinking: bool,
    /// Go on past end-of-sequence tokens (benchmarks, tests).
    pub ignore_eos: bool,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller's `emit` returned false.
    Cancelled,
}

impl Finish {
    /// OpenAI's name for it.
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Stop | Finish::Cancelled => "stop",
            Finish::Length => "length",
        }
    }
}

pub struct Outcome {
    /// The generated text (without the stop string or end token).
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token: Duration,
    pub decode_time: Duration,
}

/// One sequence on a model: what it has processed so far lives in `state`.
pub struct Session<'m, B: Backend> {
    pub model: &'m Model<B>,
    pub tokenizer: &'m Tokenizer,
    pub eos: Vec<u32>,
    state: State<B>,
    /// Tokens processed so far (the prompt and answers of every turn).
    pub history: Vec<u32>,
    /// A token chosen but not yet fed (the end token of the last answer: the next turn starts by feeding it).
    pub pending: Option<u32>,
}

impl<'m, B: Backend> Session<'m, B> {
    pub fn new(model: &'m Model<B>, tokenizer: &'m Tokenizer, eos: Vec<u32>) -> Result<Session<'m, B>> {
        Ok(Session { model, tokenizer, eos, state: model.new_state()?, history: vec![], pending: None })
    }

    /// A session continuing from `state`, which holds `history`.
    pub fn resume(model: &'m Model<B>, tokenizer: &'m Tokenizer, eos: Vec<u32>, state: State<B>, history: Vec<u32>) -> Self {
        Session { model, tokenizer, eos, state, history, pending: None }
    }

    /// A copy of the model state (what `history` led to; a pending token is not in it).
    pub fn copy_state(&self) -> Result<State<B>> {
        self.model.copy_state(&self.state)
    }

    /// Runs `tokens` through the model without generating (a prefill to keep a state at).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        let mut all: Vec<u32> = self.pending.take().into_iter().collect();
        all.extend_from_slice(tokens);
        if !all.is_empty() {
            self.model.config.check_tokens(&all)?;
            self.model.forward_greedy(&all, &mut self.state)?;
            self.history.extend_from_slice(&all);
        }
        Ok(())
    }

    /// Forgets everything (a new conversation).
    pub fn reset(&mut self) -> Result<()> {
        self.state = self.model.new_state()?;
        self.history.clear();
        self.pending = None;
        Ok(())
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Feeds `prompt` after what the session holds, then generates, calling `emit` with each new piece of text
    /// (only up to the last complete UTF-8 character, never part of a possible stop string); `emit` returning
    /// false stops at once.
    pub fn generate(&mut self, prompt: &str, g: &Generation, emit: impl FnMut(&str) -> bool) -> Result<Outcome> {
        let ids = self.encode(prompt)?;
        self.generate_ids(&ids, g, emit)
    }

    /// [`Session::generate`] from token ids.
    pub fn generate_ids(&mut self, prompt: &[u32], g: &Generation, mut emit: impl FnMut(&str) -> bool) -> Result<Outcome> {
        let mut prompt_ids: Vec<u32> = self.pending.take().into_iter().collect();
        prompt_ids.extend_from_slice(prompt);
        if prompt_ids.is_empty() {
            anyhow::bail!("the prompt is empty");
        }
        self.model.config.check_tokens(&prompt_ids)?;
        let mut sampler = Sampler::new(g.sampling.clone(), &[&self.history[..], &prompt_ids[..]].concat());
        let think_close = self.encode("\n</think>\n\n")?;
        let mut in_thought = g.thinking;
        // Greedy decoding runs the step after a token before reading the token back where that keeps the device
        // busy: the backend records work without doing it (a GPU), and no step waits for the device midway (as
        // streamed experts do, layer by layer: there the token would only show a step later). And only where that
        // step surely follows as a plain decode step (not at the token limit, not where the thinking budget may
        // close the thought).
        let run_ahead = self.model.backend.runs_ahead() && self.model.store.is_none();
        let plain_step_follows = |generated: usize, in_thought: bool| {
            run_ahead && generated + 1 < g.max_tokens && !(in_thought && g.think_budget.is_some_and(|b| generated + 1 >= b))
        };
        let start = Instant::now();
        let (mut next, mut ahead) = if sampler.is_greedy() {
            let chosen = self.model.choose(Input::Ids(&prompt_ids), &mut self.state).context("prefill")?;
            self.read_running_ahead(chosen, plain_step_follows(0, in_thought))?
        } else {
            (self.step(&prompt_ids, &mut sampler).context("prefill")?, None)
        };
        self.history.extend_from_slice(&prompt_ids);
        let time_to_first_token = start.elapsed();
        let decode_start = Instant::now();
        let mut generated: Vec<u32> = Vec::new();
        let (mut text, mut emitted) = (String::new(), 0);
        let mut finish = Finish::Length;
        // Invariant: `history` holds every token fed. `next` is chosen; it is fed too where `ahead` holds the
        // device's choice of the token after it (greedy decoding ran that step before reading `next`).
        loop {
            if self.eos.contains(&next) && !g.ignore_eos {
                // Fed (here or at the start of the next turn), so the model sees its answer closed.
                self.set_aside(next, ahead.is_some());
                finish = Finish::Stop;
                break;
            }
            generated.push(next);
            sampler.observe(next);
            text = self.tokenizer.decode(&generated, false).map_err(|e| anyhow!("cannot decode tokens: {e}"))?;
            if in_thought && text.contains("</think>") {
                in_thought = false;
            }
            if let Some(at) = g.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(at);
                self.set_aside(next, ahead.is_some());
                finish = Finish::Stop;
                break;
            }
            // Hold back a tail that could begin a stop string, and a split UTF-8 character.
            let held = g.stop.iter().map(|s| partial_suffix(&text, s)).max().unwrap_or(0);
            let ready = text.len() - held;
            if ready > emitted && text.is_char_boundary(ready) && !text[..ready].ends_with('\u{FFFD}') {
                if !emit(&text[emitted..ready]) {
                    self.set_aside(next, ahead.is_some());
                    finish = Finish::Cancelled;
                    break;
                }
                emitted = ready;
            }
            if let Some(chosen) = ahead.take() {
                // The step after `next` ran already: read its choice, running the one after it first.
                self.history.push(next);
                (next, ahead) = self.read_running_ahead(chosen, plain_step_follows(generated.len(), in_thought))?;
                continue;
            }
            if generated.len() >= g.max_tokens {
                self.pending = Some(next);
                break;
            }
            if in_thought && g.think_budget.is_some_and(|b| generated.len() >= b) {
                // Out of thinking budget: close the thought and go on to the answer.
                in_thought = false;
                let forced = [&[next][..], &think_close].concat();
                generated.extend_from_slice(&think_close);
                next = self.step(&forced, &mut sampler).context("decode")?;
                self.history.extend_from_slice(&forced);
                continue;
            }
            next = self.step(&[next], &mut sampler).context("decode")?;
            self.history.push(*generated.last().unwrap());
        }
        if finish != Finish::Cancelled && text.len() > emitted {
            emit(&text[emitted..]);
        }
        let n = generated.len();
        Ok(self.outcome(text, finish, prompt_ids.len(), n, time_to_first_token, decode_start))
    }

    fn outcome(&self, text: String, finish: Finish, prompt: usize, generated: usize, ttft: Duration, decode: Instant) -> Outcome {
        Outcome {
            text,
            finish,
            prompt_tokens: prompt,
            generated_tokens: generated,
            time_to_first_token: ttft,
            decode_time: decode.elapsed(),
        }
    }

    /// Reads back a token the device chose; when `run_ahead`, first runs the decode step that feeds it, so that
    /// the device computes it while the CPU reads and handles this one. Returns the token and that step's choice.
    fn read_running_ahead(&mut self, chosen: B::Chosen, run_ahead: bool) -> Result<(u32, Option<B::Chosen>)> {
        let ahead = match run_ahead {
            true => Some(self.model.choose(Input::Chosen(&chosen), &mut self.state).context("decode")?),
            false => None,
        };
        Ok((self.model.backend.read_chosen(&chosen)?, ahead))
    }

    /// Where generation stops at `next`: it is in the state already if `fed` (a step ran ahead), else it waits
    /// for the next turn, which starts by feeding it.
    fn set_aside(&mut self, next: u32, fed: bool) {
        match fed {
            true => self.history.push(next),
            false => self.pending = Some(next),
        }
    }

    /// Runs `tokens` and picks the next one: greedy decoding lets the backend pick (one id read back).
    fn step(&mut self, tokens: &[u32], sampler: &mut Sampler) -> Result<u32> {
        if sampler.is_greedy() {
            return self.model.forward_greedy(tokens, &mut self.state);
        }
        let mut logits = self.model.forward(tokens, &mut self.state, Logits::Last)?;
        Ok(sampler.sample(&mut logits))
    }
}

/// The length of the longest end of `text` that is a proper beginning of `tag` (text to hold back while it may
/// still become `tag`).
pub fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len()).rev().find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n])).unwrap_or(0)
}

const THINK_END: &str = "</think>";

/// Part of a streamed answer: thinking (before `</think>`, when the prompt opened `<think>`) or the answer.
#[derive(Debug, PartialEq)]
pub enum Part {
    Thought(String),
    Answer(String),
}

/// Splits a streamed answer into thinking and answer, never passing on part of `</think>`.
pub struct ThoughtSplitter {
    in_thought: bool,
    held: String,
    /// Right after `</think>`: the newlines that separate it from the answer are dropped.
    after_thought: bool,
}

impl ThoughtSplitter {
    /// `thinking`: the prompt left the model inside `<think>`.
    pub fn new(thinking: bool) -> ThoughtSplitter {
        ThoughtSplitter { in_thought: thinking, held: String::new(), after_thought: false }
    }

    pub fn push(&mut self, text: &str) -> Vec<Part> {
        self.held.push_str(text);
        let mut out = Vec::new();
        if self.in_thought {
            match self.held.find(THINK_END) {
                Some(end) => {
                    out.push(Part::Thought(self.held[..end].to_string()));
                    self.held.drain(..end + THINK_END.len());
                    self.in_thought = false;
                    self.after_thought = true;
                }
                None => {
                    let keep = partial_suffix(&self.held, THINK_END);
                    out.push(Part::Thought(self.held.drain(..self.held.len() - keep).collect()));
                }
            }
        }
        if !self.in_thought {
            if self.after_thought {
                self.held = self.held.trim_start_matches('\n').to_string();
                self.after_thought = self.held.is_empty();
            }
            out.push(Part::Answer(std::mem::take(&mut self.held)));
        }
        out.retain(|p| !matches!(p, Part::Thought(t) | Part::Answer(t) if t.is_empty()));
        out
    }

    /// The end of the answer: what is held, as what it is.
    pub fn finish(&mut self) -> Vec<Part> {
        let held = std::mem::take(&mut self.held);
        match (held.is_empty(), self.in_thought) {
            (true, _) => vec![],
            (false, true) => vec![Part::Thought(held)],
            (false, false) => vec![Part::Answer(held)],
        }
    }
}
