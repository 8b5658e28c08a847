//! Tool calls in model output: Qwen3.5's XML form
//! (`<tool_call>\n<function=NAME>\n<parameter=P>\nV\n</parameter>\n</function>\n</tool_call>`) and the JSON form of
//! earlier Qwen models (`<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`), parsed into OpenAI-style calls.
//!
//! [`ToolCallParser`] works on streamed text: text is passed on as soon as it cannot be the start of a call, a call
//! only once it is complete, so no half call leaks out as text. Anything malformed or cut short comes out as text.

use serde_json::{Map, Value};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One call: the function's name and its arguments (a JSON object).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Map<String, Value>,
}

impl ToolCall {
    /// The arguments as OpenAI sends them: a JSON string.
    pub fn arguments_json(&self) -> String {
        Value::Object(self.arguments.clone()).to_string()
    }
}

/// What a piece of output is.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Text(String),
    Call(ToolCall),
}

/// Splits streamed output into text and tool calls.
#[derive(Default)]
pub struct ToolCallParser {
    /// Output not passed on yet: a possible start of `<tool_call>`, or a call still open.
    held: String,
    in_call: bool,
    /// Per function, the parameters declared as strings (kept as text, never JSON-decoded).
    string_params: Vec<(String, String)>,
}

impl ToolCallParser {
    /// A parser that knows the tools' schemas (OpenAI `tools` array): string parameters stay strings even when
    /// their text looks like JSON.
    pub fn with_tools(tools: &[Value]) -> ToolCallParser {
        let mut string_params = Vec::new();
        for tool in tools {
            let f = tool.get("function").unwrap_or(tool);
            let Some(name) = f.get("name").and_then(Value::as_str) else { continue };
            if let Some(props) = f.pointer("/parameters/properties").and_then(Value::as_object) {
                for (p, schema) in props {
                    if schema.get("type").and_then(Value::as_str) == Some("string") {
                        string_params.push((name.to_string(), p.clone()));
                    }
                }
            }
        }
        ToolCallParser { string_params, ..Default::default() }
    }

    /// Takes the next piece of output; returns what is certain now.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else { break };
                let body = self.held[OPEN.len()..end].to_string();
                let raw = self.held[..end + CLOSE.len()].to_string();
                self.held.drain(..end + CLOSE.len());
                self.in_call = false;
                match self.parse_body(&body) {
                    Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                    None => push_text(&mut out, &raw),
                }
            } else if let Some(start) = self.held.find(OPEN) {
                let text: String = self.held.drain(..start).collect();
                push_text(&mut out, &text);
                self.in_call = true;
            } else {
                // Pass on all but a tail that could still grow into `<tool_call>`.
                let keep = crate::generate::partial_suffix(&self.held, OPEN);
                let text: String = self.held.drain(..self.held.len() - keep).collect();
                push_text(&mut out, &text);
                break;
            }
        }
        out
    }

    /// The end of the output: whatever is held (an unfinished call included) as text.
    pub fn finish(&mut self) -> Vec<Piece> {
        self.in_call = false;
        let mut out = Vec::new();
        push_text(&mut out, &std::mem::take(&mut self.held));
        out
    }

    /// The calls in one `<tool_call>` body, or None when it is malformed.
    fn parse_body(&self, body: &str) -> Option<Vec<ToolCall>> {
        let body = body.trim();
        if body.starts_with('{') {
            return parse_json_call(body).map(|c| vec![c]);
        }
        let mut calls = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let after = rest.strip_prefix("<function=")?;
            let (name, after) = after.split_once('>')?;
            let (inner, after) = after.split_once("</function>")?;
            calls.push(self.parse_xml_function(name.trim(), inner)?);
            rest = after.trim_start();
        }
        (!calls.is_empty()).then_some(calls)
    }

    fn parse_xml_function(&self, name: &str, inner: &str) -> Option<ToolCall> {
        if name.is_empty() {
            return None;
        }
        let mut arguments = Map::new();
        let mut rest = inner.trim_start();
        while !rest.is_empty() {
            let after = rest.strip_prefix("<parameter=")?;
            let (param, after) = after.split_once('>')?;
            let (value, after) = after.split_once("</parameter>")?;
            // The template writes `<parameter=P>\nV\n</parameter>`: one newline on each side is framing.
            let value = value.strip_prefix('\n').unwrap_or(value);
            let value = value.strip_suffix('\n').unwrap_or(value);
            let param = param.trim();
            let is_string = self.string_params.iter().any(|(f, p)| f == name && p == param);
            arguments.insert(param.to_string(), decode_value(value, is_string));
            rest = after.trim_start();
        }
        Some(ToolCall { name: name.to_string(), arguments })
    }
}

/// A parameter value: strings stay text; anything else is JSON when it parses as JSON (the template JSON-encodes
/// non-string values), else text.
fn decode_value(value: &str, is_string: bool) -> Value {
    if is_string {
        return Value::String(value.to_string());
    }
    serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()))
}

/// `{"name": "f", "arguments": {…}}` (arguments may also be a JSON string holding the object).
fn parse_json_call(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(s)) => match serde_json::from_str(s).ok()? {
            Value::Object(m) => m,
            _ => return None,
        },
        Some(_) => return None,
    };
    Some(ToolCall { name, arguments })
}

fn push_text(out: &mut Vec<Piece>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Text(last)) = out.last_mut() {
        last.push_str(text);
    } else {
        out.push(Piece::Text(text.to_string()));
    }
}

/// A whole output at once: its text (calls removed) and its calls.
pub fn parse(output: &str, tools: &[Value]) -> (String, Vec<ToolCall>) {
    let mut parser = ToolCallParser::with_tools(tools);
    let mut pieces = parser.push(output);
    pieces.extend(parser.finish());
    let (mut text, mut calls) = (String::new(), Vec::new());
    for p in pieces {
        match p {
            Piece::Text(t) => text.push_str(&t),
            Piece::Call(c) => calls.push(c),
        }
    }
    (text, calls)
}
