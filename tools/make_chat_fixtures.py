"""Builds the chat-template fixtures: conversations rendered by transformers' own chat-template code
(render_jinja_template: the jinja2 sandbox, filters and message handling apply_chat_template uses), which floe's
minijinja rendering must match byte for byte (tests/chat.rs).

    python3 -m venv .venv && .venv/bin/pip install -r tools/requirements.txt
    .venv/bin/python tools/make_chat_fixtures.py       # writes tests/fixtures/chat/cases.json

Needs only transformers and jinja2 (no torch). Templates: floe's built-in Qwen3.5-style template
(assets/chat/qwen3.5.jinja).
"""
import json
import os

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "chat", "cases.json")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city (°C).",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Zürich"},
        "days": {"type": "integer"}}, "required": ["city"]}}}
CALC = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluates an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}

CASES = [
    ("one user turn", [{"role": "user", "content": "Hello!"}], None, {}),
    ("system prompt, thinking off",
     [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}], None,
     {"enable_thinking": False}),
    ("no generation prompt", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], None,
     {"add_generation_prompt": False}),
    ("multi-turn with reasoning",
     [{"role": "user", "content": "Pick a number."},
      {"role": "assistant", "content": "<think>\nSeven is nice.\n</think>\n\nSeven."},
      {"role": "user", "content": "Why?"},
      {"role": "assistant", "reasoning_content": "Because it is prime.", "content": "It is prime."},
      {"role": "user", "content": "Thanks — ünïcödé ✓"}], None, {}),
    ("tools, a call and two results",
     [{"role": "system", "content": "Use tools when useful."},
      {"role": "user", "content": "Weather in Paris and Zürich for 3 days?"},
      {"role": "assistant", "content": "Let me look.", "tool_calls": [
          {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                            "arguments": {"city": "Paris", "days": 3}}},
          {"id": "call_2", "type": "function", "function": {"name": "get_weather",
                                                            "arguments": {"city": "Zürich", "days": 3,
                                                                          "extra": {"units": ["C", "F"]}}}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
      {"role": "tool", "tool_call_id": "call_2", "content": "{\"temp\": 17}"}],
     [WEATHER, CALC], {}),
    ("tools without a system prompt, call without text",
     [{"role": "user", "content": "What is 6*7?"},
      {"role": "assistant", "content": "", "tool_calls": [
          {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6*7"}}}]},
      {"role": "tool", "content": "42"},
      {"role": "assistant", "content": "42."},
      {"role": "user", "content": "And 7*8?"}],
     [CALC], {"enable_thinking": False}),
]


def main():
    with open(os.path.join(ROOT, "assets", "chat", "qwen3.5.jinja")) as f:
        template = f.read()
    cases = []
    for name, messages, tools, kwargs in CASES:
        kwargs = dict(kwargs)
        add_generation_prompt = kwargs.pop("add_generation_prompt", True)
        rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=template,
                                            add_generation_prompt=add_generation_prompt, **kwargs)
        cases.append({"name": name, "template": "assets/chat/qwen3.5.jinja", "messages": messages, "tools": tools,
                      "add_generation_prompt": add_generation_prompt,
                      "enable_thinking": kwargs.get("enable_thinking"), "expected": rendered[0]})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
