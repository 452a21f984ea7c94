//! Test harness shared by the contract suites and the end-to-end tests: a real `redis-server`
//! of the test's own, on a free port, killed on drop.

#![allow(dead_code)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of this test's own.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port, without persistence. Fails the test, naming the install step,
    /// when `redis-server` is missing: these tests never pass silently.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::spawn(port, &["--save", "", "--appendonly", "no"])
    }

    /// Starts one that keeps its data in `dir` (AOF, fsync at every write: what the README
    /// asks of a production Redis), restartable on the same port with [`RedisServer::restart`].
    pub fn start_durable(dir: &std::path::Path) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::durable_on(dir, port)
    }

    fn durable_on(dir: &std::path::Path, port: u16) -> RedisServer {
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.to_str().expect("a UTF-8 temporary directory");
        Self::spawn(port, &["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", dir])
    }

    /// `redis-server` on `port` with `args`, once it accepts connections.
    fn spawn(port: u16, args: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it (Debian: `apt-get install redis-server`; \
                     .ci/run installs it) - the Redis contract tests never pass without it"
                )
            });
        // Owned from here on: dropped (killed and waited for) on every path, panics included.
        let server = RedisServer { child, port };
        for _ in 0..300 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {port}");
    }

    /// SIGKILLs a durable server and starts it again on the same port and directory.
    pub fn restart(&mut self, dir: &std::path::Path) {
        self.kill();
        let port = self.port;
        // The port was just freed: retry while the kernel lets it go.
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let fresh = Self::durable_on(dir, port);
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old); // already killed and waited for
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw connection for tests that reach behind a backend (flush scripts, corrupt a key).
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Runs each named case on every backend: `case(Harness::disk())` (in a temporary directory),
/// `case(Harness::memory())` and `case(Harness::redis().await)`, as `disk::case`,
/// `memory::case` and `redis::case`.
#[allow(unused_macros)]
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod disk {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Harness::disk()).await
            })*
        }
        mod memory {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Harness::memory()).await
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Harness::redis().await).await
            })*
        }
    };
}
