//! The `floe` command line. Without a subcommand it generates text (`floe --prompt "…"`); other work is a
//! subcommand (`floe logits …`). Every failure is one `error: …` line on stderr and a non-zero exit.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use floe::generate;
use floe::model::{Logits, Model};

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
    let mut state = model.new_state();
    let mut out = model.forward(&args.tokens[..prefill], &mut state, Logits::All).context("prefill")?;
    for &token in &args.tokens[prefill..] {
        out.extend(model.forward(&[token], &mut state, Logits::All).context("decode")?);
    }
    floe::npy::write_f32(&args.out, &[t, model.config.vocab_size], &out)
}
