//! Headless Chromium for the class server's tests: `vxlab serve` and chromedriver started on
//! free loopback ports, a WebDriver session, waiting on the page, screenshots.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::Lab;

/// A child process stopped when the test ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets the server hang its terminals up.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The folder of test `test`'s screenshots, under `target/tmp/`.
pub fn out_dir(test: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A free port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `vxlab serve` on a free port; its instructor URL.
pub fn serve(lab: &Lab, extra: &[&str]) -> (Running, String) {
    let mut child = lab
        .vxlab()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let url = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("instructor: ").map(str::to_string))
        .expect("serve printed no instructor URL");
    // Keep reading: a closed pipe would end the server (vxlab dies quietly on SIGPIPE).
    std::thread::spawn(move || lines.for_each(drop));
    (running, url)
}

/// chromedriver on a free port, answering.
pub fn chromedriver() -> (Running, u16) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("chromedriver is not installed (Debian: chromium-driver)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Running(child), port)
}

pub async fn browser(port: u16, profile: &std::path::Path) -> Client {
    browser_with(port, profile, &[]).await
}

/// [`browser`] with more Chromium switches.
pub async fn browser_with(port: u16, profile: &std::path::Path, more: &[&str]) -> Client {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
    ]
    .iter()
    .chain(more)
    .map(|a| a.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("cannot start Chromium through chromedriver")
}

/// Waits up to `secs` for `cond` on the page; panics with `what`.
pub async fn wait_for(c: &Client, secs: u64, what: &str, js: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = c.execute(js, vec![]).await.unwrap();
        if !v.is_null() && v != Value::Bool(false) {
            return v;
        }
        if Instant::now() > deadline {
            let shot = std::env::temp_dir().join("vxlab-browser-timeout.png");
            let _ = std::fs::write(&shot, c.screenshot().await.unwrap_or_default());
            panic!(
                "timed out waiting for {what} (screenshot: {})",
                shot.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Saves what the browser shows as `target/tmp/TEST/NAME`.
pub async fn screenshot(c: &Client, test: &str, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(out_dir(test).join(name), png).unwrap();
}

/// Clicks the element `css` finds on the page.
pub async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .click()
        .await
        .unwrap();
}

/// Types `line` and Enter into guest `guest`'s browser terminal.
pub async fn type_in_terminal(c: &Client, guest: &str, line: &str) {
    let input = c
        .find(Locator::Css(&format!(
            "#term-{guest} .xterm-helper-textarea"
        )))
        .await
        .unwrap();
    input.send_keys(&format!("{line}\n")).await.unwrap();
}
