//! A small real server speaking the Kubernetes exec protocol, for the hook tests: HTTP/1.1 on
//! loopback, upgraded to a websocket with the `v5.channel.k8s.io` (or `v4`) subprotocol, each
//! frame a channel byte and data (1 stdout, 2 stderr, 3 the exit `Status` as JSON), as the
//! kubelet's streaming server sends them through the API server. Each connection plays the next
//! script entry; the request URIs are recorded for the tests to assert the exact command.
//! [`Script::Spawn`] really runs the requested command as a local process, as a kubelet's
//! streaming server does on one machine.

// The callback's error type is tungstenite's, not ours.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt as _;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What one exec does.
#[derive(Debug, Clone)]
pub enum Script {
    /// Prints, then exits with this code (0: `Success`; else `NonZeroExitCode`).
    Exit(i32),
    /// Never answers (until the client gives up).
    Hang,
    /// Runs the request's `command` as a local process: channel 0 to its stdin (closed by the
    /// v5 close frame `[255, 0]` or when the connection ends, as the kubelet does; the process
    /// is never killed), its stdout and stderr to 1 and 2, then its exit status on 3.
    Spawn,
}

pub struct ExecServer {
    pub url: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ExecServer {
    pub async fn start(protocol: &'static str, scripts: Vec<Script>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            for script in scripts {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                let uri = Arc::new(Mutex::new(String::new()));
                let this_uri = Arc::clone(&uri);
                let callback = move |req: &Request, mut resp: Response| {
                    let offered = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    assert!(offered.contains(protocol), "offered {offered:?}");
                    log.lock().unwrap().push(req.uri().to_string());
                    *this_uri.lock().unwrap() = req.uri().to_string();
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", protocol.parse().unwrap());
                    Ok(resp)
                };
                // Each exec on its own task: a hanging one does not hold up the next.
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback)
                        .await
                        .unwrap();
                    match script {
                        Script::Exit(code) => {
                            let frame = |ch: u8, data: &[u8]| {
                                let mut v = vec![ch];
                                v.extend_from_slice(data);
                                Message::binary(v)
                            };
                            ws.send(frame(1, b"hook says hello\n")).await.unwrap();
                            if code != 0 {
                                ws.send(frame(2, b"fsfreeze: /data: Device or resource busy\n"))
                                    .await
                                    .unwrap();
                            }
                            let status = if code == 0 {
                                json!({"metadata": {}, "status": "Success"})
                            } else {
                                json!({"metadata": {}, "status": "Failure",
                                    "message": format!("command terminated with non-zero exit code: error executing command [...], exit code {code}"),
                                    "reason": "NonZeroExitCode",
                                    "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
                            };
                            ws.send(frame(3, &serde_json::to_vec(&status).unwrap()))
                                .await
                                .unwrap();
                            let _ = ws.close(None).await;
                        }
                        Script::Hang => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Script::Spawn => {
                            let uri = uri.lock().unwrap().clone();
                            spawn(ws, &command(&uri)).await;
                        }
                    }
                });
            }
        });
        Self { url, seen, task }
    }

    /// A client of this server, default namespace `prod`.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.default_namespace = "prod".into();
        kube::Client::try_from(config).unwrap()
    }

    /// The request URIs seen, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ExecServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `command` parameters of an exec request's URI, decoded.
fn command(uri: &str) -> Vec<String> {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("command="))
        .map(decode)
        .collect()
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn frame(ch: u8, data: &[u8]) -> Message {
    let mut v = vec![ch];
    v.extend_from_slice(data);
    Message::binary(v)
}

/// Runs `argv` with the exec's streams (see [`Script::Spawn`]).
async fn spawn(mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, argv: &[String]) {
    use futures_util::StreamExt as _;
    use std::process::Stdio;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure",
                "message": format!("exec: {:?}: {e}", argv[0]), "reason": "InternalError"});
            let _ = ws
                .send(frame(3, &serde_json::to_vec(&status).unwrap()))
                .await;
            let _ = ws.close(None).await;
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    for (ch, reader) in [
        (
            1u8,
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ),
        (
            2u8,
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ),
    ] {
        let tx = tx.clone();
        let mut reader = reader.unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 || tx.send((ch, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut stdin = child.stdin.take();
    let mut open = true;
    loop {
        tokio::select! {
            msg = ws.next(), if open => match msg {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => {
                    if let Some(i) = stdin.as_mut()
                        && i.write_all(&b[1..]).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(Ok(Message::Binary(b))) if b.as_ref() == [255, 0] => stdin = None,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    stdin = None;
                    open = false;
                }
                Some(Ok(_)) => {}
            },
            out = rx.recv() => match out {
                Some((ch, data)) if open => {
                    if ws.send(frame(ch, &data)).await.is_err() {
                        open = false;
                        stdin = None;
                    }
                }
                Some(_) => {}
                // Both streams ended.
                None => break,
            },
        }
    }
    drop(stdin);
    let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
    if open {
        let status = if code == 0 {
            json!({"metadata": {}, "status": "Success"})
        } else {
            json!({"metadata": {}, "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit code {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
        };
        let _ = ws
            .send(frame(3, &serde_json::to_vec(&status).unwrap()))
            .await;
        let _ = ws.close(None).await;
    }
}
