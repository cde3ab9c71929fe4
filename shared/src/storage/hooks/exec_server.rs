//! A small real server speaking the Kubernetes exec protocol, for the hook tests: HTTP/1.1 on
//! loopback, upgraded to a websocket with the `v5.channel.k8s.io` (or `v4`) subprotocol, each
//! frame a channel byte and data (1 stdout, 2 stderr, 3 the exit `Status` as JSON), as the
//! kubelet's streaming server sends them through the API server. Each connection plays the next
//! script entry; the request URIs are recorded for the tests to assert the exact command.

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
                let callback = move |req: &Request, mut resp: Response| {
                    let offered = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    assert!(offered.contains(protocol), "offered {offered:?}");
                    log.lock().unwrap().push(req.uri().to_string());
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
