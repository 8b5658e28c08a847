//! The `floe` command line. Without a subcommand it generates text (`floe --prompt "…"`); other work is a
//! subcommand (`floe logits …`). Every failure is one `error: …` line on stderr and a non-zero exit.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use floe::convert::{self, Output, QuantPlan};
use floe::generate;
use floe::backend::Backend;
use floe::gpu::{AdapterChoice, Gpu};
use floe::model::{Input, LoadOptions, Logits, Model};
use floe::store::{CachePolicy, Prefetch, StreamOptions};
use floe::quant::QuantFormat;
use floe::chat::{ChatRequest, ChatTemplate};
use floe::generate::{Generation, Session};
use floe::sample::Sampling;
use floe::tensor::Matrix;

#[derive(Parser)]
#[command(name = "floe", version, about = "Runs Mixture-of-Experts LLMs by streaming experts from SSD")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (the default command).
    Run(RunArgs),
    /// Write the logits of every position of a token sequence to a .npy file ([T, vocab], float32).
    Logits(LogitsArgs),
    /// Convert a checkpoint (Hugging Face, mlx-community or floe) to floe's streaming format.
    Convert(ConvertArgs),
    /// Write a floe model with random weights at a released model's real shapes (for benchmarks).
    Synth(SynthArgs),
    /// Describe a floe model; with --verify, check every checksum.
    Inspect(InspectArgs),
    /// Measure prefill and decode speed on a model: time to first token, tokens per second, GPU dispatches.
    Bench(BenchArgs),
    /// List the GPU kernels build.rs rendered; with --dump DIR, write their WGSL sources there.
    Kernels(KernelsArgs),
    /// Print the prompt the model's chat template makes of a conversation.
    Template(TemplateArgs),
    /// Chat with a model in the terminal (tools, thinking, history; /help for commands).
    Chat(ChatCommandArgs),
    /// Serve a model over HTTP with OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models).
    Serve(ServeArgs),
    /// Plot figures from a `floe bench --log` file as an SVG chart.
    Plot(PlotArgs),
}

#[derive(Args)]
struct PlotArgs {
    /// The log `floe bench --log` appended to (one JSON object per line).
    log: PathBuf,
    /// The SVG file to write.
    #[arg(long)]
    out: PathBuf,
    /// The report field on the x axis (default: the run's number in the log).
    #[arg(long)]
    x: Option<String>,
    /// Report fields to plot, one line each (may be given several times).
    #[arg(long, default_values_t = ["decode_tok_s".to_string()])]
    y: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Model directory. Without it: the built-in default model (random weights).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests waiting or running at most (more get HTTP 429).
    #[arg(long, default_value_t = 64)]
    queue_limit: usize,
    /// Largest request body.
    #[arg(long, default_value = "8M", value_parser = floe::store::parse_size)]
    max_body: u64,
    /// Prompt plus answer tokens at most.
    #[arg(long, default_value_t = 32768)]
    ctx_size: usize,
    /// Conversation states kept for prefix reuse (0: none).
    #[arg(long, default_value_t = 4)]
    keep_states: usize,
    /// Tokens an answer may have when the request does not say.
    #[arg(long, default_value_t = 2048)]
    default_max_tokens: usize,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Args)]
struct ChatCommandArgs {
    /// Model directory. Without it: the built-in default model (random weights).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tools the model may call: a JSON file with an array of OpenAI function schemas (get_time and calculator
    /// are built in).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Do not show the model's thinking.
    #[arg(long)]
    hide_thinking: bool,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    #[command(flatten)]
    chat: ChatArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Args)]
struct TemplateArgs {
    /// Model directory whose template to use (default: floe's built-in Qwen3.5 template).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A JSON file: an array of messages, or {"messages": [...], "tools": [...]}.
    #[arg(long)]
    messages: PathBuf,
    /// A JSON file with an array of tools (OpenAI function schemas).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Render with thinking off (enable_thinking=false).
    #[arg(long)]
    no_think: bool,
    /// Leave out the assistant turn's opening.
    #[arg(long)]
    no_generation_prompt: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Model directory (floe, Hugging Face or mlx-community).
    #[arg(long)]
    model: PathBuf,
    /// Prompt length (random token ids).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Prefill the prompt this many tokens per forward call (default: all at once; 1 = token by token, as the
    /// seed does).
    #[arg(long)]
    prefill_chunk: Option<usize>,
    /// Tokens to decode after the prompt (greedy).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Prefill the prompt this many times, each from a fresh state; the report adds the fastest of the later runs
    /// (a first prompt after idling runs while the GPU's clock ramps up: docs/PERF.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    prefill_runs: u32,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also print GPU time per kernel over the decode (timestamps around every dispatch; slows it down).
    #[arg(long)]
    profile: bool,
    /// Time only the expert reads of --gen-tokens tokens (K random experts per layer, read around the page
    /// cache, no compute): the disk bound of this model's access pattern.
    #[arg(long)]
    io_only: bool,
    /// Also print expert streaming per layer over the decode (hits, bytes, read and routing wait times).
    #[arg(long)]
    timing: bool,
    /// Append the report (the --json object, with the time and the options) as one line to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Args)]
struct KernelsArgs {
    /// Write every kernel's WGSL source to DIR/NAME.wgsl.
    #[arg(long)]
    dump: Option<PathBuf>,
}

#[derive(Args)]
struct ConvertArgs {
    /// Source: a Hugging Face checkpoint, an mlx-community checkpoint or a floe model.
    src: PathBuf,
    /// Destination directory (written as DST.partial, renamed when complete and verified).
    dst: PathBuf,
    /// Bits of the dense matrices (default: 4 from float checkpoints; kept as stored from quantized ones).
    #[arg(long)]
    bits: Option<u32>,
    /// Bits of the routed experts (default: --bits).
    #[arg(long)]
    expert_bits: Option<u32>,
    /// Quantization group size.
    #[arg(long, default_value_t = 64)]
    group_size: usize,
    /// Replace DST if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct SynthArgs {
    /// Which released model's shapes: one of floe::synthetic::PRESETS.
    #[arg(long)]
    preset: String,
    /// Keep only the first N layers (same layer-type pattern).
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long, default_value_t = 4)]
    bits: u32,
    #[arg(long, default_value_t = 64)]
    group_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    force: bool,
    dst: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    dir: PathBuf,
    /// Check every tensor's and every expert record's checksum.
    #[arg(long)]
    verify: bool,
}

/// How a model is loaded: experts per token, and whether and how its experts are streamed from disk.
#[derive(Args)]
struct LoadArgs {
    /// Experts per token instead of the model's own (fewer is faster; below the model's default, quality drops).
    #[arg(long)]
    k: Option<usize>,
    /// GPU memory for cached experts when streaming (e.g. 4G; default 4G). Implies streaming.
    #[arg(long, value_parser = floe::store::parse_size)]
    gpu_mem: Option<u64>,
    /// Host memory for cached experts when streaming (e.g. 16G; default none: the OS page cache). Implies
    /// streaming.
    #[arg(long, value_parser = floe::store::parse_size)]
    ram_mem: Option<u64>,
    /// What the expert caches keep: os (no host cache; the page cache), lru, lfu. Implies streaming.
    #[arg(long, value_enum)]
    cache: Option<CachePolicy>,
    /// Stream the routed experts from disk (floe models; on by default when they exceed half the RAM).
    #[arg(long)]
    stream: bool,
    /// When streaming, read the experts the next layer will likely need (its router applied to this layer's
    /// input) while this layer runs: in prefills only, in every forward call, or never.
    #[arg(long, value_enum, default_value_t = Prefetch::Prefill)]
    prefetch: Prefetch,
}

impl LoadArgs {
    /// Whether these flags ask for streaming.
    fn streams(&self) -> bool {
        self.stream || self.gpu_mem.is_some() || self.ram_mem.is_some() || self.cache.is_some()
    }

    /// Loads `dir` as these flags say.
    fn load(&self, dir: &std::path::Path) -> Result<Model> {
        let explicit = self.streams();
        let stream = explicit || floe::format::is_floe_dir(dir) && experts_exceed_half_the_ram(dir);
        let policy = self.cache.unwrap_or(if self.ram_mem.is_some() { CachePolicy::Lru } else { CachePolicy::Os });
        let options = LoadOptions {
            k: self.k,
            stream: stream.then_some(StreamOptions {
                ram_bytes: self.ram_mem.unwrap_or(0),
                gpu_bytes: self.gpu_mem.unwrap_or(floe::gpu::DEFAULT_EXPERT_MEMORY),
                policy,
                prefetch: self.prefetch,
            }),
        };
        let model = Model::load_with(dir, &options)?;
        if stream && !explicit {
            eprintln!("floe: the experts exceed half the RAM: streaming them from disk (see --gpu-mem, --ram-mem)");
        }
        Ok(model)
    }
}

/// Whether a floe model's expert files are larger than half the machine's memory (Linux; elsewhere: no).
fn experts_exceed_half_the_ram(dir: &std::path::Path) -> bool {
    let Ok(model) = floe::format::FloeModel::open(dir) else { return false };
    let ex = &model.manifest.experts;
    let experts = ex.stride * (model.manifest.config.num_experts * ex.files.len()) as u64;
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    total_kib.is_some_and(|kib| experts > kib * 1024 / 2)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    /// A hardware GPU when there is one and the model fits it, else the CPU.
    Auto,
    /// The GPU (any adapter, software ones included); an error when there is none.
    Gpu,
    Cpu,
}

#[derive(Args)]
struct RunArgs {
    /// Model directory (a Hugging Face checkpoint). Without it: the built-in default model (random weights).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt.
    #[arg(long, default_value = "Hello")]
    prompt: String,
    /// How many tokens to generate at most.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Serve the model over HTTP on this port instead (Flash-MoE's spelling of `floe serve --port PORT`).
    #[arg(long, value_name = "PORT")]
    serve: Option<u16>,
    /// After generating, print per-token work: GPU dispatches, CPU↔GPU round trips, expert streaming.
    #[arg(long)]
    timing: bool,
    #[command(flatten)]
    chat: ChatArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    load: LoadArgs,
}

/// How the prompt becomes the model's input, and when generation stops.
#[derive(Args)]
struct ChatArgs {
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// Answer without thinking first (Qwen3.5 thinks by default).
    #[arg(long)]
    no_think: bool,
    /// End the thinking after this many tokens and go on to the answer.
    #[arg(long)]
    think_budget: Option<usize>,
    /// Feed the prompt as it is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Stop when the text contains this (may be given several times).
    #[arg(long)]
    stop: Vec<String>,
    /// Go on past end-of-sequence tokens (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
}

/// How the next token is chosen (floe::sample): greedy unless --temperature is above 0.
#[derive(Args)]
struct SamplingArgs {
    /// 0 = greedy (the most likely token).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens that add up to this probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Divide (multiply, when negative) the logits of tokens already seen (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Subtract from the logits of tokens already generated.
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Subtract, per time generated, from the logits of tokens already generated.
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Seed of the draws (the same seed and input give the same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn to_sampling(&self) -> Result<Sampling> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("--temperature must be 0 or more");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail!("--min-p must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            bail!("--repetition-penalty must be above 0");
        }
        Ok(Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        })
    }
}

#[derive(Args)]
struct LogitsArgs {
    /// Model directory (a Hugging Face checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// Token ids, comma separated (e.g. 3,17,42).
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<u32>,
    /// Run the first N tokens as one batched prefill and each later token as a single-token decode step with
    /// the caches. Without it, all tokens are one prefill.
    #[arg(long)]
    prefill: Option<usize>,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Output file (.npy).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    load: LoadArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Logits(args)) => logits(args),
        Some(Command::Convert(args)) => convert(args),
        Some(Command::Synth(args)) => synth(args),
        Some(Command::Inspect(args)) => inspect(args),
        Some(Command::Bench(args)) => bench(args),
        Some(Command::Kernels(args)) => kernels(args),
        Some(Command::Template(args)) => template(args),
        Some(Command::Chat(args)) => chat(args),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Plot(args)) => plot(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Work to do with a model on whichever backend `--backend` picks.
trait Job {
    fn run<B: Backend + 'static>(self, model: &Model<B>) -> Result<()>;
}

/// Runs `job` on the backend `choice` picks: the GPU (the adapter named on stderr) or the CPU.
fn on_backend(model: Model, choice: BackendChoice, job: impl Job) -> Result<()> {
    let gpu = match choice {
        BackendChoice::Cpu => None,
        BackendChoice::Gpu => Some(Gpu::open(AdapterChoice::Any)?.with_context(|| {
            let found = Gpu::adapters();
            let found = if found.is_empty() { "none".to_string() } else { found.join("; ") };
            format!("--backend gpu: no usable GPU adapter (adapters found: {found})")
        })?),
        // A GPU that lacks what the kernels need (immediates, workgroup memory) leaves auto on the CPU.
        BackendChoice::Auto => Gpu::open(AdapterChoice::Hardware).unwrap_or_else(|e| {
            eprintln!("floe: {e:#}; running on the CPU");
            None
        }),
    };
    let Some(gpu) = gpu else {
        eprintln!("floe: backend: CPU ({} threads)", rayon::current_num_threads());
        return job.run(&model);
    };
    let adapter = gpu.describe();
    if let Some(stream) = model.store.as_ref().map(|s| s.options) {
        gpu.set_expert_memory(stream.gpu_bytes, stream.policy);
    }
    match model.to_backend(gpu) {
        Ok(on_gpu) => {
            eprintln!("floe: backend: GPU {adapter}");
            job.run(&on_gpu)
        }
        Err(e) if choice == BackendChoice::Auto => {
            eprintln!("floe: the model does not fit GPU {adapter} ({e:#}); running on the CPU");
            job.run(&model)
        }
        Err(e) => Err(e),
    }
}

fn run(args: RunArgs) -> Result<()> {
    if let Some(port) = args.serve {
        return serve(ServeArgs {
            model: args.model,
            host: "127.0.0.1".into(),
            port,
            api_key: None,
            queue_limit: 64,
            max_body: 8 << 20,
            ctx_size: 32768,
            keep_states: 4,
            default_max_tokens: 2048,
            backend: args.backend,
            load: args.load,
        });
    }
    let sampling = args.sampling.to_sampling()?;
    let ForGeneration { model, tokenizer, template, eos } = load_for_generation(args.model.as_deref(), &args.load, "running")?;
    let (prompt, thinking) = if args.chat.raw {
        (args.prompt.clone(), false)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.chat.system {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        messages.push(serde_json::json!({"role": "user", "content": args.prompt}));
        let enable_thinking = args.chat.no_think.then_some(false);
        let request = ChatRequest { messages: &messages, tools: &[], add_generation_prompt: true, enable_thinking };
        let prompt = template.render(&request)?;
        let thinking = prompt.ends_with("<think>\n");
        (prompt, thinking)
    };
    let generation = Generation { thinking, ..args.chat.generation(args.tokens, sampling) };
    let choice = args.backend;
    on_backend(model, choice, Generate { args, tokenizer, prompt, generation, eos })
}

/// What generating needs: the model (`dir`, or the built-in default one, said on stderr for `what`), its
/// tokenizer, its chat template and the tokens that end an answer.
struct ForGeneration {
    model: Model,
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
}

fn load_for_generation(dir: Option<&std::path::Path>, load: &LoadArgs, what: &str) -> Result<ForGeneration> {
    let (model, tokenizer, template) = match dir {
        Some(dir) => (load.load(dir)?, generate::load_tokenizer(dir)?, ChatTemplate::for_model(dir)?),
        None => {
            if load.streams() {
                bail!("--stream, --gpu-mem, --ram-mem and --cache stream a floe model's experts from disk; the built-in default model has none there (give --model)");
            }
            let (model, tokenizer) = floe::synthetic::default_model();
            let model = model.with_k(load.k)?;
            eprintln!("floe: no --model given: {what} the built-in default model (random weights: its text is meaningless)");
            (model, tokenizer, ChatTemplate::builtin())
        }
    };
    let eos = end_tokens(dir, &model.config, &tokenizer);
    Ok(ForGeneration { model, tokenizer, template, eos })
}

impl ChatArgs {
    fn generation(&self, max_tokens: usize, sampling: Sampling) -> Generation {
        Generation {
            max_tokens,
            sampling,
            stop: self.stop.clone(),
            think_budget: self.think_budget,
            thinking: false,
            ignore_eos: self.ignore_eos,
        }
    }
}

/// The tokens that end an answer: generation_config.json's, the config's, and the chat turn's end.
fn end_tokens(dir: Option<&std::path::Path>, config: &floe::config::ModelConfig, tokenizer: &tokenizers::Tokenizer) -> Vec<u32> {
    let mut eos = generate::eos_ids(dir, &config.eos_token_ids);
    if let Some(id) = tokenizer.token_to_id("<|im_end|>").filter(|id| !eos.contains(id)) {
        eos.push(id);
    }
    eos
}

struct Generate {
    args: RunArgs,
    tokenizer: tokenizers::Tokenizer,
    prompt: String,
    generation: Generation,
    eos: Vec<u32>,
}

impl Job for Generate {
    fn run<B: Backend + 'static>(self, model: &Model<B>) -> Result<()> {
        let args = self.args;
        let mut stdout = std::io::stdout();
        let before = model.backend.counters();
        let io_before = model.store.as_ref().map(|s| s.layer_stats());
        let mut session = Session::new(model, &self.tokenizer, self.eos)?;
        let stats = session.generate(&self.prompt, &self.generation, |text| {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
            true
        })?;
        println!();
        let decode_rate = stats.generated_tokens.saturating_sub(1) as f64 / stats.decode_time.as_secs_f64().max(1e-9);
        eprintln!(
            "floe: {} prompt tokens, first token after {:.0} ms, {} tokens generated, {:.1} tok/s",
            stats.prompt_tokens,
            stats.time_to_first_token.as_secs_f64() * 1e3,
            stats.generated_tokens,
            decode_rate
        );
        if args.timing {
            let used = model.backend.counters();
            let calls = stats.generated_tokens.max(1) as f64;
            eprintln!(
                "floe: per forward call: {:.0} GPU dispatches, {:.1} CPU↔GPU round trips",
                (used.dispatches - before.dispatches) as f64 / calls,
                (used.syncs - before.syncs) as f64 / calls
            );
            if let (Some(store), Some(io_before)) = (&model.store, io_before) {
                eprint!("{}", layer_table(model, store, &io_before, calls));
            }
        }
        Ok(())
    }
}

fn logits(args: LogitsArgs) -> Result<()> {
    let model = args.load.load(&args.model)?;
    let t = args.tokens.len();
    let prefill = args.prefill.unwrap_or(t);
    if prefill == 0 || prefill > t {
        bail!("--prefill {prefill} must be between 1 and the number of tokens ({t})");
    }
    // Before the backend is picked (and named on stderr), so bad input stays one error line.
    model.config.check_tokens(&args.tokens)?;
    let choice = args.backend;
    on_backend(model, choice, WriteLogits { args, prefill })
}

struct WriteLogits {
    args: LogitsArgs,
    prefill: usize,
}

impl Job for WriteLogits {
    fn run<B: Backend + 'static>(self, model: &Model<B>) -> Result<()> {
        let (tokens, prefill) = (&self.args.tokens, self.prefill);
        let mut state = model.new_state()?;
        let mut out = model.forward(&tokens[..prefill], &mut state, Logits::All).context("prefill")?;
        for &token in &tokens[prefill..] {
            out.extend(model.forward(&[token], &mut state, Logits::All).context("decode")?);
        }
        floe::npy::write_f32(&self.args.out, &[tokens.len(), model.config.vocab_size], &out)
    }
}

fn bench(args: BenchArgs) -> Result<()> {
    if args.prompt_tokens == 0 {
        bail!("--prompt-tokens must be at least 1");
    }
    if args.io_only {
        return bench_io(&args);
    }
    let model = args.load.load(&args.model)?;
    let choice = args.backend;
    on_backend(model, choice, Bench(args))
}

struct Bench(BenchArgs);

impl Job for Bench {
    fn run<B: Backend + 'static>(self, model: &Model<B>) -> Result<()> {
        let args = self.0;
        let vocab = model.config.vocab_size as u64;
        // Deterministic pseudo-random prompt ids (a multiplicative hash of the position).
        let prompt: Vec<u32> = (0..args.prompt_tokens as u64).map(|i| ((i * 2_654_435_761 + 12_345) % vocab) as u32).collect();
        // Warm-up: builds every GPU pipeline the timed runs use (prefill and decode variants).
        let mut state = model.new_state()?;
        let next = model.forward_greedy(&prompt[..2.min(prompt.len())], &mut state)?;
        model.forward_greedy(&[next], &mut state)?;

        let streamed = || model.store.as_ref().map(|s| s.stats()).unwrap_or_default();
        let at_start = streamed();
        let (mut ttfts, mut next, mut state) = (Vec::new(), 0, model.new_state()?);
        for run in 0..args.prefill_runs {
            if run > 0 {
                state = model.new_state()?;
            }
            let start = Instant::now();
            for chunk in prompt.chunks(args.prefill_chunk.unwrap_or(prompt.len()).max(1)) {
                next = model.forward_greedy(chunk, &mut state)?;
            }
            ttfts.push(start.elapsed().as_secs_f64());
        }
        let (ttft, again) = (ttfts[0], ttfts[1..].iter().copied().reduce(f64::min));
        let prefill_io = streamed().since(&at_start);
        let (before, at_decode) = (model.backend.counters(), streamed());
        let layers_at_decode = model.store.as_ref().map(|s| s.layer_stats());
        let start = Instant::now();
        // Greedy decoding as generation runs it: each step recorded before the token it feeds is read back, where
        // that keeps the device busy (see Session::generate_ids).
        let run_ahead = model.backend.runs_ahead() && model.store.is_none();
        let mut running = None;
        for i in 0..args.gen_tokens {
            let chosen = match running.take() {
                Some(chosen) => chosen,
                None => model.choose(Input::Ids(&[next]), &mut state)?,
            };
            if run_ahead && i + 1 < args.gen_tokens {
                running = Some(model.choose(Input::Chosen(&chosen), &mut state)?);
            }
            next = model.backend.read_chosen(&chosen)?;
        }
        let decode = start.elapsed().as_secs_f64();
        let after = model.backend.counters();
        let io = streamed().since(&at_decode);
        if args.profile {
            let n = args.gen_tokens.max(1);
            profile_kernels(model, "decoded token", n, || {
                for _ in 0..n {
                    next = model.forward_greedy(&[next], &mut state)?;
                }
                Ok(())
            })?;
            let mut fresh = model.new_state()?;
            profile_kernels(model, &format!("{}-token prefill", prompt.len()), 1, || {
                model.forward_greedy(&prompt, &mut fresh).map(|_| ())
            })?;
        }
        let n = args.gen_tokens.max(1) as f64;
        let report = serde_json::json!({
            "model": args.model.display().to_string(),
            "prompt_tokens": args.prompt_tokens,
            "prefill_chunk": args.prefill_chunk.unwrap_or(args.prompt_tokens),
            "gen_tokens": args.gen_tokens,
            "ttft_ms": ttft * 1e3,
            "prefill_tok_s": args.prompt_tokens as f64 / ttft,
            "prefill_runs": args.prefill_runs,
            "ttft_again_ms": again.map(|t| t * 1e3),
            "decode_tok_s": args.gen_tokens as f64 / decode,
            "dispatches_per_token": (after.dispatches - before.dispatches) as f64 / n,
            "syncs_per_token": (after.syncs - before.syncs) as f64 / n,
            "wait_ms_per_token": (after.wait_nanos - before.wait_nanos) as f64 / 1e6 / n,
            "streamed": model.store.is_some(),
            "expert_bytes_read": prefill_io.bytes_read + io.bytes_read,
            "prefill_expert_bytes_read": prefill_io.bytes_read,
            "decode_expert_bytes_per_token": io.bytes_read as f64 / n,
            "decode_disk_gb_s": io.bytes_read as f64 / 1e9 / decode,
            "decode_read_wait_s": io.read_seconds,
            "gpu_cache_hit_rate": io.device_hit_rate(),
            "ram_cache_hit_rate": io.ram_hit_rate(),
            "decode_prefetched_per_token": io.prefetched as f64 / n,
            "prefetch_hit_rate": io.prefetch_hit_rate(),
        });
        append_log(&args, &report)?;
        if args.json {
            println!("{report}");
        } else {
            println!("prefill: {} tokens, time to first token {:.1} ms, {:.1} tok/s", args.prompt_tokens, ttft * 1e3, args.prompt_tokens as f64 / ttft);
            if let Some(again) = again {
                let runs = args.prefill_runs - 1;
                println!("         again (fastest of {runs}): {:.1} ms, {:.1} tok/s", again * 1e3, args.prompt_tokens as f64 / again);
            }
            println!("decode:  {} tokens, {:.2} tok/s", args.gen_tokens, args.gen_tokens as f64 / decode);
            println!(
                "per decoded token: {} GPU dispatches, {} CPU↔GPU round trips, {:.2} of {:.2} ms waiting for the device",
                report["dispatches_per_token"],
                report["syncs_per_token"],
                report["wait_ms_per_token"].as_f64().unwrap_or(0.0),
                decode * 1e3 / n
            );
            if model.store.is_some() {
                let runs = if args.prefill_runs > 1 { format!(" in {} runs", args.prefill_runs) } else { String::new() };
                println!("streaming: prefill read {:.2} GB{runs}; decode {}", prefill_io.bytes_read as f64 / 1e9, describe_io(&io, n, decode));
            }
            if let (true, Some(store), Some(before)) = (args.timing, &model.store, &layers_at_decode) {
                print!("{}", layer_table(model, store, before, n));
            }
        }
        Ok(())
    }
}

/// Appends `report` to `--log`, with when and how it was measured, as one JSON line.
fn append_log(args: &BenchArgs, report: &serde_json::Value) -> Result<()> {
    let Some(path) = &args.log else { return Ok(()) };
    let mut entry = report.clone();
    entry["time"] = serde_json::json!(chrono::Local::now().to_rfc3339());
    entry["floe_version"] = serde_json::json!(env!("CARGO_PKG_VERSION"));
    entry["options"] = serde_json::json!(std::env::args().skip(1).collect::<Vec<_>>());
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "{entry}").with_context(|| format!("cannot write {}", path.display()))
}

/// Reads K random experts per layer for each of --gen-tokens tokens, as a decode step with no cache would.
fn bench_io(args: &BenchArgs) -> Result<()> {
    let model = floe::format::FloeModel::open(&args.model)?;
    let c = &model.manifest.config;
    let k = args.load.k.unwrap_or(c.experts_per_token);
    let options = StreamOptions { ram_bytes: 0, gpu_bytes: 0, policy: CachePolicy::Lru, prefetch: Prefetch::Off };
    let store = floe::store::ExpertStore::open(&model, k, &options)?;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let start = Instant::now();
    for _ in 0..args.gen_tokens {
        for layer in 0..c.num_layers() {
            let experts = rand::seq::index::sample(&mut rng, c.num_experts, k).into_vec();
            let records = store.fetch(layer, &experts, |_, _| ())?;
            store.recycle(records);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = store.stats().bytes_read;
    let (gb_s, ms_per_layer) = (bytes as f64 / 1e9 / secs, secs * 1e3 / (args.gen_tokens * c.num_layers()).max(1) as f64);
    let tok_s = args.gen_tokens as f64 / secs;
    let report = serde_json::json!({
        "model": args.model.display().to_string(), "io_only": true, "tokens": args.gen_tokens, "k": k,
        "expert_bytes_read": bytes, "disk_gb_s": gb_s, "ms_per_layer": ms_per_layer, "tok_s": tok_s,
    });
    append_log(args, &report)?;
    if args.json {
        println!("{report}");
    } else {
        let layers = c.num_layers();
        println!("expert reads only: {} tokens × {layers} layers × K={k}: {gb_s:.2} GB/s, {ms_per_layer:.2} ms per layer, {tok_s:.2} tok/s", args.gen_tokens);
    }
    Ok(())
}

/// Expert streaming per layer since `before`, averaged over `calls` forward calls.
fn layer_table<B: Backend>(model: &Model<B>, store: &floe::store::ExpertStore, before: &[floe::store::StreamStats], calls: f64) -> String {
    let pct = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0));
    let mut out = format!(
        "floe: expert streaming per forward call, by layer\n{:>5} {:9} {:>8} {:>8} {:>10} {:>9} {:>11}\n",
        "layer", "mixer", "GPU hit", "RAM hit", "MB read", "read ms", "route wait"
    );
    let mut total = floe::store::StreamStats::default();
    for (layer, (now, then)) in store.layer_stats().iter().zip(before).enumerate() {
        let d = now.since(then);
        let mixer = match model.config.layer_types[layer] {
            floe::config::LayerType::FullAttention => "attention",
            floe::config::LayerType::LinearAttention => "linear",
        };
        out += &format!(
            "{layer:>5} {mixer:9} {:>8} {:>8} {:>10.1} {:>9.2} {:>8.2} ms\n",
            pct(d.device_hit_rate()),
            pct(d.ram_hit_rate()),
            d.bytes_read as f64 / 1e6 / calls,
            d.read_seconds * 1e3 / calls,
            d.route_wait_seconds * 1e3 / calls
        );
        total = total.plus(&d);
    }
    out += &format!(
        "{:>5} {:9} {:>8} {:>8} {:>10.1} {:>9.2} {:>8.2} ms\n",
        "all", "",
        pct(total.device_hit_rate()),
        pct(total.ram_hit_rate()),
        total.bytes_read as f64 / 1e6 / calls,
        total.read_seconds * 1e3 / calls,
        total.route_wait_seconds * 1e3 / calls
    );
    out
}

/// Expert streaming over `tokens` tokens taking `secs`: bytes read per token, disk rate, cache hit rates.
fn describe_io(io: &floe::store::StreamStats, tokens: f64, secs: f64) -> String {
    let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
    let ahead = match io.prefetched {
        0 => String::new(),
        n => format!("; read ahead {:.1} records/token, {} of them used", n as f64 / tokens, rate(io.prefetch_hit_rate())),
    };
    format!(
        "read {:.1} MB/token at {:.2} GB/s (waiting {:.0}% of the time), hit rate GPU {} RAM {}{ahead}",
        io.bytes_read as f64 / 1e6 / tokens,
        io.bytes_read as f64 / 1e9 / secs,
        100.0 * io.read_seconds / secs,
        rate(io.device_hit_rate()),
        rate(io.ram_hit_rate())
    )
}

/// GPU time per kernel over `run`, per `unit` (`runs` of them), printed the most expensive first.
fn profile_kernels<B: Backend + 'static>(model: &Model<B>, unit: &str, runs: usize, run: impl FnOnce() -> Result<()>) -> Result<()> {
    let Some(gpu) = (&model.backend as &dyn std::any::Any).downcast_ref::<Gpu>() else {
        eprintln!("floe: --profile times GPU kernels; this run is on the CPU");
        return Ok(());
    };
    if !gpu.start_profiling() {
        eprintln!("floe: --profile: this GPU has no timestamps inside passes");
        return Ok(());
    }
    run()?;
    let rows = gpu.profile();
    let total: f64 = rows.iter().map(|r| r.1).sum();
    let n = runs as f64;
    println!("GPU time per {unit}: {:.3} ms in kernels", total / n * 1e3);
    for (name, secs, count) in rows {
        println!("  {name:32} {:8.1} us  {:6.1} dispatches  {:5.1}%", secs / n * 1e6, count as f64 / n, 100.0 * secs / total);
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    let addr: std::net::SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| format!("[{}]:{}", args.host, args.port).parse())
        .with_context(|| format!("--host {}: not an IP address", args.host))?;
    let ForGeneration { model, tokenizer, template, eos } = load_for_generation(args.model.as_deref(), &args.load, "serving")?;
    let name = args.model.as_ref().and_then(|d| d.file_name()).map_or("floe-default".into(), |n| n.to_string_lossy().to_string());
    let options = floe::serve::ServeOptions {
        addr,
        api_key: args.api_key.clone(),
        model_name: name,
        queue_limit: args.queue_limit.max(1),
        body_limit: args.max_body as usize,
        context: args.ctx_size,
        keep_states: args.keep_states,
        default_max_tokens: args.default_max_tokens,
    };
    let choice = args.backend;
    on_backend(model, choice, Serve { tokenizer, template, eos, options })
}

struct Serve {
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
    options: floe::serve::ServeOptions,
}

impl Job for Serve {
    fn run<B: Backend + 'static>(self, model: &Model<B>) -> Result<()> {
        floe::serve::serve(model, &self.tokenizer, self.eos, self.template, self.options)
    }
}

fn chat(args: ChatCommandArgs) -> Result<()> {
    if args.chat.raw {
        bail!("--raw has no meaning in a chat (the chat template makes the turns)");
    }
    let sampling = args.sampling.to_sampling()?;
    let ForGeneration { model, tokenizer, template, eos } = load_for_generation(args.model.as_deref(), &args.load, "chatting with")?;
    let mut tools = floe::conversation::builtin_tools();
    if let Some(path) = &args.tools {
        tools.extend(floe::chat::read_tools(path)?);
    }
    let generation = args.chat.generation(args.tokens, sampling);
    let choice = args.backend;
    on_backend(model, choice, Chat { args, tokenizer, template, tools, generation, eos })
}

struct Chat {
    args: ChatCommandArgs,
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    tools: Vec<serde_json::Value>,
    generation: Generation,
    eos: Vec<u32>,
}

impl Job for Chat {
    fn run<B: Backend + 'static>(self, model: &Model<B>) -> Result<()> {
        let session = Session::new(model, &self.tokenizer, self.eos)?;
        let mut chat = floe::conversation::Conversation::new(session, self.template, self.tools, self.generation);
        chat.enable_thinking = self.args.chat.no_think.then_some(false);
        let history_file = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".floe_history"));
        let options = floe::conversation::ChatOptions { system: self.args.chat.system.clone(), hide_thinking: self.args.hide_thinking, history_file };
        floe::conversation::run_chat(chat, options)
    }
}

fn plot(args: PlotArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.log).with_context(|| format!("cannot read {}", args.log.display()))?;
    let runs: Vec<serde_json::Value> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}: not JSON", args.log.display(), i + 1)))
        .collect::<Result<_>>()?;
    let x_of = |i: usize, run: &serde_json::Value| match &args.x {
        Some(field) => run[field].as_f64(),
        None => Some((i + 1) as f64),
    };
    let mut series = Vec::new();
    for field in &args.y {
        let mut points: Vec<[f64; 2]> =
            runs.iter().enumerate().filter_map(|(i, r)| Some([x_of(i, r)?, r[field.as_str()].as_f64()?])).collect();
        points.sort_by(|a, b| a[0].total_cmp(&b[0]));
        if points.is_empty() {
            bail!("{}: no run has numbers for `{field}` and the x axis", args.log.display());
        }
        series.push(poloto::build::plot(field.clone()).line(points));
    }
    let x_label = args.x.clone().unwrap_or_else(|| "run".into());
    let svg = poloto::frame_build()
        .data(poloto::plots!(poloto::build::origin(), series))
        .build_and_label(("floe bench", x_label.as_str(), args.y.join(", ").as_str()))
        .append_to(poloto::header().light_theme())
        .render_string()
        .map_err(|e| anyhow::anyhow!("cannot draw the chart: {e}"))?;
    let partial = args.out.with_extension("svg.partial");
    std::fs::write(&partial, svg).with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &args.out).with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("floe: wrote {} ({} runs)", args.out.display(), runs.len());
    Ok(())
}

fn template(args: TemplateArgs) -> Result<()> {
    let template = match &args.model {
        Some(dir) => ChatTemplate::for_model(dir)?,
        None => ChatTemplate::builtin(),
    };
    let (messages, mut tools) = floe::chat::read_messages(&args.messages)?;
    if let Some(path) = &args.tools {
        tools = floe::chat::read_tools(path)?;
    }
    let request = ChatRequest {
        messages: &messages,
        tools: &tools,
        add_generation_prompt: !args.no_generation_prompt,
        enable_thinking: args.no_think.then_some(false),
    };
    print!("{}", template.render(&request)?);
    Ok(())
}

fn kernels(args: KernelsArgs) -> Result<()> {
    let all = floe::gpu::kernels::KERNELS;
    match &args.dump {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for k in all {
                let path = dir.join(format!("{}.wgsl", k.name));
                std::fs::write(&path, k.source).with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!("floe: wrote {} kernels to {}", all.len(), dir.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            for k in all {
                if let Err(e) = writeln!(out, "{:32} from wgsl/{}", k.name, k.template) {
                    // A closed pipe (`floe kernels | head`) is not an error.
                    return if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e.into()) };
                }
            }
        }
    }
    Ok(())
}

fn convert(args: ConvertArgs) -> Result<()> {
    let model = Model::load(&args.src)?;
    let source_quantized = matches!(model.weights.embed, Matrix::Affine { .. });
    let plan = if source_quantized && args.bits.is_none() && args.expert_bits.is_none() {
        QuantPlan::KEEP
    } else if source_quantized && args.bits.is_none() {
        // e.g. re-quantizing a floe model's experts from 4 to 2 bits: the rest stays as it is.
        QuantPlan { experts: Some(QuantFormat::new(args.expert_bits.unwrap(), args.group_size)?), ..QuantPlan::KEEP }
    } else {
        let bits = args.bits.unwrap_or(4);
        QuantPlan::new(bits, args.expert_bits.unwrap_or(bits), args.group_size)?
    };
    let w = &model.weights;
    let out = Output { dst: &args.dst, force: args.force, side_files_from: Some(&args.src), extra_files: &[] };
    let start = std::time::Instant::now();
    let total = convert::weights_bytes(w);
    convert::write_model(&out, &model.config, plan, (&w.embed, &w.lm_head, &w.final_norm), |i| Ok(w.layers[i].clone()), total)?;
    eprintln!("floe: wrote {} in {:.1} s", args.dst.display(), start.elapsed().as_secs_f64());
    Ok(())
}

fn synth(args: SynthArgs) -> Result<()> {
    let config = floe::synthetic::preset(&args.preset, args.layers)?;
    let format = QuantFormat::new(args.bits, args.group_size)?;
    let mut random = floe::synthetic::RandomWeights::new(&config, args.seed, floe::tensor::DType::BF16, Some(format));
    let (embed, lm_head) = (random.embed(), random.lm_head());
    let final_norm = vec![1.0; config.hidden_size];
    // The default model's small tokenizer, so that every command can run on the model (its text is meaningless).
    let tokenizer = [("tokenizer.json", generate::DEFAULT_TOKENIZER)];
    let out = Output { dst: &args.dst, force: args.force, side_files_from: None, extra_files: &tokenizer };
    let start = std::time::Instant::now();
    let e = random.expert();
    let expert = (e.gate.size_bytes() + e.up.size_bytes() + e.down.size_bytes()) as u64;
    let total = expert * (config.num_experts * config.num_layers()) as u64;
    convert::write_model(&out, &config, QuantPlan::KEEP, (&embed, &lm_head, &final_norm), |i| Ok(random.layer(i)), total)?;
    let bytes = dir_bytes(&args.dst)?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("floe: wrote {} ({:.2} GB) in {secs:.1} s, {:.2} GB/s", args.dst.display(), bytes as f64 / 1e9, bytes as f64 / 1e9 / secs);
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        total += if entry.file_type()?.is_dir() { dir_bytes(&entry.path())? } else { entry.metadata()?.len() };
    }
    Ok(total)
}

fn inspect(args: InspectArgs) -> Result<()> {
    if !floe::format::is_floe_dir(&args.dir) {
        bail!("{} is not a floe model (no {}): run `floe convert` first", args.dir.display(), floe::format::MANIFEST);
    }
    let model = floe::format::FloeModel::open(&args.dir)?;
    let m = &model.manifest;
    let c = &m.config;
    let dense: u64 = m.tensors.values().flat_map(|t| &t.parts).map(|p| p.bytes).sum();
    let ex = &m.experts;
    let experts_total = ex.stride * (c.num_experts * c.num_layers()) as u64;
    let mut formats: Vec<String> = m.tensors.values().chain(ex.components.values()).map(describe_quant).collect();
    formats.sort();
    formats.dedup();
    println!("model:        {}", args.dir.display());
    println!("architecture: {:?}, {} layers ({} full attention), hidden {}, vocab {}", c.arch, c.num_layers(),
        c.layer_types.iter().filter(|t| **t == floe::config::LayerType::FullAttention).count(), c.hidden_size, c.vocab_size);
    println!("experts:      {} per layer, {} active, intermediate {}", c.num_experts, c.experts_per_token, c.moe_intermediate_size);
    println!("expert record: {} bytes (stride {}); per token {:.1} MB at K={}", ex.record_bytes, ex.stride,
        (ex.record_bytes * (c.experts_per_token * c.num_layers()) as u64) as f64 / 1e6, c.experts_per_token);
    for (name, e) in &ex.components {
        println!("  {name:5} {:?} {}", e.shape, describe_quant(e));
    }
    println!("dense:        {:.3} GB in {} tensors", dense as f64 / 1e9, m.tensors.len());
    println!("experts:      {:.3} GB in {} files", experts_total as f64 / 1e9, ex.files.len());
    println!("quantization: {}", formats.join(", "));
    if args.verify {
        model.verify(|_| ())?;
        println!("verify:       all checksums match");
    }
    Ok(())
}

fn describe_quant(e: &floe::format::TensorEntry) -> String {
    match e.quant {
        Some(q) => format!("{}-bit/g{} ({} scales)", q.bits, q.group, e.dtype),
        None => e.dtype.clone(),
    }
}
