"""floe serve through the official openai client (tests/server.rs starts the server and runs this).

Argument: the server's base URL (http://127.0.0.1:PORT/v1). The server runs the built-in default model with
--api-key test-key, --ctx-size 4096 and --max-body 64K. Prints one line per check; exits non-zero on a failure.
"""
import concurrent.futures
import json
import sys

import urllib.error
import urllib.request

import openai

BASE = sys.argv[1]
client = openai.OpenAI(base_url=BASE, api_key="test-key", max_retries=0, timeout=120)
USER = [{"role": "user", "content": "Hello!"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""), flush=True)
    if not ok:
        sys.exit(1)


def expect_error(name, status, call):
    try:
        call()
    except openai.APIStatusError as e:
        body = e.response.json()
        check(name, e.status_code == status and "message" in body.get("error", {}) and "type" in body["error"],
              f"{e.status_code} {body}")
        return
    check(name, False, "no error")


# Non-streaming.
r = client.chat.completions.create(model="floe", messages=USER, max_tokens=8, temperature=0)
check("non-stream: a completion", r.object == "chat.completion" and r.choices[0].finish_reason in ("length", "stop")
      and r.usage.completion_tokens <= 8 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens)
again = client.chat.completions.create(model="floe", messages=USER, max_tokens=8, temperature=0)
check("non-stream: greedy is repeatable", json.dumps(again.choices[0].message.model_dump()) ==
      json.dumps(r.choices[0].message.model_dump()))

# Streaming, with usage at the end.
chunks = list(client.chat.completions.create(model="floe", messages=USER, max_tokens=6, stream=True,
                                             stream_options={"include_usage": True}, temperature=0))
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check("stream: chunks end with a finish reason and usage", chunks[0].choices[0].delta.role == "assistant"
      and finishes in (["length"], ["stop"]) and chunks[-1].usage is not None and chunks[-1].choices == [])
streamed = "".join((c.choices[0].delta.content or "") + (getattr(c.choices[0].delta, "reasoning_content", None) or "")
                   for c in chunks if c.choices)
plain = client.chat.completions.create(model="floe", messages=USER, max_tokens=6, temperature=0).choices[0].message
check("stream: same text as without streaming",
      streamed == (plain.content or "") + (getattr(plain, "reasoning_content", None) or ""), f"{streamed!r} {plain}")

# Tools, and a tool-result round trip.
r = client.chat.completions.create(model="floe", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                   tools=[WEATHER], max_tokens=8, temperature=0)
check("tools: a request with tools", r.choices[0].finish_reason in ("length", "stop", "tool_calls"))
round_trip = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"},
]
r = client.chat.completions.create(model="floe", messages=round_trip, tools=[WEATHER], max_tokens=8, temperature=0)
check("tools: a tool result round trip", r.choices[0].message.role == "assistant")
r = client.completions.create(model="floe", prompt="Once upon a time", max_tokens=5, temperature=0)
check("completions: text", r.object == "text_completion" and r.usage.completion_tokens <= 5)
check("models: listed", [m.id for m in client.models.list()] == ["floe-default"])

# Errors: each a 4xx with an OpenAI-style body.
def get(path):
    with urllib.request.urlopen(BASE.removesuffix("/v1") + path, timeout=60) as resp:
        return resp.read().decode()


def raw_error(name, status, body):
    req = urllib.request.Request(BASE + "/chat/completions", data=body, method="POST",
                                 headers={"Authorization": "Bearer test-key", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        check(name, e.code == status and "message" in json.loads(text).get("error", {}), f"{e.code} {text}")
        return
    check(name, False, "no error")


raw_error("error: malformed JSON", 400, b'{"messages": [')
raw_error("error: wrong types", 400, json.dumps({"messages": "hello"}).encode())
raw_error("error: unknown role", 400, json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode())
raw_error("error: empty messages", 400, json.dumps({"messages": []}).encode())
raw_error("error: oversized body", 413, json.dumps({"messages": [{"role": "user", "content": "x" * 100_000}]}).encode())
expect_error("error: prompt longer than the context", 400, lambda: client.chat.completions.create(
    model="floe", messages=[{"role": "user", "content": "word " * 5000}], max_tokens=8))
expect_error("error: max_tokens <= 0", 400, lambda: client.chat.completions.create(model="floe", messages=USER, max_tokens=0))
expect_error("error: n > 1", 400, lambda: client.chat.completions.create(model="floe", messages=USER, n=2, max_tokens=4))
expect_error("error: temperature out of range", 400, lambda: client.chat.completions.create(
    model="floe", messages=USER, temperature=5, max_tokens=4))
bad_key = openai.OpenAI(base_url=BASE, api_key="wrong", max_retries=0)
expect_error("error: wrong API key", 401, lambda: bad_key.chat.completions.create(model="floe", messages=USER, max_tokens=4))


# 16 concurrent clients, several requests each, streaming and not: every response complete.
def worker(i):
    c = openai.OpenAI(base_url=BASE, api_key="test-key", max_retries=0, timeout=300)
    done = 0
    for j in range(4):
        messages = [{"role": "user", "content": f"client {i} request {j}"}]
        if (i + j) % 2:
            chunks = list(c.chat.completions.create(model="floe", messages=messages, max_tokens=5, stream=True))
            done += any(ch.choices and ch.choices[0].finish_reason for ch in chunks)
        else:
            r = c.chat.completions.create(model="floe", messages=messages, max_tokens=5)
            done += r.choices[0].finish_reason in ("length", "stop")
    return done


with concurrent.futures.ThreadPoolExecutor(16) as pool:
    results = list(pool.map(worker, range(16)))
check("16 concurrent clients × 4 requests: all complete", results == [4] * 16, str(results))
check("alive afterwards", json.loads(get("/health")) == {"status": "ok"})
metrics = get("/metrics")
check("metrics: counted", "floe_requests_total" in metrics and "floe_queue_length 0" in metrics, metrics)
