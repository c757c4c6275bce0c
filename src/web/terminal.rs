//! A browser terminal: xterm.js over a websocket to the student's shell in a guest (the same
//! shell as `vxlab shell`, see [`crate::terminal::shell`]).
//!
//! The browser sends JSON text messages, `{"type":"input","data":"..."}` and
//! `{"type":"resize","cols":C,"rows":R}`; the server sends the terminal's output as binary
//! messages. Anything else closes that terminal (and is logged); the server and every other
//! terminal go on. Each token may hold a few terminals at once, and a terminal with no traffic
//! either way for the idle time is closed.

use std::io::{Read, Write};
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::Class;
use crate::plan::GuestPlan;
use crate::terminal::{self, ProcessControl, WinSize};

/// Websocket close code for a message that breaks the protocol (RFC 6455: policy violation).
const POLICY_VIOLATION: u16 = 1008;
/// Close code when the terminal was idle too long or its shell ended (normal closure).
const NORMAL: u16 = 1000;

/// A message from the browser.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum FromBrowser {
    /// Keys typed or pasted.
    Input {
        /// The text.
        data: String,
    },
    /// The terminal's new size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// One of a token's terminals; the count goes down when it is dropped.
pub struct Slot {
    class: Arc<Class>,
    token: String,
}

impl Slot {
    /// A terminal slot for `token`, unless it holds as many as it may.
    pub fn take(class: &Arc<Class>, token: &str) -> Option<Slot> {
        let mut open = class.terminals.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(token.to_string()).or_insert(0);
        if *n >= class.options.terminals_per_token {
            return None;
        }
        *n += 1;
        Some(Slot {
            class: class.clone(),
            token: token.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .class
            .terminals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.token);
            }
        }
    }
}

/// Connects `socket` to a new shell in guest `g` of lab `lab` until either ends.
pub async fn run(class: Arc<Class>, mut socket: WebSocket, lab: String, g: GuestPlan, slot: Slot) {
    let backend = class.backend.clone();
    let (l, guest) = (lab.clone(), g.clone());
    let started = tokio::task::spawn_blocking(move || {
        let tools = backend.tools(&l).remove(&guest.name).unwrap_or_default();
        let launch = terminal::shell(&l, &guest, &tools, WinSize::DEFAULT);
        backend
            .driver(&l)?
            .spawn(&guest, &launch)
            .map_err(anyhow::Error::from)
    })
    .await;
    let process = match started {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let _ = socket
                .send(Message::Binary(
                    format!("cannot open a shell: {e:#}\r\n").into(),
                ))
                .await;
            let _ = socket.send(close(NORMAL, "no shell")).await;
            return;
        }
        Err(_) => return,
    };
    let control: Arc<dyn ProcessControl> = Arc::from(process.control);

    // Output: a thread reads the terminal and hands the pieces over.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let mut stdout = process.stdout;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16384];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    // Input: a thread writes what the browser typed.
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut stdin = process.stdin;
    std::thread::spawn(move || {
        for bytes in in_rx {
            if stdin.write_all(&bytes).and_then(|_| stdin.flush()).is_err() {
                break;
            }
        }
    });

    let idle = class.options.terminal_idle;
    let why = loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<FromBrowser>(&text) {
                    Ok(FromBrowser::Input { data }) => {
                        if in_tx.send(data.into_bytes()).is_err() {
                            break None;
                        }
                    }
                    Ok(FromBrowser::Resize { cols, rows }) => {
                        let _ = control.resize(WinSize { cols, rows });
                    }
                    Err(e) => break Some(format!("malformed message: {e}")),
                },
                Some(Ok(Message::Binary(_))) => break Some("a binary message".into()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
            },
            out = out_rx.recv() => match out {
                Some(bytes) => {
                    if socket.send(Message::Binary(bytes.into())).await.is_err() {
                        break None;
                    }
                }
                None => {
                    let _ = socket.send(close(NORMAL, "the shell ended")).await;
                    break None;
                }
            },
            _ = tokio::time::sleep(idle) => {
                let _ = socket.send(Message::Binary("\r\n[closed after being idle]\r\n".into())).await;
                let _ = socket.send(close(NORMAL, "idle")).await;
                break None;
            }
        }
    };
    if let Some(why) = why {
        eprintln!(
            "vxlab serve: lab {lab}, guest {}: closing a terminal: {why}",
            g.name
        );
        let _ = socket
            .send(close(POLICY_VIOLATION, "malformed message"))
            .await;
    }
    drop(in_tx);
    control.hang_up();
    tokio::task::spawn_blocking(move || {
        let _ = control.wait();
        drop(slot);
    });
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
