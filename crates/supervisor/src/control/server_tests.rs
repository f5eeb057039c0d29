//! The control socket server's tests: answers, limits, evictions, floods.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(5);

/// A served control socket whose "daemon" answers every request with `Stopped`.
fn serve(limits: Limits) -> (tempfile::TempDir, PathBuf, ControlSocket) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let mut socket = ControlSocket::bind(&path, Path::new("s.toml")).unwrap();
    let (tx, mut rx) = mpsc::channel::<ControlRequest>(8);
    socket.serve_with(tx, limits);
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let _ = r.reply.send(Response::Stopped);
        }
    });
    (dir, path, socket)
}

async fn raw(conn: &mut protocol::Conn, bytes: &[u8]) -> Option<Response> {
    conn.send(bytes::Bytes::copy_from_slice(bytes))
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, protocol::recv::<Response>(conn))
        .await
        .expect("no answer in time")
        .unwrap()
}

fn error_text(r: Option<Response>) -> String {
    match r {
        Some(Response::Error { message }) => message,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_and_malformed_requests_get_an_error_answer() {
    let (_d, path, _s) = serve(Limits::default());
    let mut conn = protocol::framed(UnixStream::connect(&path).await.unwrap());
    let e = error_text(raw(&mut conn, br#"{"request":"resize","n":3}"#).await);
    assert!(
        e.contains("malformed request") && e.contains("resize"),
        "{e}"
    );
    let e = error_text(raw(&mut conn, b"not json").await);
    assert!(e.contains("malformed request"), "{e}");
    // The connection still serves a good request afterwards.
    let ok = raw(&mut conn, br#"{"request":"status"}"#).await;
    assert!(matches!(ok, Some(Response::Stopped)), "{ok:?}");
}

#[tokio::test]
async fn oversized_frame_is_refused_from_its_length_prefix() {
    let (_d, path, _s) = serve(Limits::default());
    let mut stream = UnixStream::connect(&path).await.unwrap();
    // A 16 MiB length prefix and nothing else: answered at once, nothing allocated for it.
    stream
        .write_all(&(16u32 << 20).to_be_bytes())
        .await
        .unwrap();
    let mut conn = protocol::framed(stream);
    let answer = tokio::time::timeout(DEADLINE, protocol::recv::<Response>(&mut conn))
        .await
        .expect("no answer in time")
        .unwrap();
    let e = error_text(answer);
    assert!(e.contains("longer than 65536 bytes"), "{e}");
    let end = tokio::time::timeout(DEADLINE, protocol::recv::<Response>(&mut conn))
        .await
        .expect("connection not closed");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn answers_given_are_waited_for_until_written_and_waiting_clients_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let mut socket = ControlSocket::bind(&path, Path::new("s.toml")).unwrap();
    let (tx, mut rx) = mpsc::channel::<ControlRequest>(8);
    socket.serve(tx);
    // Nothing given: nothing to wait for.
    assert!(socket.answers_written(Duration::from_millis(10)).await);
    // One client waits for an answer the daemon never gives (an `upgrade` request).
    let mut waiting = protocol::framed(UnixStream::connect(&path).await.unwrap());
    protocol::send(&mut waiting, &Request::Upgrade { binary: None })
        .await
        .unwrap();
    let _held = rx.recv().await.unwrap();
    assert!(socket.answers_written(Duration::from_millis(10)).await);
    // Another gets its answer: once written, the wait ends and the client has it.
    let mut answered = protocol::framed(UnixStream::connect(&path).await.unwrap());
    protocol::send(&mut answered, &Request::Status { app: None })
        .await
        .unwrap();
    let req = rx.recv().await.unwrap();
    req.reply.send(Response::Stopped).unwrap();
    assert!(socket.answers_written(DEADLINE).await);
    let got = protocol::recv::<Response>(&mut answered).await.unwrap();
    assert!(matches!(got, Some(Response::Stopped)), "{got:?}");
    // An answer to a client that left does not count.
    let mut gone = protocol::framed(UnixStream::connect(&path).await.unwrap());
    protocol::send(&mut gone, &Request::Status { app: None })
        .await
        .unwrap();
    let req = rx.recv().await.unwrap();
    drop(gone);
    let _ = req.reply.send(Response::Stopped);
    assert!(socket.answers_written(DEADLINE).await);
}

#[tokio::test]
async fn idle_connection_is_dropped() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (_d, path, _s) = serve(limits);
    let mut stream = UnixStream::connect(&path).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .expect("idle connection still open")
        .unwrap();
    assert_eq!(n, 0, "closed by the server");
}

#[tokio::test]
async fn a_connection_over_the_cap_takes_the_place_of_the_longest_idle_one() {
    let limits = Limits {
        max_connections: 2,
        idle_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (_d, path, _s) = serve(limits);
    let mut idle = vec![];
    for _ in 0..2 {
        let mut c = protocol::framed(UnixStream::connect(&path).await.unwrap());
        // Answered, so the server has taken this connection (and holds its place).
        assert!(raw(&mut c, br#"{"request":"status"}"#).await.is_some());
        idle.push(c);
    }
    // A third one is served at once.
    let mut third = protocol::framed(UnixStream::connect(&path).await.unwrap());
    let answer = raw(&mut third, br#"{"request":"status"}"#).await;
    assert!(matches!(answer, Some(Response::Stopped)), "{answer:?}");
    // In place of the first, idle the longest: closed by the server; the second still served.
    let end = tokio::time::timeout(DEADLINE, protocol::recv::<Response>(&mut idle[0]))
        .await
        .expect("the longest idle connection is closed");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let still = raw(&mut idle[1], br#"{"request":"status"}"#).await;
    assert!(matches!(still, Some(Response::Stopped)), "{still:?}");
}

#[tokio::test]
async fn connections_waiting_for_an_answer_keep_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let mut socket = ControlSocket::bind(&path, Path::new("s.toml")).unwrap();
    let (tx, mut rx) = mpsc::channel::<ControlRequest>(8);
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    socket.serve_with(tx, limits);
    // Two requests the daemon holds: both connections are busy.
    let mut held = vec![];
    let mut waiting = vec![];
    for _ in 0..2 {
        let mut c = protocol::framed(UnixStream::connect(&path).await.unwrap());
        protocol::send(&mut c, &Request::Stop).await.unwrap();
        held.push(rx.recv().await.unwrap());
        waiting.push(c);
    }
    let mut third = protocol::framed(UnixStream::connect(&path).await.unwrap());
    protocol::send(&mut third, &Request::Status { app: None })
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(early.is_err(), "served over the cap: {early:?}");
    // One is answered: its place goes to the third (after it, it waits idle).
    held.pop().unwrap().reply.send(Response::Stopped).unwrap();
    let req = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("the third is served once a place is free")
        .unwrap();
    req.reply.send(Response::Stopped).unwrap();
    let got = protocol::recv::<Response>(&mut third).await.unwrap();
    assert!(matches!(got, Some(Response::Stopped)), "{got:?}");
    // The one still waiting was never closed.
    held.pop().unwrap().reply.send(Response::Stopped).unwrap();
    let got = protocol::recv::<Response>(&mut waiting[0]).await.unwrap();
    assert!(matches!(got, Some(Response::Stopped)), "{got:?}");
}

#[tokio::test]
async fn a_flood_of_idle_connections_does_not_delay_an_answer() {
    let (_d, path, _s) = serve(Limits::default());
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.push(UnixStream::connect(&path).await.unwrap());
    }
    let started = std::time::Instant::now();
    let mut c = protocol::framed(UnixStream::connect(&path).await.unwrap());
    let answer = raw(&mut c, br#"{"request":"status"}"#).await;
    assert!(matches!(answer, Some(Response::Stopped)), "{answer:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
}
