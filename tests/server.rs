//! `floe serve` on the built-in default model: the official openai Python client against it
//! (tests/server/openai_client.py: non-stream, stream, tools, a tool round trip, every error, 16 concurrent
//! clients), then raw connections: malformed, truncated and slow requests, a client that leaves mid-stream, and a
//! graceful shutdown on SIGINT. The Python part needs `openai` (tests/server/requirements.txt; CI installs it
//! and sets FLOE_PYTHON); without it that part is skipped unless FLOE_REQUIRE_OPENAI=1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    start_with(&[])
}

fn start_with(extra: &[&str]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(["serve", "--backend", "cpu", "--port", &port.to_string(), "--api-key", "test-key"])
        .args(["--ctx-size", "4096", "--max-body", "64K", "--default-max-tokens", "64"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    up(Server { child, port })
}

/// The server once it answers /health.
fn up(server: Server) -> Server {
    let start = Instant::now();
    while !healthy(&server) {
        assert!(start.elapsed() < Duration::from_secs(30), "the server did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// Sends raw bytes, returns the whole response (the connection closes after it).
fn request(server: &Server, raw: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", server.port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let raw = raw.replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n");
    s.write_all(raw.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if out.is_empty() {
        return Err(std::io::Error::other("empty response"));
    }
    Ok(out)
}

fn post(server: &Server, path: &str, body: &str) -> String {
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    request(server, &raw).unwrap()
}

/// Starts a long streamed answer and waits for its first bytes; the connection stays open until dropped.
fn open_stream(server: &Server, max_tokens: usize) -> TcpStream {
    let body = format!(r#"{{"messages": [{{"role": "user", "content": "go on"}}], "max_tokens": {max_tokens}, "stream": true}}"#);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut first = [0u8; 256];
    let _ = s.read(&mut first).unwrap();
    s
}

fn healthy(server: &Server) -> bool {
    request(server, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").is_ok_and(|r| r.starts_with("HTTP/1.1 200") && r.contains("\"ok\""))
}

fn python() -> Option<String> {
    let candidates = [std::env::var("FLOE_PYTHON").ok(), Some("python3".to_string())];
    for python in candidates.into_iter().flatten() {
        if Command::new(&python).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success()) {
            return Some(python);
        }
    }
    assert!(std::env::var("FLOE_REQUIRE_OPENAI").map_or(true, |v| v != "1"), "FLOE_REQUIRE_OPENAI=1 but no python with openai");
    None
}

#[test]
fn the_openai_client_works_against_floe_serve() {
    let Some(python) = python() else {
        eprintln!("skipped: no python with the openai package (pip install -r tests/server/requirements.txt)");
        return;
    };
    let server = start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/server/openai_client.py");
    let out = Command::new(python).args([script, &format!("http://127.0.0.1:{}/v1", server.port)]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(healthy(&server));
}

#[test]
fn bad_slow_and_vanishing_clients_do_not_stop_the_server() {
    let server = start();
    // Slow clients: connections that send half a request and wait.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"messa").unwrap();
        slow.push(s);
    }
    // Malformed and truncated requests.
    let garbage = [
        "GARBAGE\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999\r\n\r\n{}",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"messages\": [{\"ro",
        "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for g in garbage {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", server.port)) {
            let _ = s.write_all(g.as_bytes());
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = String::new();
            let _ = s.read_to_string(&mut sink);
        }
    }
    let bodies = [
        r#"{"messages": [{"role": "user", "content": 5}]}"#,
        r#"{"messages": [{"role": "user"}], "max_tokens": "many"}"#,
        r#"{"messages": [{"role": "user", "content": "hi"}], "stop": [1, 2]}"#,
        r#"[]"#,
        "\u{0}\u{1}",
    ];
    for b in bodies {
        let r = post(&server, "/v1/chat/completions", b);
        assert!(r.starts_with("HTTP/1.1 400") && r.contains("\"error\""), "{b}: {r}");
    }
    let r = request(&server, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").unwrap();
    assert!(r.starts_with("HTTP/1.1 401"), "no key: {r}");

    // A client that leaves mid-stream: its generation stops (the next request is served at once).
    drop(open_stream(&server, 4000));
    let start = Instant::now();
    let r = post(&server, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}"#);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let metrics = request(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let completion: u64 = metrics.lines().find_map(|l| l.strip_prefix("floe_completion_tokens_total ")).unwrap().trim().parse().unwrap();
    assert!(completion < 3000, "the abandoned generation went on ({completion} tokens, {:?})", start.elapsed());

    drop(slow);
    assert!(healthy(&server));

    // SIGINT: a graceful shutdown, exit status 0.
    let mut server = server;
    Command::new("kill").args(["-INT", &server.child.id().to_string()]).status().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the server did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Flash-MoE's spelling, `floe --serve PORT`, starts the same server.
#[test]
fn the_seeds_serve_flag_starts_the_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(["--serve", &port.to_string(), "--backend", "cpu"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = up(Server { child, port });
    let r = post(&server, "/v1/completions", r#"{"prompt": "Once", "max_tokens": 3}"#);
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("text_completion"), "{r}");
}

/// The next turn of a conversation continues from the state kept at the end of the previous one: the same answer
/// as prefilling everything (a server that keeps no states), with the kept prompt tokens counted as reused.
#[test]
fn the_next_turn_reuses_the_kept_prefix() {
    let turn = |server: &Server, messages: &str| -> (String, u64) {
        let body = format!(r#"{{"messages": {messages}, "max_tokens": 6, "temperature": 0}}"#);
        let r = post(server, "/v1/chat/completions", &body);
        let json: serde_json::Value = serde_json::from_str(&r[r.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        let metrics = request(server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let reused = metrics.lines().find_map(|l| l.strip_prefix("floe_prompt_tokens_reused_total ")).unwrap().trim().parse().unwrap();
        (json["choices"][0]["message"].to_string(), reused)
    };
    let first = r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]"#;
    let second = r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}]"#;
    let keeping = start();
    let (_, reused) = turn(&keeping, first);
    assert_eq!(reused, 0);
    let (answer, reused) = turn(&keeping, second);
    assert!(reused > 5, "the first turn's prompt was reused ({reused} tokens)");
    let forgetting = start_with(&["--keep-states", "0"]);
    let (fresh, reused) = turn(&forgetting, second);
    assert_eq!(reused, 0);
    assert_eq!(answer, fresh, "continuing from a kept state answers as prefilling everything does");
}

/// A full queue answers 429 at once, and the server goes on.
#[test]
fn a_full_queue_answers_429() {
    let server = start_with(&["--queue-limit", "1"]);
    let busy = open_stream(&server, 3000);
    let r = post(&server, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#);
    assert!(r.starts_with("HTTP/1.1 429") && r.contains("rate_limit_error"), "{r}");
    drop(busy);
    let start = Instant::now();
    loop {
        let r = post(&server, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#);
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the queue did not drain: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
