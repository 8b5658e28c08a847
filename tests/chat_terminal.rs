//! `floe chat` as a person uses it, driven in tmux (send-keys, capture-pane): Ctrl-C stopping a long answer (the
//! program lives on), /tools, /save, /exit; and a model that calls the built-in calculator, whose result goes
//! back to it. Skipped without tmux unless FLOE_REQUIRE_TMUX=1 (CI sets it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use floe::tensor::{Matrix, Tensor};
use floe::weights::{HostExperts, Mixer};

use floe::conversation::{builtin_tools, run_builtin, Conversation};
use floe::generate::{Generation, Session};
use floe::tool_calls;

struct Tmux {
    name: String,
}

impl Tmux {
    /// `floe chat ARGS` in a new tmux session (HOME = `home`), once it shows its prompt. The pane runs `sleep` after
    /// the program, so its exit can be seen.
    fn chat(tag: &str, home: &Path, args: &str) -> Tmux {
        let name = format!("floe-{tag}-{}", std::process::id());
        let command = format!("HOME={} {} chat {args}; sleep 30", home.display(), env!("CARGO_BIN_EXE_floe"));
        Tmux::run(&["new-session", "-d", "-s", &name, "-x", "200", "-y", "50", &command]);
        let t = Tmux { name };
        t.wait_for(">>> ", 1);
        t
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new("tmux").args(args).output().expect("running tmux");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn screen(&self) -> String {
        Tmux::run(&["capture-pane", "-p", "-J", "-S", "-200", "-t", &self.name])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend_from_slice(keys);
        Tmux::run(&args);
    }

    /// Waits until the screen shows `text` `count` times.
    fn wait_for(&self, text: &str, count: usize) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.matches(text).count() >= count {
                return screen;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "waited for `{text}` ×{count}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        Command::new("tmux").args(["has-session", "-t", &self.name]).status().is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.name]).status();
    }
}

fn have_tmux() -> bool {
    if Command::new("tmux").arg("-V").output().is_ok() {
        return true;
    }
    assert!(std::env::var("FLOE_REQUIRE_TMUX").map_or(true, |v| v != "1"), "FLOE_REQUIRE_TMUX=1 but tmux is missing");
    eprintln!("skipped: no tmux");
    false
}

/// The tool call the crafted model answers with.
const CALL: &str = "<tool_call>\n<function=calculator>\n<parameter=expression>\n6*7\n</parameter>\n</function>\n</tool_call>";

/// A toy floe model that answers every chat turn with [`CALL`] (one token of its tokenizer), then ends the turn:
/// its layers add nothing to the residual stream (output projections zero), so the next token depends on the
/// current one only, and its lm_head maps the end of the assistant turn's opening to CALL and CALL to
/// `<|im_end|>`.
fn write_tool_calling_model(dir: &Path) {
    let mut tokenizer = floe::generate::default_tokenizer();
    tokenizer.add_special_tokens(&[tokenizers::AddedToken::from("<|im_end|>", true)]);
    tokenizer.add_tokens(&[tokenizers::AddedToken::from(CALL, false)]);
    let (end, call) = (tokenizer.token_to_id("<|im_end|>").unwrap(), tokenizer.token_to_id(CALL).unwrap());
    let config = floe::synthetic::default_config(tokenizer.get_vocab_size(true), vec![end]);
    let mut model = floe::synthetic::random_model(&config, 7, floe::tensor::DType::F32);
    let zero = |m: &Matrix| Matrix::Dense(Tensor::from_f32(m.shape().to_vec(), vec![0.0; m.shape().iter().product()]));
    for layer in &mut model.weights.layers {
        match &mut layer.mixer {
            Mixer::Attention(a) => a.o_proj = zero(&a.o_proj),
            Mixer::Linear(l) => l.out_proj = zero(&l.out_proj),
        }
        if let HostExperts::Resident(experts) = &mut layer.moe.experts {
            experts.iter_mut().for_each(|e| e.down = zero(&e.down));
        }
        if let Some(shared) = &mut layer.moe.shared {
            shared.mlp.down = zero(&shared.mlp.down);
        }
    }
    let h = config.hidden_size;
    let Matrix::Dense(embed) = &model.weights.embed else { panic!("a dense embedding") };
    let embed = embed.to_f32();
    let Matrix::Dense(lm_head) = &model.weights.lm_head else { panic!("a dense lm_head") };
    let mut lm_head = lm_head.to_f32();
    // The final hidden state of token x is RMSNorm(embed[x]) ⊙ final_norm: make row `to` of lm_head point at it.
    let mut map = |from: u32, to: u32| {
        let row = &embed[from as usize * h..][..h];
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / h as f32 + config.rms_norm_eps).sqrt();
        let v: Vec<f32> = row.iter().zip(&model.weights.final_norm).map(|(x, w)| x / rms * w).collect();
        let norm2: f32 = v.iter().map(|x| x * x).sum();
        lm_head[to as usize * h..][..h].iter_mut().zip(&v).for_each(|(o, x)| *o = 100.0 * x / norm2);
    };
    let template = floe::chat::ChatTemplate::builtin();
    let messages = [serde_json::json!({"role": "user", "content": "hi"})];
    let request = floe::chat::ChatRequest { messages: &messages, tools: &[], add_generation_prompt: true, enable_thinking: Some(false) };
    let opening = tokenizer.encode(template.render(&request).unwrap(), false).unwrap();
    map(*opening.get_ids().last().unwrap(), call);
    map(call, end);
    let lm_head = Matrix::Dense(Tensor::from_f32(vec![config.vocab_size, h], lm_head));
    let tokenizer_json = tokenizer.to_string(false).unwrap();
    let files = [("tokenizer.json", tokenizer_json.as_str())];
    let out = floe::convert::Output { dst: dir, force: false, side_files_from: None, extra_files: &files };
    let w = &model.weights;
    let layers = w.layers.clone();
    floe::convert::write_model(&out, &config, floe::convert::QuantPlan::KEEP, (&w.embed, &lm_head, &w.final_norm), |i| Ok(layers[i].clone()), 1)
        .unwrap();
}

/// A model's call of the built-in calculator, in a terminal: parsed, run, shown, its result sent back.
#[test]
fn a_model_calls_a_built_in_tool_in_a_terminal() {
    if !have_tmux() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let model = home.path().join("tool-caller");
    write_tool_calling_model(&model);
    let t = Tmux::chat("tools", home.path(), &format!("--model {} --backend cpu --no-think", model.display()));
    t.keys(&["What is 6*7?", "Enter"]);
    let screen = t.wait_for("rounds of tool calls", 1);
    assert!(screen.contains(r#"[tool calculator({"expression":"6*7"}) → 42]"#), "{screen}");
    t.wait_for(">>> ", 2);
    t.keys(&["/save ", home.path().join("c.json").to_str().unwrap(), "Enter"]);
    t.wait_for("saved to", 1);
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(home.path().join("c.json")).unwrap()).unwrap();
    let messages = saved["messages"].as_array().unwrap();
    assert_eq!(messages[1]["tool_calls"][0]["function"]["name"], "calculator");
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["content"], "42");
}

#[test]
fn chat_in_a_terminal() {
    if !have_tmux() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let saved = home.path().join("conversation.json");
    let t = Tmux::chat("chat", home.path(), "--backend cpu --tokens 100000 --ignore-eos --no-think");

    // A long answer (up to 100,000 tokens), stopped with Ctrl-C; the chat goes on.
    t.keys(&["Tell me a long story", "Enter"]);
    std::thread::sleep(Duration::from_millis(1500));
    t.keys(&["C-c"]);
    let screen = t.wait_for(", stopped]", 1);
    assert!(screen.contains("new prompt tokens"), "{screen}");
    t.wait_for(">>> ", 2);

    t.keys(&["/tools", "Enter"]);
    t.wait_for("get_time, calculator", 1);

    t.keys(&["/save ", saved.to_str().unwrap(), "Enter"]);
    t.wait_for("saved to", 1);
    let conversation: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(conversation["messages"][0]["content"], "Tell me a long story");
    assert_eq!(conversation["messages"][1]["role"], "assistant");

    // /exit ends the program: the pane goes on to the `sleep` after it.
    t.keys(&["/exit", "Enter"]);
    let start = Instant::now();
    let running = || Tmux::run(&["list-panes", "-t", &t.name, "-F", "#{pane_current_command}"]).trim().to_string();
    while running() != "sleep" {
        assert!(start.elapsed() < Duration::from_secs(10), "floe chat did not exit on /exit ({})", running());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(t.alive());
}

/// A model's call of a built-in tool runs it, and its result goes back as a tool message in the next prompt.
#[test]
fn built_in_tool_calls_run_and_their_results_go_back() {
    let (calls_text, tools) = ("<tool_call>\n<function=calculator>\n<parameter=expression>\n6*7\n</parameter>\n</function>\n</tool_call>", builtin_tools());
    let (_, calls) = tool_calls::parse(calls_text, &tools);
    assert_eq!(run_builtin(&calls[0]).as_deref(), Some("42"));
    assert!(run_builtin(&tool_calls::ToolCall { name: "get_time".into(), arguments: Default::default() }).unwrap().len() >= 19);
    assert!(run_builtin(&tool_calls::ToolCall { name: "unknown".into(), arguments: Default::default() }).is_none());

    let (model, tokenizer) = floe::synthetic::default_model();
    let session = Session::new(&model, &tokenizer, vec![]).unwrap();
    let mut chat = Conversation::new(session, floe::chat::ChatTemplate::builtin(), tools, Generation { max_tokens: 3, ..Default::default() });
    chat.push_user("What is 6*7?");
    let first = chat.next_prompt().unwrap();
    assert!(first.contains("<tools>") && first.ends_with("<|im_start|>assistant\n<think>\n"), "{first}");
    chat.answer(&first, |_| true).unwrap();
    chat.push_tool_result(0, "42");
    let next = chat.next_prompt().unwrap();
    assert_eq!(next, "\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n");
}

/// What a model writes reaches the terminal without its control characters: no escape sequence of its can move the
/// cursor or erase the chat's own lines (random weights emit such bytes).
#[test]
fn model_text_cannot_drive_the_terminal() {
    use floe::conversation::terminal_safe;
    assert_eq!(terminal_safe("plain text,\ttabs and\nnewlines"), "plain text,\ttabs and\nnewlines");
    assert_eq!(terminal_safe("a\x1b[2Kb\rc\x07d\x7fe\u{9b}f"), "a\u{241b}[2Kb\u{240d}c\u{2407}d\u{2421}e\u{fffd}f");
    assert_eq!(terminal_safe("\0"), "\u{2400}");
}
