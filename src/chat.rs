//! Chat templates: the model's own Jinja template (`chat_template.jinja`, or `chat_template` in
//! tokenizer_config.json) rendered with minijinja the way transformers' `apply_chat_template` renders it (jinja2
//! with trim_blocks and lstrip_blocks, Python string methods, its `tojson`, `raise_exception`, `strftime_now`),
//! so the prompt is byte for byte what the model was trained on (tests/chat.rs). Models without one get floe's
//! built-in Qwen3.5-style template (assets/chat/qwen3.5.jinja).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{json, Value};

/// floe's Qwen3.5-style template (ChatML, thinking on by default, XML tool calls).
pub const BUILTIN: &str = include_str!("../assets/chat/qwen3.5.jinja");

pub struct ChatTemplate {
    source: String,
    /// Special tokens the template may name (`bos_token`, `eos_token`), from tokenizer_config.json.
    special_tokens: serde_json::Map<String, Value>,
}

/// What to render: the conversation, the tools and the switches templates read.
pub struct ChatRequest<'a> {
    /// OpenAI-style messages: `role`, `content` (a string or a list of parts), `reasoning_content`, `tool_calls`.
    pub messages: &'a [Value],
    /// OpenAI `tools` (function schemas); empty for none.
    pub tools: &'a [Value],
    pub add_generation_prompt: bool,
    /// Qwen's switch: None leaves the template's default (Qwen3.5: thinking on).
    pub enable_thinking: Option<bool>,
}

impl ChatTemplate {
    pub fn builtin() -> ChatTemplate {
        ChatTemplate { source: BUILTIN.to_string(), special_tokens: Default::default() }
    }

    /// The template of a model directory, or None when it has none.
    pub fn load(dir: &Path) -> Result<Option<ChatTemplate>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config_path.display()))?,
            Err(_) => Value::Null,
        };
        let mut special_tokens = serde_json::Map::new();
        for name in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            // A token is a string or {"content": …} (AddedToken).
            match config.get(name) {
                Some(Value::String(s)) => special_tokens.insert(name.into(), json!(s)),
                Some(v) => v.get("content").and_then(|c| special_tokens.insert(name.into(), c.clone())),
                None => None,
            };
        }
        let file = dir.join("chat_template.jinja");
        let source = if file.exists() {
            Some(std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?)
        } else {
            match config.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: the "default" one, else the first.
                Some(Value::Array(list)) => {
                    let named = |n: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(n));
                    named("default").or(list.first()).and_then(|t| t.get("template")).and_then(Value::as_str).map(String::from)
                }
                _ => None,
            }
        };
        Ok(source.map(|source| ChatTemplate { source, special_tokens }))
    }

    /// The model's template, or the built-in one (saying so on stderr).
    pub fn for_model(dir: &Path) -> Result<ChatTemplate> {
        Ok(match ChatTemplate::load(dir)? {
            Some(t) => t,
            None => {
                eprintln!("floe: {} has no chat template: using floe's built-in Qwen3.5 one", dir.display());
                ChatTemplate::builtin()
            }
        })
    }

    pub fn render(&self, request: &ChatRequest) -> Result<String> {
        let env = environment();
        let template = env.template_from_str(&self.source).map_err(|e| anyhow!("the chat template does not parse: {e:#}"))?;
        let mut context = self.special_tokens.clone();
        context.insert("messages".into(), Value::Array(request.messages.iter().map(alias_reasoning).collect()));
        context.insert("tools".into(), if request.tools.is_empty() { Value::Null } else { json!(request.tools) });
        context.insert("documents".into(), Value::Null);
        context.insert("add_generation_prompt".into(), json!(request.add_generation_prompt));
        if let Some(on) = request.enable_thinking {
            context.insert("enable_thinking".into(), json!(on));
        }
        template.render(JinjaValue::from(minijinja::value::Serde(&context))).map_err(|e| anyhow!("the chat template failed: {e:#}"))
    }
}

/// transformers passes a message's reasoning under both names templates read (`reasoning_content`, `thinking`).
fn alias_reasoning(message: &Value) -> Value {
    let Some(m) = message.as_object() else { return message.clone() };
    let reasoning = ["reasoning_content", "thinking", "reasoning"].iter().find_map(|k| m.get(*k).filter(|v| !v.is_null()));
    match reasoning {
        None => message.clone(),
        Some(r) => {
            let mut out = serde_json::Map::new();
            out.insert("thinking".into(), r.clone());
            out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            out.insert("reasoning_content".into(), r.clone());
            Value::Object(out)
        }
    }
}

/// A minijinja environment that renders like transformers' jinja2 sandbox.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
    env.set_syntax(syntax.expect("a valid syntax configuration"));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", |message: String| -> Result<(), Error> {
        Err(Error::new(ErrorKind::InvalidOperation, message))
    });
    env.add_function("strftime_now", |format: String| chrono::Local::now().format(&format).to_string());
    env
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=…, separators=…, sort_keys=…)`, as transformers' `tojson`.
fn tojson(value: JinjaValue, kwargs: Kwargs) -> Result<JinjaValue, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut v: Value = serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    if sort_keys == Some(true) {
        v = sorted(v);
    }
    let (item, key) = match (&separators, indent) {
        (Some(s), _) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        (_, Some(_)) => (",".into(), ": ".into()),
        _ => (", ".into(), ": ".into()),
    };
    let mut out = Vec::new();
    let formatter = PythonFormatter { indent: indent.map(|n| " ".repeat(n)), item, key, depth: 0 };
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&v, &mut ser).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(JinjaValue::from_safe_string(String::from_utf8(out).expect("JSON is UTF-8")))
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// serde_json output with Python's separators and indentation.
struct PythonFormatter {
    indent: Option<String>,
    item: String,
    key: String,
    depth: usize,
}

impl PythonFormatter {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        if let Some(unit) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.depth {
                w.write_all(unit.as_bytes())?;
            }
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        w.write_all(b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        w.write_all(b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            w.write_all(self.item.as_bytes())?;
        }
        self.newline(w)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        Ok(())
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        w.write_all(b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        w.write_all(b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            w.write_all(self.item.as_bytes())?;
        }
        self.newline(w)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(self.key.as_bytes())
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        Ok(())
    }
}

/// Messages from a JSON file: an array of messages, or an object with a `messages` array (and maybe `tools`).
pub fn read_messages(path: &Path) -> Result<(Vec<Value>, Vec<Value>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let (messages, tools) = match v {
        Value::Array(m) => (m, vec![]),
        Value::Object(mut o) => {
            let m = match o.remove("messages") {
                Some(Value::Array(m)) => m,
                _ => bail!("{}: expected a `messages` array", path.display()),
            };
            let t = match o.remove("tools") {
                Some(Value::Array(t)) => t,
                None | Some(Value::Null) => vec![],
                _ => bail!("{}: `tools` must be an array", path.display()),
            };
            (m, t)
        }
        _ => bail!("{}: expected an array of messages", path.display()),
    };
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "user" | "assistant" | "tool") => {}
            Some(other) => bail!("{}: message {i} has unknown role `{other}`", path.display()),
            None => bail!("{}: message {i} has no role", path.display()),
        }
    }
    Ok((messages, tools))
}

/// Tools from a JSON file: an array of OpenAI function schemas.
pub fn read_tools(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))? {
        Value::Array(t) => Ok(t),
        _ => bail!("{}: expected an array of tools", path.display()),
    }
}
