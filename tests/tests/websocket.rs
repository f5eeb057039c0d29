//! WebSockets through a reload of a Node app, unchanged: the preload closes each upgraded
//! connection of a draining worker with close code 1012 (service restart) once the drain's idle
//! grace is over, so the client reconnects, to a new worker, at once, and the old worker exits
//! then rather than at its kill timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use e2e::Supervisor;

/// A plain `http` server that accepts WebSocket upgrades itself (no npm package): it greets each
/// client with its pid, and answers a client's close frame by closing.
const APP: &str = r#"
const http = require("http");
const crypto = require("crypto");
const server = http.createServer((req, res) => res.end(`pid=${process.pid}\n`));
server.on("upgrade", (req, socket) => {
  const accept = crypto
    .createHash("sha1")
    .update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    .digest("base64");
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`
  );
  const hello = Buffer.from(`hello from pid=${process.pid}`);
  socket.write(Buffer.concat([Buffer.from([0x81, hello.length]), hello]));
  socket.on("data", (d) => {
    if ((d[0] & 0x0f) === 8) socket.end();
  });
  socket.on("error", () => {});
});
server.listen(process.env.PORT || 3000);
"#;

/// Opens a WebSocket to `addr`; returns the stream and the pid in its greeting.
fn connect(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let greeting = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed during the handshake: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(at) = text.find("hello from pid=") {
            let pid: String = text[at + 15..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if !pid.is_empty() && text[at + 15 + pid.len()..].is_empty() {
                break pid;
            }
        }
    };
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
    (s, greeting)
}

/// Reads frames until a close frame; returns its code.
fn close_code(s: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        if let Some(at) = got.iter().position(|b| *b == 0x88)
            && got.len() >= at + 4
        {
            return u16::from_be_bytes([got[at + 2], got[at + 3]]);
        }
        let n = s
            .read(&mut buf)
            .expect("a close frame before the read timeout");
        assert!(n > 0, "closed without a close frame: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_reload_closes_websockets_with_1012_and_the_client_reconnects_to_the_new_worker() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("ws.cjs");
    std::fs::write(&app, APP).unwrap();
    let body = format!(
        "[[app]]\nname = \"ws\"\ncommand = \"node\"\nargs = [\"{}\"]\ninstances = 2\n\
         ready_timeout = \"10s\"\nkill_timeout = \"20s\"\n",
        app.display()
    );
    let s = Supervisor::start(&body, 2).unwrap();
    let addr = s.addr().unwrap();
    let mut clients: Vec<(TcpStream, String)> = (0..4).map(|_| connect(addr)).collect();
    let old: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();

    let started = Instant::now();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok, "{text}");
    for (client, pid) in &mut clients {
        assert_eq!(close_code(client), 1012, "client of pid {pid}");
        // The client's own close frame (masked, as a client sends it), then the server closes.
        client
            .write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2])
            .unwrap();
    }
    // Every old worker is gone long before its 20 s kill timeout.
    e2e::wait_for(Duration::from_secs(8), "the old workers to exit", || {
        old.iter().all(|p| !e2e::alive(*p)).then_some(())
    })
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    let log = s.log_text();
    assert!(
        log.contains("WebSocket(s) closed with 1012, service restart"),
        "{log}"
    );
    assert!(!log.contains("drain deadline"), "{log}");
    // Reconnected: to a worker of the new generation.
    let new: Vec<String> = s
        .ready_workers()
        .unwrap()
        .iter()
        .map(|w| w.pid.to_string())
        .collect();
    let (_, pid) = connect(addr);
    assert!(new.contains(&pid), "{pid} is not one of {new:?}");
}
