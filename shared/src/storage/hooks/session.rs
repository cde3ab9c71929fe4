//! Hooks that hold a session: a lock that lives only as long as the session that took it (MySQL's
//! `FLUSH TABLES WITH READ LOCK`, PostgreSQL's `pg_backup_start` … `pg_backup_stop`) cannot be taken
//! by one exec and released by another. The session form keeps one exec open from the freeze
//! until the snapshots are cut.
//!
//! ```json
//! "hooks": {"pod": "orders-db-0",
//!           "session": {"command": ["sh", "-c", "MYSQL_PWD=\"$MARIADB_ROOT_PASSWORD\" exec mariadb -uroot --batch --unbuffered --skip-reconnect"],
//!                       "freeze": "FLUSH TABLES WITH READ LOCK;", "thaw": "UNLOCK TABLES;"},
//!           "timeoutSeconds": 30}
//! ```
//!
//! In each pod (in name order): one exec of `command` with stdin open; `freeze` and then the
//! marker statement are written to it, and stdout is read until the marker's output appears —
//! the client runs statements in order, so the freeze is then known to be in effect. Then the
//! snapshots are created. Then `thaw` and the marker statement again are written, and the thaw is
//! confirmed by the second marker, proving the session lived (and so held the lock) through the
//! snapshots; stdin is closed and the exit status awaited.
//!
//! Always released: the freeze confirmation and the snapshot creation together are bounded by
//! `timeoutSeconds` (snapshot creation still running then is cut short), the thaw confirmation by
//! `timeoutSeconds` more; whatever happened, the thaw is written and stdin closed, and an
//! unconfirmed session's exec is dropped. A client that exits when its input ends (`mysql`,
//! `mariadb`, `psql`) then closes its connection, and the server releases the session's lock.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, AttachedProcess};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, SimplexStream, WriteHalf};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use super::{B, Hooks, TAIL, exit_reason, shown};
use crate::error::{Error, Result};
use crate::kube::client::kube_error;

/// The output a marker statement prints: this, then its nonce.
pub const MARKER_PREFIX: &str = "snapstage-marker-";
/// The marker statement of MySQL, MariaDB and PostgreSQL: the prefix and the nonce apart, so an
/// echo of the statement itself is never taken for its output.
pub const DEFAULT_MARKER: &str = "SELECT CONCAT('snapstage-marker-', '{nonce}');";
/// A statement's longest accepted length.
const MAX_STATEMENT: usize = 4096;
/// Bytes of stderr shown in an error.
const ERR_TAIL: usize = 512;

/// `hooks.session`: one session held open from the freeze until the snapshots are cut.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionHook {
    /// The client to run, reading statements on stdin, e.g.
    /// `["mariadb", "--batch", "--unbuffered", "--skip-reconnect"]`. It must stop at the first
    /// failed statement (the mysql clients do in batch mode; psql with `-v ON_ERROR_STOP=1`) and
    /// exit when its stdin ends.
    pub command: Vec<String>,
    /// Takes the lock, e.g. `FLUSH TABLES WITH READ LOCK;` (with its terminator).
    pub freeze: String,
    /// Releases it, e.g. `UNLOCK TABLES;`.
    pub thaw: String,
    /// A statement that prints [`MARKER_PREFIX`] followed by `{nonce}`; default
    /// [`DEFAULT_MARKER`] (MySQL, MariaDB, PostgreSQL).
    #[serde(default)]
    pub marker: Option<String>,
}

impl SessionHook {
    pub fn validate(&self) -> Result<()> {
        if self.command.first().is_none_or(|c| c.trim().is_empty()) {
            return Err(Error::parameter(
                "hooks.session.command",
                "missing: the client to run, as a list whose first element is the program, e.g. [\"mariadb\", \"--batch\", \"--unbuffered\", \"--skip-reconnect\"]",
            ));
        }
        for (field, statement, example) in [
            (
                "hooks.session.freeze",
                &self.freeze,
                "FLUSH TABLES WITH READ LOCK;",
            ),
            ("hooks.session.thaw", &self.thaw, "UNLOCK TABLES;"),
        ] {
            if statement.trim().is_empty() {
                return Err(Error::parameter(
                    field,
                    format!("missing: a statement with its terminator, e.g. {example:?}"),
                ));
            }
            if statement.len() > MAX_STATEMENT {
                return Err(Error::parameter(
                    field,
                    format!("at most {MAX_STATEMENT} bytes"),
                ));
            }
        }
        if let Some(m) = &self.marker
            && (!m.contains("{nonce}") || m.len() > MAX_STATEMENT)
        {
            return Err(Error::parameter(
                "hooks.session.marker",
                format!(
                    "expected a statement that prints {MARKER_PREFIX:?} followed by {{nonce}}, e.g. {DEFAULT_MARKER:?}, got {m:?}"
                ),
            ));
        }
        Ok(())
    }

    /// The marker statement for a fresh nonce, and the output that confirms it ran.
    fn marker(&self) -> Result<(String, String)> {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Internal("no randomness for the session hook's marker".into()))?;
        let nonce = hex::encode(bytes);
        let statement = self
            .marker
            .as_deref()
            .unwrap_or(DEFAULT_MARKER)
            .replace("{nonce}", &nonce);
        Ok((statement, format!("{MARKER_PREFIX}{nonce}")))
    }
}

/// What a stream carried so far.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// The last awaited marker that appeared.
    marked: Option<String>,
    /// The stream ended (the session's client exited, or the exec connection ended).
    ended: bool,
    /// Its last bytes.
    tail: Vec<u8>,
}

/// Drains `reader` (an exec's buffers are small: an unread stream would stall the session),
/// keeping its tail and watching for the marker `awaited` holds.
fn watch_stream(
    reader: Option<ReadHalf<SimplexStream>>,
    awaited: watch::Receiver<String>,
) -> watch::Receiver<Seen> {
    let (tx, rx) = watch::channel(Seen::default());
    tokio::spawn(async move {
        if let Some(mut r) = reader {
            let mut window: Vec<u8> = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        window.extend_from_slice(&buf[..n]);
                        let marker = awaited.borrow().clone();
                        let found = !marker.is_empty()
                            && window.windows(marker.len()).any(|w| w == marker.as_bytes());
                        if found {
                            window.clear();
                        } else if window.len() > TAIL {
                            window.drain(..window.len() - TAIL);
                        }
                        tx.send_modify(|s| {
                            if found {
                                s.marked = Some(marker);
                            }
                            s.tail.extend_from_slice(&buf[..n]);
                            if s.tail.len() > TAIL {
                                s.tail.drain(..s.tail.len() - TAIL);
                            }
                        });
                    }
                }
            }
        }
        tx.send_modify(|s| s.ended = true);
    });
    rx
}

type StatusFuture = Pin<Box<dyn Future<Output = Option<Status>> + Send>>;

/// One open session.
struct Session {
    pod: String,
    proc: Option<AttachedProcess>,
    stdin: Option<WriteHalf<SimplexStream>>,
    status: Option<StatusFuture>,
    /// The marker output the next wait is for.
    awaited: watch::Sender<String>,
    out: watch::Receiver<Seen>,
    err: watch::Receiver<Seen>,
}

/// How a wait for a marker ended.
enum Marked {
    Yes,
    /// The session ended first.
    Ended,
    /// Not by the deadline.
    Timeout,
    /// The statements could not be written: why.
    NotSent(String),
}

/// How a session's release went.
enum Released {
    /// The thaw's marker came back.
    Confirmed,
    /// The session had ended before the thaw (so had its connection, and its lock): why.
    Ended(String),
    /// Neither, within the bound (or why not, if known). The exec was dropped.
    Unconfirmed(Option<String>),
}

impl Session {
    /// Writes `statement` and a fresh marker statement (at most until `deadline`): the output
    /// to wait for, or why it was not written.
    async fn send(
        &mut self,
        statement: &str,
        spec: &SessionHook,
        deadline: Instant,
    ) -> Result<std::result::Result<String, String>> {
        let (marker, awaited) = spec.marker()?;
        self.awaited.send_replace(awaited.clone());
        let Some(stdin) = self.stdin.as_mut() else {
            return Ok(Err("its input is already closed".into()));
        };
        let text = format!("{statement}\n{marker}\n");
        let write = async {
            stdin.write_all(text.as_bytes()).await?;
            stdin.flush().await
        };
        Ok(match timeout_at(deadline, write).await {
            Ok(Ok(())) => Ok(awaited),
            Ok(Err(e)) => Err(format!("writing to it failed: {e}")),
            Err(_) => Err("writing to it did not finish in time".into()),
        })
    }

    /// Waits (at most until `deadline`) for `awaited` in stdout, or the session's end.
    async fn confirm(&mut self, awaited: &str, deadline: Instant) -> Marked {
        let wait = self
            .out
            .wait_for(|s| s.marked.as_deref() == Some(awaited) || s.ended);
        match timeout_at(deadline, wait).await {
            Ok(Ok(seen)) if seen.marked.as_deref() == Some(awaited) => Marked::Yes,
            // Ended (a closed watch: the drain task is gone, so the stream ended too).
            Ok(_) => Marked::Ended,
            Err(_) => Marked::Timeout,
        }
    }

    /// [`Session::send`], then [`Session::confirm`].
    async fn run(
        &mut self,
        statement: &str,
        spec: &SessionHook,
        deadline: Instant,
    ) -> Result<Marked> {
        Ok(match self.send(statement, spec, deadline).await? {
            Ok(awaited) => self.confirm(&awaited, deadline).await,
            Err(why) => Marked::NotSent(why),
        })
    }

    fn ended(&self) -> bool {
        self.out.borrow().ended
    }

    /// Why the session ended: its exit status (waited for at most until `deadline`) and the tail
    /// of its stderr.
    async fn ending(&mut self, deadline: Instant) -> String {
        let status = match self.status.take() {
            Some(s) => timeout_at(deadline, s).await.ok().flatten(),
            None => None,
        };
        let reason = match status {
            Some(s) if s.status.as_deref() == Some("Success") => "exit code 0".to_string(),
            Some(s) => exit_reason(&s),
            None => "no exit status".to_string(),
        };
        let _ = timeout_at(deadline, self.err.wait_for(|s| s.ended)).await;
        // On one line: the step's message is one.
        let err = String::from_utf8_lossy(&self.err.borrow().tail)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let err = match err.char_indices().rev().nth(ERR_TAIL) {
            Some((i, _)) => &err[i..],
            None => &err,
        };
        if err.is_empty() {
            reason
        } else {
            format!("{reason}; stderr: {err}")
        }
    }

    /// Ends the session: closes its stdin (the client exits, closing its connection), waits
    /// for the exit status if the thaw was confirmed, and drops the exec in any case.
    async fn close(mut self, outcome: Released, deadline: Instant) -> (String, Released) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = timeout_at(short(deadline), stdin.shutdown()).await;
        }
        if let Released::Confirmed = outcome {
            let ending = self.ending(short(deadline)).await;
            tracing::info!(pod = %self.pod, ending = %ending, "session hook: thaw confirmed, the lock is released");
        }
        drop(self.proc.take());
        (self.pod, outcome)
    }
}

/// `command` for messages, a password given as `-pSECRET` or `--password=SECRET` left out (the
/// README says to keep it in the container's environment instead).
fn redacted(command: &[String]) -> Vec<String> {
    command
        .iter()
        .map(|a| match a.split_once('=') {
            Some((k, _)) if k == "--password" => format!("{k}=…"),
            _ if a.starts_with("-p") && a.len() > 2 => "-p…".to_string(),
            _ => a.clone(),
        })
        .collect()
}

/// `deadline`, or 5 s from now if sooner: for a session that has already ended.
fn short(deadline: Instant) -> Instant {
    deadline.min(Instant::now() + Duration::from_secs(5))
}

/// Thaws every session and closes it, at most `limit`: every thaw is written before any is
/// awaited. What it came to.
async fn release_all(
    sessions: Vec<Session>,
    spec: &SessionHook,
    namespace: &str,
    limit: Duration,
) -> Release {
    let deadline = Instant::now() + limit;
    let mut sent = Vec::with_capacity(sessions.len());
    for mut s in sessions {
        let awaited = match s.ended() {
            true => Ok(Ok(None)),
            false => s
                .send(&spec.thaw, spec, deadline)
                .await
                .map(|r| r.map(Some)),
        };
        sent.push((s, awaited));
    }
    let mut released = Vec::with_capacity(sent.len());
    for (mut s, awaited) in sent {
        let outcome = match awaited {
            Ok(Ok(Some(awaited))) => match s.confirm(&awaited, deadline).await {
                Marked::Yes => Released::Confirmed,
                Marked::Ended => Released::Ended(s.ending(short(deadline)).await),
                Marked::Timeout => Released::Unconfirmed(None),
                Marked::NotSent(why) => Released::Unconfirmed(Some(why)),
            },
            Ok(Ok(None)) => Released::Ended(s.ending(short(deadline)).await),
            Ok(Err(why)) => Released::Unconfirmed(Some(why)),
            Err(e) => Released::Unconfirmed(Some(e.to_string())),
        };
        released.push(s.close(outcome, deadline).await);
    }
    summarize(&released, namespace, limit)
}

/// What the releases came to.
struct Release {
    /// For the step's message.
    note: String,
    /// Every thaw was confirmed: each session lived, holding its lock, until then.
    confirmed: bool,
}

fn summarize(released: &[(String, Released)], namespace: &str, limit: Duration) -> Release {
    let mut confirmed = Vec::new();
    let mut notes = Vec::new();
    for (pod, r) in released {
        match r {
            Released::Confirmed => confirmed.push(format!("{namespace}/{pod}")),
            Released::Ended(why) => notes.push(format!(
                "the session in pod {namespace}/{pod} ended before its thaw ({why}), and its lock with it — maybe before the snapshots were cut"
            )),
            Released::Unconfirmed(why) => {
                let why = why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default();
                notes.push(format!(
                    "the thaw in pod {namespace}/{pod} was not confirmed within {} s{why}; its exec was closed, which ends a client that exits when its input ends (and with its connection, its lock), but production may still be locked — check it now",
                    limit.as_secs()
                ));
            }
        }
    }
    if !confirmed.is_empty() {
        notes.insert(
            0,
            format!(
                "the lock was released (thaw confirmed in pod {})",
                confirmed.join(", ")
            ),
        );
    }
    Release {
        note: notes.join("; "),
        confirmed: confirmed.len() == released.len(),
    }
}

impl Hooks {
    /// Opens the session in `pod` and confirms its freeze, at most until `deadline`. On failure,
    /// the session (if it was opened) comes back with the error, to be released.
    async fn freeze(
        &self,
        pod: &str,
        spec: &SessionHook,
        deadline: Instant,
    ) -> std::result::Result<Session, (Option<Session>, Error)> {
        let what = format!(
            "session hook {} in pod {}/{pod}",
            shown(&redacted(&spec.command)),
            self.namespace
        );
        let mut ap = AttachParams::default()
            .stdin(true)
            .stdout(true)
            .stderr(true);
        if let Some(c) = &self.params.container {
            ap = ap.container(c.clone());
        }
        let limit = self.params.timeout().as_secs();
        let failed = |message: String| Error::Backend {
            backend: B,
            message,
            source: None,
        };
        let api = self.pods_api();
        let mut proc = match timeout_at(deadline, api.exec(pod, spec.command.clone(), &ap)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err((None, kube_error(&format!("starting the {what}"), e))),
            Err(_) => {
                return Err((
                    None,
                    failed(format!(
                        "starting the {what} did not finish within {limit} s (hooks.timeoutSeconds)"
                    )),
                ));
            }
        };
        let (awaited, awaited_rx) = watch::channel(String::new());
        let mut session = Session {
            pod: pod.to_string(),
            stdin: proc.stdin(),
            status: proc.take_status().map(|s| Box::pin(s) as StatusFuture),
            out: watch_stream(proc.stdout(), awaited_rx),
            err: watch_stream(proc.stderr(), watch::channel(String::new()).1),
            awaited,
            proc: Some(proc),
        };
        match session.run(&spec.freeze, spec, deadline).await {
            Ok(Marked::Yes) => {
                tracing::info!(pod, "session hook: freeze confirmed, the lock is held");
                Ok(session)
            }
            Ok(Marked::Ended) => {
                // Nothing to release: the session, and any lock it took, has ended.
                let why = session.ending(short(deadline)).await;
                Err((
                    None,
                    failed(format!(
                        "the {what} ended before its freeze was confirmed: {why}"
                    )),
                ))
            }
            Ok(Marked::Timeout) => Err((
                Some(session),
                failed(format!(
                    "the freeze of the {what} was not confirmed within {limit} s (hooks.timeoutSeconds)"
                )),
            )),
            Ok(Marked::NotSent(why)) => Err((
                Some(session),
                failed(format!("the freeze of the {what} was not sent: {why}")),
            )),
            Err(e) => Err((Some(session), e)),
        }
    }

    /// The session form of [`Hooks::around`]: the freeze confirmed in every pod, `work`, then
    /// the thaw in every pod — always, bounded as the module says.
    pub(super) async fn around_session<T>(
        &self,
        spec: &SessionHook,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let pods = self.pods().await?;
        let limit = self.params.timeout();
        let deadline = Instant::now() + limit;
        let mut held = Vec::with_capacity(pods.len());
        let mut freeze_failed = None;
        for pod in &pods {
            match self.freeze(pod, spec, deadline).await {
                Ok(s) => held.push(s),
                Err((s, e)) => {
                    held.extend(s);
                    freeze_failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = freeze_failed {
            let note = release_all(held, spec, &self.namespace, limit).await.note;
            let note = match note.is_empty() {
                true => "no snapshot was taken".to_string(),
                false => format!("no snapshot was taken; {note}"),
            };
            return Err(e.noted(&note));
        }
        let result = match timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Backend {
                backend: B,
                message: format!(
                    "creating the snapshots did not finish within {} s (hooks.timeoutSeconds) of the freeze and was cut short to release the lock; a snapshot it started may not be app-consistent",
                    limit.as_secs()
                ),
                source: None,
            }),
        };
        // Only a confirmed thaw proves its session (and so its lock) lived until the snapshots
        // were cut.
        let release = release_all(held, spec, &self.namespace, limit).await;
        match result {
            Ok(v) if release.confirmed => Ok(v),
            Ok(_) => Err(Error::Backend {
                backend: B,
                message: format!(
                    "snapshot(s) created, but they are not known to be app-consistent: {}",
                    release.note
                ),
                source: None,
            }),
            Err(e) => Err(e.noted(&release.note)),
        }
    }
}
