//! A capture on another host: tcpdump on the guest's tap writes a pcap stream to its standard
//! output, one packet at a time (`-U`), which comes back over the host's SSH connection and is
//! decoded here by vxlab's own decoder, as a local capture is. The command's input stays open
//! as long as the capture is: dropping it closes the input, and that stops tcpdump on the host
//! at once, however quiet its link ([`super::command::HostCommand::Capture`]).

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::command::HostCommand;
use super::HostLink;
use crate::host::Frames;
use crate::packet::{Frame, PcapStream};

/// How long tcpdump may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Frames from tcpdump on another host; dropped, it stops that tcpdump.
pub struct RemoteCapture {
    /// The command's output, and its input, which nothing is written to: its end of file,
    /// when this is dropped, is what ends the command on the host.
    out: UnixStream,
    pcap: PcapStream,
    buf: Vec<u8>,
}

impl RemoteCapture {
    /// Starts tcpdump on `link` of `host` and returns once it listens, so nothing sent after
    /// this returns is missed; reads wait at most `poll`.
    pub fn start(host: &HostLink, link: &str, poll: Duration) -> io::Result<RemoteCapture> {
        let cmd = HostCommand::Capture {
            link: link.to_string(),
        };
        let opened = host
            .jump()
            .start(&cmd.line())
            .map_err(|e| io::Error::other(format!("host {}: {e}", host.name())))?;
        let stderr = opened
            .stderr
            .ok_or_else(|| io::Error::other("no error stream"))?;
        // tcpdump says it listens on its error stream once the capture is open; its packets
        // only come after that. The rest of what it says is read and dropped.
        let (said, heard) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            let mut told = false;
            let mut text = String::new();
            for line in lines.by_ref().map_while(Result::ok) {
                if !told {
                    if line.contains("listening on") {
                        told = true;
                        let _ = said.send(Ok(()));
                    } else {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
            }
            if !told {
                let _ = said.send(Err(text));
            }
        });
        match heard.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(text)) => {
                return Err(io::Error::other(format!(
                    "host {}: `{cmd}` did not start: {}",
                    host.name(),
                    text.trim()
                )))
            }
            Err(_) => {
                return Err(io::Error::other(format!(
                    "host {}: `{cmd}` did not start listening in {} s",
                    host.name(),
                    START_TIMEOUT.as_secs()
                )))
            }
        }
        opened.stream.set_read_timeout(Some(poll))?;
        Ok(RemoteCapture {
            out: opened.stream,
            pcap: PcapStream::default(),
            buf: vec![0u8; 64 * 1024],
        })
    }
}

impl Frames for RemoteCapture {
    fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        let deadline = Instant::now() + self.out.read_timeout()?.unwrap_or_default();
        loop {
            if let Some(f) = self.pcap.next_frame()? {
                return Ok(Some(f));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            match self.out.read(&mut self.buf) {
                // tcpdump ended (its time limit, its link gone): nothing more will come.
                Ok(0) => {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    return Ok(None);
                }
                Ok(n) => self.pcap.push(&self.buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}
