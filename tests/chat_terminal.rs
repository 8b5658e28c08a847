//! `floe chat` as a person uses it, driven in tmux (send-keys, capture-pane): a turn, a second turn that
//! prefills only itself, /tools, Ctrl-C stopping a long answer (the program lives on), /save, /exit. Skipped
//! without tmux unless FLOE_REQUIRE_TMUX=1 (CI sets it). And the tool round trip of a conversation.

use std::process::Command;
use std::time::{Duration, Instant};

use floe::conversation::{builtin_tools, run_builtin, Conversation};
use floe::generate::{Generation, Session};
use floe::tool_calls;

struct Tmux {
    name: String,
}

impl Tmux {
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

#[test]
fn chat_in_a_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var("FLOE_REQUIRE_TMUX").map_or(true, |v| v != "1"), "FLOE_REQUIRE_TMUX=1 but tmux is missing");
        eprintln!("skipped: no tmux");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let saved = home.path().join("conversation.json");
    let name = format!("floe-chat-{}", std::process::id());
    let command = format!(
        "HOME={} {} chat --backend cpu --tokens 100000 --ignore-eos --no-think; sleep 30",
        home.path().display(),
        env!("CARGO_BIN_EXE_floe")
    );
    Tmux::run(&["new-session", "-d", "-s", &name, "-x", "200", "-y", "50", &command]);
    let t = Tmux { name };
    t.wait_for(">>> ", 1);

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
