//! A conversation with a model: messages rendered by its chat template, answers parsed for tool calls, built-in
//! tools run, and one [`Session`] carried across turns so each turn prefills only what is new. `floe chat` is the
//! terminal program around it ([`run_chat`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::chat::{ChatRequest, ChatTemplate};
use crate::generate::{Generation, Outcome, Part, Session, ThoughtSplitter};
use crate::tool_calls::{self, ToolCall};

/// Tools floe runs itself when the model calls them.
pub fn builtin_tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_time", "description": "The current local date and time.",
            "parameters": {"type": "object", "properties": {}}}}),
        json!({"type": "function", "function": {"name": "calculator",
            "description": "Evaluates an arithmetic expression (+ - * / % ^, parentheses; integers stay integers).",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}),
    ]
}

/// Runs a built-in tool; None when `call` names none.
pub fn run_builtin(call: &ToolCall) -> Option<String> {
    match call.name.as_str() {
        "get_time" => Some(chrono::Local::now().format("%Y-%m-%d %H:%M:%S %Z").to_string()),
        "calculator" => {
            let expression = call.arguments.get("expression").and_then(Value::as_str).unwrap_or("");
            Some(match evalexpr::eval(expression) {
                Ok(v) => v.to_string(),
                Err(e) => format!("error: {e}"),
            })
        }
        _ => None,
    }
}

/// What one answer of the model was.
pub struct Answer {
    pub outcome: Outcome,
    /// The answer's text without its tool calls (thinking included).
    pub content: String,
    pub calls: Vec<ToolCall>,
}

pub struct Conversation<'m, B: Backend> {
    pub session: Session<'m, B>,
    template: ChatTemplate,
    pub messages: Vec<Value>,
    pub tools: Vec<Value>,
    pub generation: Generation,
    pub enable_thinking: Option<bool>,
    /// Messages already fed to the model (the rest are fed with the next answer).
    fed: usize,
}

impl<'m, B: Backend> Conversation<'m, B> {
    pub fn new(session: Session<'m, B>, template: ChatTemplate, tools: Vec<Value>, generation: Generation) -> Self {
        Conversation { session, template, messages: vec![], tools, generation, enable_thinking: None, fed: 0 }
    }

    /// Starts over (keeps the system prompt, if any, as the first message).
    pub fn clear(&mut self) -> Result<()> {
        self.messages.retain(|m| m["role"] == "system");
        self.session.reset()?;
        self.fed = 0;
        Ok(())
    }

    /// Replaces the conversation (e.g. one loaded from a file); the model state starts over.
    pub fn replace(&mut self, messages: Vec<Value>) -> Result<()> {
        self.messages = messages;
        self.session.reset()?;
        self.fed = 0;
        Ok(())
    }

    /// The text that moves the model from what it has seen to the start of its next answer: on the first turn
    /// the whole rendered conversation; later only the new messages, rendered alone after the end of the
    /// previous answer (ChatML: `<|im_end|>` was fed, so a newline starts the next turn).
    pub fn next_prompt(&self) -> Result<String> {
        let enable_thinking = self.enable_thinking;
        if self.fed == 0 {
            let request = ChatRequest { messages: &self.messages, tools: &self.tools, add_generation_prompt: true, enable_thinking };
            return self.template.render(&request);
        }
        let new = &self.messages[self.fed..];
        let request = ChatRequest { messages: new, tools: &[], add_generation_prompt: true, enable_thinking };
        Ok(format!("\n{}", self.template.render(&request)?))
    }

    /// Lets the model answer `prompt` (from [`Conversation::next_prompt`]), streaming its text to `emit` (false
    /// stops it).
    pub fn answer(&mut self, prompt: &str, emit: impl FnMut(&str) -> bool) -> Result<Answer> {
        let mut generation = self.generation.clone();
        generation.thinking = prompt.ends_with("<think>\n");
        let outcome = self.session.generate(prompt, &generation, emit)?;
        let (content, calls) = tool_calls::parse(&outcome.text, &self.tools);
        let mut message = json!({"role": "assistant", "content": content.trim()});
        if !calls.is_empty() {
            let tool_calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect();
            message["tool_calls"] = json!(tool_calls);
        }
        self.messages.push(message);
        // The answer itself was fed as it was generated.
        self.fed = self.messages.len();
        Ok(Answer { outcome, content, calls })
    }

    pub fn push_user(&mut self, text: &str) {
        self.messages.push(json!({"role": "user", "content": text}));
    }

    pub fn push_tool_result(&mut self, call_index: usize, content: &str) {
        self.messages.push(json!({"role": "tool", "tool_call_id": format!("call_{call_index}"), "content": content}));
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&json!({"messages": self.messages, "tools": self.tools}))?;
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Options of `floe chat`.
pub struct ChatOptions {
    pub system: Option<String>,
    pub hide_thinking: bool,
    /// Where the line history is kept.
    pub history_file: Option<PathBuf>,
}

/// Answers with tool calls in a row before the chat asks the user again (a model may call tools forever).
const MAX_TOOL_ROUNDS: usize = 4;

const HELP: &str = "commands: /clear (start over), /save FILE, /load FILE, /tools, /exit (or Ctrl-D); end a line with \\ to go on on the next; Ctrl-C stops an answer";

/// The interactive chat: reads turns from the terminal (or plain lines from a pipe), streams answers (thinking
/// dimmed or hidden), runs built-in tools the model calls and asks the user for the results of the others.
pub fn run_chat<B: Backend>(mut chat: Conversation<B>, options: ChatOptions) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new().context("opening the terminal")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C while an answer streams stops the answer; at the prompt the line editor reads it as a key. (Set
    // after the editor, which installs a SIGINT handler of its own.)
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    if let Some(h) = &options.history_file {
        let _ = editor.load_history(h);
    }
    if let Some(system) = &options.system {
        chat.messages.push(json!({"role": "system", "content": system}));
    }
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    eprintln!("floe chat: {HELP}");
    loop {
        let Some(line) = read_turn(&mut editor, ">>> ")? else { break };
        let line = line.trim().to_string();
        if line.is_empty() {
            continue;
        }
        if let Some(command) = line.strip_prefix('/') {
            let (name, arg) = command.split_once(' ').map_or((command, ""), |(n, a)| (n, a.trim()));
            let result = match name {
                "exit" | "quit" => break,
                "clear" => chat.clear().map(|_| "conversation cleared".to_string()),
                "save" if !arg.is_empty() => chat.save(Path::new(arg)).map(|_| format!("saved to {arg}")),
                "load" if !arg.is_empty() => crate::chat::read_messages(Path::new(arg))
                    .and_then(|(m, _)| chat.replace(m).map(|_| format!("loaded {arg}"))),
                "tools" => Ok(chat.tools.iter().map(|t| t["function"]["name"].as_str().unwrap_or("?").to_string()).collect::<Vec<_>>().join(", ")),
                _ => Ok(HELP.to_string()),
            };
            match result {
                Ok(msg) => eprintln!("{msg}"),
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        let _ = editor.add_history_entry(&line);
        chat.push_user(&line);
        // Answer, run the tools it calls, answer again with their results, until it answers in text.
        for round in 1.. {
            if round > MAX_TOOL_ROUNDS {
                eprintln!("[stopped after {MAX_TOOL_ROUNDS} rounds of tool calls]");
                break;
            }
            stop.store(false, Ordering::SeqCst);
            let answer = chat.next_prompt().and_then(|prompt| {
                let mut printer = Printer::new(color, options.hide_thinking, prompt.ends_with("<think>\n"));
                let answer = chat.answer(&prompt, |text| {
                    printer.print(text);
                    !stop.load(Ordering::SeqCst)
                });
                printer.end();
                answer
            });
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    break;
                }
            };
            let o = &answer.outcome;
            let rate = o.generated_tokens as f64 / o.decode_time.as_secs_f64().max(1e-9);
            let how = if o.finish == crate::generate::Finish::Cancelled { ", stopped" } else { "" };
            eprintln!(
                "[{} new prompt tokens, first token after {:.0} ms, {} tokens at {rate:.1} tok/s{how}]",
                o.prompt_tokens,
                o.time_to_first_token.as_secs_f64() * 1e3,
                o.generated_tokens
            );
            if answer.calls.is_empty() || o.finish == crate::generate::Finish::Cancelled {
                break;
            }
            for (i, call) in answer.calls.iter().enumerate() {
                let result = match run_builtin(call) {
                    Some(r) => {
                        eprintln!("[tool {}({}) → {r}]", call.name, call.arguments_json());
                        r
                    }
                    None => {
                        let prompt = format!("[the model calls {}({})] result> ", call.name, call.arguments_json());
                        read_turn(&mut editor, &prompt)?.unwrap_or_default()
                    }
                };
                chat.push_tool_result(i, &result);
            }
        }
    }
    if let Some(h) = &options.history_file {
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// One input, possibly over several lines (a line ending in `\` continues); None at end of input.
fn read_turn(editor: &mut rustyline::DefaultEditor, prompt: &str) -> Result<Option<String>> {
    let mut text = String::new();
    let mut prompt = prompt.to_string();
    loop {
        match editor.readline(&prompt) {
            Ok(line) => match line.strip_suffix('\\') {
                Some(part) => {
                    text.push_str(part);
                    text.push('\n');
                    prompt = "... ".into();
                }
                None => {
                    text.push_str(&line);
                    return Ok(Some(text));
                }
            },
            // Ctrl-C at the prompt drops the line being typed.
            Err(rustyline::error::ReadlineError::Interrupted) => {
                text.clear();
                prompt = ">>> ".into();
            }
            Err(rustyline::error::ReadlineError::Eof) => return Ok(None),
            Err(e) => bail!("reading the terminal: {e}"),
        }
    }
}

/// `text` for a terminal: control characters other than newline and tab shown as their Unicode pictures (ESC as
/// ␛, carriage return as ␍, DEL as ␡) and C1 controls as U+FFFD, so that a model's output cannot move the cursor,
/// erase lines or send other escape sequences to the terminal (random weights emit such bytes often enough to
/// have erased the chat's own status lines).
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    text.chars()
        .map(|c| match c {
            c if !unsafe_char(c) => c,
            '\u{7f}' => '\u{2421}',
            c if (c as u32) < 0x20 => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
            _ => '\u{fffd}',
        })
        .collect::<String>()
        .into()
}

/// Streams an answer to stdout: the thinking dimmed (on a terminal) or hidden, the rest plain.
struct Printer {
    color: bool,
    hide_thinking: bool,
    parts: ThoughtSplitter,
    /// Whether the terminal is dimmed now.
    dim: bool,
}

impl Printer {
    fn new(color: bool, hide_thinking: bool, thinking: bool) -> Printer {
        Printer { color, hide_thinking, parts: ThoughtSplitter::new(thinking), dim: false }
    }

    fn show(&mut self, parts: Vec<Part>) {
        let mut out = std::io::stdout();
        for part in parts {
            match part {
                Part::Thought(t) if !self.hide_thinking => {
                    if self.color && !self.dim {
                        let _ = write!(out, "\x1b[2m");
                        self.dim = true;
                    }
                    let _ = write!(out, "{}", self.safe(&t));
                }
                Part::Thought(_) => {}
                Part::Answer(t) => {
                    if self.dim {
                        let _ = writeln!(out, "\x1b[0m");
                        self.dim = false;
                    }
                    let _ = write!(out, "{}", self.safe(&t));
                }
            }
        }
        let _ = out.flush();
    }

    /// On a terminal, the model's text with its control characters made visible (`terminal_safe`).
    fn safe<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.color {
            terminal_safe(text)
        } else {
            text.into()
        }
    }

    fn print(&mut self, text: &str) {
        let parts = self.parts.push(text);
        self.show(parts);
    }

    fn end(&mut self) {
        let parts = self.parts.finish();
        self.show(parts);
        let _ = writeln!(std::io::stdout(), "{}", if self.dim { "\x1b[0m" } else { "" });
        self.dim = false;
    }
}
