//! The tool-call parser (floe::tool_calls), table-driven: both Qwen forms, text around calls, several calls,
//! malformed and truncated output (always text, never a panic), and streaming in pieces of any size.

use floe::tool_calls::{parse, Piece, ToolCallParser};
use serde_json::{json, Value};

/// What, the output, the text expected, the calls expected as (name, arguments).
type Case = (&'static str, &'static str, &'static str, Vec<(&'static str, Value)>);

fn cases() -> Vec<Case> {
    vec![
        ("plain text", "Hello there.", "Hello there.", vec![]),
        (
            "Qwen3.5 XML call",
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
            "",
            vec![("get_weather", json!({"city": "Paris", "days": 3}))],
        ),
        (
            "text, then a call",
            "Let me check.\n\n<tool_call>\n<function=now>\n</function>\n</tool_call>",
            "Let me check.\n\n",
            vec![("now", json!({}))],
        ),
        (
            "two calls",
            "<tool_call>\n<function=a>\n<parameter=x>\n{\"k\": [1, 2]}\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=b>\n<parameter=s>\ntwo\nlines\n</parameter>\n</function>\n</tool_call>",
            "\n",
            vec![("a", json!({"x": {"k": [1, 2]}})), ("b", json!({"s": "two\nlines"}))],
        ),
        (
            "string parameter that looks like JSON stays a string (schema)",
            "<tool_call>\n<function=get_weather>\n<parameter=city>\n123\n</parameter>\n</function>\n</tool_call>",
            "",
            vec![("get_weather", json!({"city": "123"}))],
        ),
        (
            "Qwen3 JSON call",
            "<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"expr\": \"1+2\"}}\n</tool_call>",
            "",
            vec![("calc", json!({"expr": "1+2"}))],
        ),
        (
            "JSON call with arguments as a string",
            "<tool_call>{\"name\": \"calc\", \"arguments\": \"{\\\"expr\\\": \\\"2*3\\\"}\"}</tool_call>",
            "",
            vec![("calc", json!({"expr": "2*3"}))],
        ),
        ("malformed JSON call is text", "<tool_call>{\"name\": }</tool_call>", "<tool_call>{\"name\": }</tool_call>", vec![]),
        (
            "malformed XML call is text",
            "<tool_call>\n<function=f>\n<parameter=x>\n1\n</function>\n</tool_call>",
            "<tool_call>\n<function=f>\n<parameter=x>\n1\n</function>\n</tool_call>",
            vec![],
        ),
        ("empty call is text", "<tool_call></tool_call>", "<tool_call></tool_call>", vec![]),
        (
            "truncated call is text",
            "Sure <tool_call>\n<function=get_weather>\n<parameter=ci",
            "Sure <tool_call>\n<function=get_weather>\n<parameter=ci",
            vec![],
        ),
        ("a lone `<tool` at the end is text", "a < b and <tool", "a < b and <tool", vec![]),
        ("closing tag alone is text", "</tool_call> done", "</tool_call> done", vec![]),
        ("unicode around a call", "é🙂<tool_call>\n<function=f>\n</function>\n</tool_call>ü", "é🙂ü", vec![("f", json!({}))]),
    ]
}

fn tools() -> Vec<Value> {
    vec![json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}})]
}

fn check(what: &str, pieces: Vec<Piece>, text: &str, calls: &[(&str, Value)]) {
    let mut got_text = String::new();
    let mut got_calls = Vec::new();
    for p in pieces {
        match p {
            Piece::Text(t) => got_text.push_str(&t),
            Piece::Call(c) => got_calls.push((c.name.clone(), Value::Object(c.arguments.clone()))),
        }
    }
    assert_eq!(got_text, text, "{what}: text");
    let expected: Vec<(String, Value)> = calls.iter().map(|(n, a)| (n.to_string(), a.clone())).collect();
    assert_eq!(got_calls, expected, "{what}: calls");
}

#[test]
fn whole_outputs() {
    for (what, output, text, calls) in cases() {
        let (got_text, got_calls) = parse(output, &tools());
        let pieces = std::iter::once(Piece::Text(got_text)).chain(got_calls.into_iter().map(Piece::Call)).collect();
        check(what, pieces, text, &calls);
    }
}

/// Streamed in pieces of 1, 2, 3, 5 and 7 characters: the same result, and no text piece ever holds part of a call
/// that is later recognized.
#[test]
fn streamed_outputs() {
    for (what, output, text, calls) in cases() {
        for size in [1, 2, 3, 5, 7] {
            let mut parser = ToolCallParser::with_tools(&tools());
            let chars: Vec<char> = output.chars().collect();
            let mut pieces = Vec::new();
            for chunk in chars.chunks(size) {
                let got = parser.push(&chunk.iter().collect::<String>());
                if !calls.is_empty() {
                    for p in &got {
                        if let Piece::Text(t) = p {
                            assert!(!t.contains("<tool_call") && !t.contains("<function"), "{what}: leaked `{t}`");
                        }
                    }
                }
                pieces.extend(got);
            }
            pieces.extend(parser.finish());
            check(&format!("{what} (pieces of {size})"), pieces, text, &calls);
        }
    }
}

#[test]
fn arguments_are_an_openai_json_string() {
    let (_, calls) = parse("<tool_call>\n<function=f>\n<parameter=n>\n2\n</parameter>\n</function>\n</tool_call>", &[]);
    assert_eq!(calls[0].arguments_json(), r#"{"n":2}"#);
}
