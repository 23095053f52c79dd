//! A real browser for the explorer's tests: Debian's headless Chromium, driven over WebDriver
//! (its `chromedriver`) by fantoccini. `make infra` installs both (`chromium`,
//! `chromium-driver`); where they are missing, [`Browser::start`] says so and the test skips.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// A headless Chromium session and the chromedriver it runs under. Dropping it (also while a
/// failing test unwinds) kills chromedriver and every Chromium process of this session:
/// Chromium leaves chromedriver's process group, so its processes are found by the profile
/// directory on their command lines.
pub struct Browser {
    pub client: Client,
    _driver: tokio::process::Child,
    profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        for pid in processes_naming(self.profile.path()) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The running processes whose command line names `path` (the browser and its helpers,
/// crash handler included, all name the profile directory).
fn processes_naming(path: &Path) -> Vec<nix::unistd::Pid> {
    let marker = path.display().to_string();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
                .then(|| nix::unistd::Pid::from_raw(pid))
        })
        .collect()
}

/// An executable on PATH, or at one of Debian's paths.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a 1400×1000 headless window.
    /// `None`, with a message on stderr, where Chromium or chromedriver is not installed.
    pub async fn start() -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (find("chromium"), find("chromedriver")) else {
            eprintln!(
                "SKIPPED: the explorer's browser test needs Debian's chromium and chromium-driver \
                 (`make infra` installs them; or apt-get install chromium chromium-driver)"
            );
            return None;
        };
        let port = crate::free_port().await;
        let profile = tempfile::tempdir().expect("a Chromium profile directory");
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                // Root in a container: no sandbox; /dev/shm may be small.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000",
                         "--hide-scrollbars", "--force-device-scale-factor=1",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            let connected =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&url)
                    .await;
            match connected {
                Ok(client) => {
                    return Some(Browser {
                        client,
                        _driver: driver,
                        profile,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("chromedriver at {url} never accepted a session");
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Runs `script` in the page (`arguments[0]` is `arg`) and returns what it returns.
    pub async fn eval(&self, script: &str, arg: Value) -> Value {
        self.client
            .execute(script, vec![arg])
            .await
            .expect("run script in the page")
    }

    /// The text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        self.eval(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!(css),
        )
        .await
        .as_str()
        .map(|s| s.trim().to_string())
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> u64 {
        self.eval(
            "return document.querySelectorAll(arguments[0]).length;",
            json!(css),
        )
        .await
        .as_u64()
        .unwrap_or(0)
    }

    /// Waits (polling every 100 ms, up to `timeout`) until the text of `css` satisfies `ok`;
    /// panics with what it saw last.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            last = self.text(css).await;
            if let Some(text) = &last
                && ok(text)
            {
                return text.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("waited {timeout:?} for {css}; last saw {last:?}");
    }

    /// Marks the loaded document; [`Browser::same_document`] tells whether it is still the one
    /// shown (no reload or navigation since).
    pub async fn mark_document(&self) {
        self.eval("window.__ordermeshMark = true; return null;", Value::Null)
            .await;
    }

    pub async fn same_document(&self) -> bool {
        self.eval("return window.__ordermeshMark === true;", Value::Null)
            .await
            .as_bool()
            .unwrap_or(false)
    }

    /// Saves the whole page (the window grown to its height, up to 2,400 px) as
    /// `<dir>/<name>.png` and returns the path.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let height = self
            .eval(
                "return Math.ceil(document.body.getBoundingClientRect().height);",
                Value::Null,
            )
            .await
            .as_u64()
            .unwrap_or(1000)
            .clamp(500, 2400)
            // The window is taller than the page by the browser's own frame.
            + 120;
        let height = u32::try_from(height).unwrap_or(1000);
        self.client
            .set_window_size(1400, height)
            .await
            .expect("resize the window");
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(dir).expect("screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_browser_leaves_no_chromium_behind_even_without_closing() {
        let Some(browser) = Browser::start().await else {
            return;
        };
        browser.goto("about:blank").await;
        let profile = browser.profile.path().to_path_buf();
        assert!(
            !processes_naming(&profile).is_empty(),
            "Chromium runs with its profile"
        );
        // As when a test panics: no close(), only the drop.
        drop(browser);
        let mut left = usize::MAX;
        for _ in 0..50 {
            left = processes_naming(&profile).len();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(left, 0, "Chromium processes still running");
    }
}
