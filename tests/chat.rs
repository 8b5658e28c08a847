//! Chat templates (floe::chat) against transformers' apply_chat_template rendering, byte for byte, on the cases
//! tools/make_chat_fixtures.py wrote: thinking on and off, reasoning in past turns, tools, tool calls and results.

use std::path::Path;

use floe::chat::{ChatRequest, ChatTemplate};
use serde_json::Value;

#[test]
fn templates_render_exactly_as_transformers_does() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/fixtures/chat/cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        assert_eq!(case["template"], "assets/chat/qwen3.5.jinja");
        let template = ChatTemplate::builtin();
        let messages = case["messages"].as_array().unwrap();
        let tools = case["tools"].as_array().cloned().unwrap_or_default();
        let request = ChatRequest {
            messages,
            tools: &tools,
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            enable_thinking: case["enable_thinking"].as_bool(),
        };
        let got = template.render(&request).unwrap();
        let expected = case["expected"].as_str().unwrap();
        if got != expected {
            let at = got.bytes().zip(expected.bytes()).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
            panic!("{name}: differs at byte {at}:\nfloe:         {:?}\ntransformers: {:?}", &got[at.saturating_sub(40)..(at + 80).min(got.len())], &expected[at.saturating_sub(40)..(at + 80).min(expected.len())]);
        }
    }
}

/// A model's own template comes from chat_template.jinja or tokenizer_config.json (a string or a named list).
#[test]
fn a_models_template_is_found_where_transformers_looks() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::load(tmp.path()).unwrap().is_none());
    let config = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D{{ messages[0].content }}"}], "bos_token": {"content": "<s>"}});
    std::fs::write(tmp.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let messages = [serde_json::json!({"role": "user", "content": "x"})];
    let request = ChatRequest { messages: &messages, tools: &[], add_generation_prompt: true, enable_thinking: None };
    assert_eq!(ChatTemplate::load(tmp.path()).unwrap().unwrap().render(&request).unwrap(), "<s>Dx");
    std::fs::write(tmp.path().join("chat_template.jinja"), "F{{ messages|length }}{{ raise_exception('bad') if not add_generation_prompt }}").unwrap();
    assert_eq!(ChatTemplate::load(tmp.path()).unwrap().unwrap().render(&request).unwrap(), "F1");
    let no_prompt = ChatRequest { add_generation_prompt: false, ..request };
    let err = ChatTemplate::load(tmp.path()).unwrap().unwrap().render(&no_prompt).unwrap_err().to_string();
    assert!(err.contains("bad"), "{err}");
}

/// `floe template` prints what the template makes of a messages file, and names bad input in one line.
#[test]
fn template_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/fixtures/chat/cases.json")).unwrap()).unwrap();
    let case = cases.iter().find(|c| c["tools"].is_array()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (messages, tools) = (tmp.path().join("m.json"), tmp.path().join("t.json"));
    std::fs::write(&messages, case["messages"].to_string()).unwrap();
    std::fs::write(&tools, case["tools"].to_string()).unwrap();
    let floe = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_floe")).args(args).output().unwrap();
    let mut args = vec!["template", "--messages", messages.to_str().unwrap(), "--tools", tools.to_str().unwrap()];
    if case["enable_thinking"] == false {
        args.push("--no-think");
    }
    let out = floe(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), case["expected"].as_str().unwrap());

    std::fs::write(&messages, r#"[{"role": "wizard", "content": "hi"}]"#).unwrap();
    let out = floe(&["template", "--messages", messages.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("unknown role `wizard`"), "{stderr}");
}
