//! A browser terminal: xterm.js over a websocket to the student's shell in a guest (the same
//! shell as `vxlab shell`, see [`crate::terminal::shell`]).
//!
//! The browser sends JSON text messages, `{"type":"input","data":"..."}` and
//! `{"type":"resize","cols":C,"rows":R}`; the server sends the terminal's output as binary
//! messages. Anything else closes that terminal (and is logged); the server and every other
//! terminal go on. Each token may hold a few terminals at once in each lab, and a terminal with
//! no traffic either way for the idle time is closed. A terminal lives as long as the run of
//! the lab it was opened in: when the lab goes down, or is brought up again under its name,
//! the terminal says so and closes, and its shell ends.
//!
//! The browser sends a paste in pieces well below the largest message the server takes
//! ([`MAX_MESSAGE`](super::routes)); a message above it closes the terminal, and is logged.

use std::io::{Read, Write};
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::live::LabView;
use super::{Class, Slot};
use crate::plan::GuestPlan;
use crate::terminal::{self, ProcessControl, WinSize};

/// Websocket close code for a message that breaks the protocol (RFC 6455: policy violation).
const POLICY_VIOLATION: u16 = 1008;
/// Close code when the terminal was idle too long or its shell ended (normal closure).
const NORMAL: u16 = 1000;
/// Close code when the link holds as many terminals as it may (RFC 6455 registry: try again
/// later).
const TRY_AGAIN_LATER: u16 = 1013;

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

/// Connects `socket` to a new shell in guest `g` of the lab `view` follows, until either
/// ends or the lab does.
pub async fn run(
    class: Arc<Class>,
    mut socket: WebSocket,
    mut view: watch::Receiver<Arc<LabView>>,
    g: GuestPlan,
    slot: Option<Slot>,
) {
    let lab = view.borrow().plan.lab.clone();
    // Refused in the terminal itself, so that the page can say why (a refused handshake
    // tells a page nothing).
    let Some(slot) = slot else {
        let limit = class.options.terminals_per_token;
        let _ = socket
            .send(Message::Binary(
                format!(
                    "[too many terminals open for this link in lab {lab} ({limit}): close one, \
                     then press Terminal]\r\n"
                )
                .into(),
            ))
            .await;
        let _ = socket
            .send(close(TRY_AGAIN_LATER, "too many terminals"))
            .await;
        return;
    };
    // Counted before the shell starts: a deletion seen later is of the namespace it is in.
    let born = view.borrow().times_lost(&g.name);
    let backend = class.backend.clone();
    let (l, guest) = (lab.clone(), g.clone());
    let started = tokio::task::spawn_blocking(move || {
        let st = backend.state().read(&l)?;
        let tools = st.tools.get(&guest.name).cloned().unwrap_or_default();
        let launch = terminal::shell(&l, &st.made, &guest, &tools, WinSize::DEFAULT);
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
    // Traffic either way keeps the terminal open; changes in the lab do not.
    let mut last_traffic = tokio::time::Instant::now();
    let why = loop {
        tokio::select! {
            msg = socket.recv() => {
                last_traffic = tokio::time::Instant::now();
                match msg {
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
                    Some(Ok(Message::Close(_))) | None => break None,
                    // The browser went away.
                    Some(Err(e)) if connection_lost(&e) => break None,
                    // A message too big, or a broken frame: said in the log, not only dropped.
                    Some(Err(e)) => break Some(e.to_string()),
                }
            }
            out = out_rx.recv() => {
                last_traffic = tokio::time::Instant::now();
                match out {
                    Some(bytes) => {
                        if socket.send(Message::Binary(bytes.into())).await.is_err() {
                            break None;
                        }
                    }
                    None => {
                        let _ = socket.send(close(NORMAL, "the shell ended")).await;
                        break None;
                    }
                }
            }
            gone = view.changed() => if gone.is_err() {
                let _ = socket
                    .send(Message::Binary(
                        format!("\r\n[lab {lab} went down, or was brought up again: this terminal is closed]\r\n").into(),
                    ))
                    .await;
                let _ = socket.send(close(NORMAL, "the lab went down")).await;
                break None;
            } else if view.borrow().times_lost(&g.name) != born {
                // Its shell alone would keep the deleted namespace, devices and all, alive
                // beside the one a reset makes.
                let n = &g.name;
                let said = match view.borrow().busy.clone() {
                    // Who, on the host, is the instructor's business (the grid says it).
                    Some(_) => format!("{n} was taken down by vxlab: this terminal is closed"),
                    None => format!(
                        "{n}'s namespace was deleted: this terminal is closed; Reset makes {n} anew"
                    ),
                };
                let _ = socket
                    .send(Message::Binary(format!("\r\n[{said}]\r\n").into()))
                    .await;
                let _ = socket.send(close(NORMAL, "the guest was deleted")).await;
                break None;
            },
            _ = tokio::time::sleep_until(last_traffic + idle) => {
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

/// Whether a websocket error is the connection's end rather than something the browser sent.
fn connection_lost(e: &axum::Error) -> bool {
    std::iter::successors(std::error::Error::source(e), |c| c.source())
        .any(|c| c.is::<std::io::Error>())
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
