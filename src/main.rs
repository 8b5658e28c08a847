//! The `floe` command line. Without a subcommand it generates text (`floe --prompt "…"`); other work is a
//! subcommand (`floe logits …`). Every failure is one `error: …` line on stderr and a non-zero exit.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use floe::convert::{self, Output, QuantPlan};
use floe::generate;
use floe::model::{Logits, Model};
use floe::quant::QuantFormat;
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The best backend available (the CPU, until the GPU backend lands).
    Auto,
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
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
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
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Output file (.npy).
    #[arg(long)]
    out: PathBuf,
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let (model, tokenizer) = match &args.model {
        Some(dir) => (Model::load(dir)?, generate::load_tokenizer(dir)?),
        None => {
            eprintln!("floe: no --model given: running the built-in default model (random weights: its text is meaningless)");
            floe::synthetic::default_model()
        }
    };
    let mut stdout = std::io::stdout();
    let stats = generate::generate(&model, &tokenizer, &args.prompt, args.tokens, |text| {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
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
    Ok(())
}

fn logits(args: LogitsArgs) -> Result<()> {
    let model = Model::load(&args.model)?;
    let t = args.tokens.len();
    let prefill = args.prefill.unwrap_or(t);
    if prefill == 0 || prefill > t {
        bail!("--prefill {prefill} must be between 1 and the number of tokens ({t})");
    }
    let mut state = model.new_state()?;
    let mut out = model.forward(&args.tokens[..prefill], &mut state, Logits::All).context("prefill")?;
    for &token in &args.tokens[prefill..] {
        out.extend(model.forward(&[token], &mut state, Logits::All).context("decode")?);
    }
    floe::npy::write_f32(&args.out, &[t, model.config.vocab_size], &out)
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
    let out = Output { dst: &args.dst, force: args.force, side_files_from: Some(&args.src) };
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
    let out = Output { dst: &args.dst, force: args.force, side_files_from: None };
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
