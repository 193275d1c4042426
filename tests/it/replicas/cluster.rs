//! The processes of a small weir deployment on loopback: a real `redis-server`, three
//! `weir serve` replicas reading one config file, and a real nginx in front of them.
//!
//! The config lives in a directory laid out like a mounted Kubernetes ConfigMap
//! (`weir.yaml -> ..data/weir.yaml`, `..data -> ..TIMESTAMP/`), and is changed the way the
//! kubelet changes it: a new timestamped directory, then an atomic swap of `..data`. Each
//! replica gets its own ports from the environment (`${WEIR_LISTEN}`, `${WEIR_ADMIN_LISTEN}`),
//! as pods of one Deployment do.
//!
//! Every child is killed when its guard drops; every wait is bounded.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Readiness of a freshly started process, generous for a loaded 2-core machine.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// `server.shutdown_timeout` of the replicas; a SIGTERMed replica must exit within it.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

pub const ADMIN_TOKEN: &str = "replicas-admin-token";

/// A child process killed (and reaped) when dropped.
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    fn spawn(command: &mut Command, what: &str) -> std::io::Result<ChildGuard> {
        Ok(ChildGuard { child: command.spawn()?, what: what.to_owned() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name such as `TERM` or `HUP`) with the system's `kill`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap_or_else(|err| panic!("run kill -{signal} for {}: {err}", self.what));
        assert!(status.success(), "kill -{signal} {} ({}) failed", self.pid(), self.what);
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap_or_else(|err| panic!("wait for {}: {err}", self.what))
    }

    /// Waits for the process to exit by itself, at most `within`.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {within:?}", self.what);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `addr` accepts TCP connections, failing early if `child` exits.
fn wait_listening(child: &mut ChildGuard, addr: SocketAddr) {
    let deadline = Instant::now() + START_DEADLINE;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.exited() {
            panic!("{} exited with {status} before listening on {addr}", child.what);
        }
        assert!(Instant::now() < deadline, "{} did not listen on {addr} within {START_DEADLINE:?}", child.what);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Spawns a server binary the test needs; `None` (with a message) when it is not installed,
/// except under `CI=true`, where a missing binary fails the test.
fn spawn_required(command: &mut Command, binary: &str, package: &str) -> Option<ChildGuard> {
    match ChildGuard::spawn(command, binary) {
        Ok(child) => Some(child),
        Err(err) if ci() => panic!("`{binary}` is required under CI=true (apt-get install {package}): {err}"),
        Err(err) => {
            eprintln!("SKIPPED: `{binary}` is not available ({err}); install {package} to run the replicas tests");
            None
        }
    }
}

/// `redis-server` on a fixed port, so it can be stopped and started again at the same address.
pub struct Redis {
    port: u16,
    child: Option<ChildGuard>,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        let mut redis = Redis { port: free_port(), child: None };
        redis.child = Some(redis.spawn()?);
        Some(redis)
    }

    fn spawn(&self) -> Option<ChildGuard> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = spawn_required(&mut command, "redis-server", "redis-server")?;
        wait_listening(&mut child, loopback(self.port));
        Some(child)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (its data goes with it, as with a Redis that lost its pod).
    pub fn stop(&mut self) {
        drop(self.child.take());
    }

    pub fn restart(&mut self) {
        self.child = Some(self.spawn().expect("redis-server started before, so it starts again"));
    }

    /// Names of the keys matching `pattern`, read with weir's own Redis client.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut connection =
            client.get_connection_with_timeout(Duration::from_secs(2)).expect("connect to the test's redis-server");
        redis::cmd("KEYS").arg(pattern).query(&mut connection).expect("KEYS")
    }
}

/// The shared config directory, laid out like a mounted ConfigMap.
pub struct ConfigMap {
    dir: PathBuf,
    version: AtomicU64,
}

impl ConfigMap {
    pub fn new(dir: &Path, yaml: &str) -> ConfigMap {
        std::fs::create_dir_all(dir).expect("create the config dir");
        let map = ConfigMap { dir: dir.to_owned(), version: AtomicU64::new(0) };
        map.write(yaml);
        std::os::unix::fs::symlink("..data/weir.yaml", dir.join("weir.yaml")).expect("symlink weir.yaml");
        map
    }

    /// The path every replica is started with.
    pub fn path(&self) -> PathBuf {
        self.dir.join("weir.yaml")
    }

    /// Publishes new contents as the kubelet does: a new directory, then one atomic rename
    /// of the `..data` symlink onto it.
    pub fn write(&self, yaml: &str) {
        let version = self.version.fetch_add(1, Ordering::SeqCst);
        let name = format!("..2026_12_06_00_00_00.{version:09}");
        let data = self.dir.join(&name);
        std::fs::create_dir(&data).expect("create the data dir");
        std::fs::write(data.join("weir.yaml"), yaml).expect("write weir.yaml");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }
}

/// One `weir serve` process and its ports (kept across restarts).
pub struct Replica {
    pub name: String,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl Replica {
    fn new(name: &str, config: PathBuf, dir: &Path) -> Replica {
        Replica {
            name: name.to_owned(),
            addr: loopback(free_port()),
            admin: loopback(free_port()),
            config,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts `weir serve` and waits until its client port accepts connections.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("replica log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
        command
            .args(["serve", "--config", self.config.to_str().expect("UTF-8 path")])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("WEIR_LISTEN", self.addr.to_string())
            .env("WEIR_ADMIN_LISTEN", self.admin.to_string())
            .env("WEIR_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = ChildGuard::spawn(&mut command, &self.name).expect("spawn weir serve");
        wait_listening(&mut child, self.addr);
        self.child = Some(child);
    }

    /// SIGTERM, then waits for the graceful drain to end the process.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        child.signal("TERM");
        child.wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(10))
    }

    /// The last lines this replica logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// nginx as the load balancer in front of the replicas, run in the foreground from a config
/// in the test's directory.
pub struct Nginx {
    pub addr: SocketAddr,
    dir: PathBuf,
    master: ChildGuard,
}

impl Nginx {
    pub fn start(dir: &Path, replicas: &[Replica]) -> Option<Nginx> {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
        let addr = loopback(free_port());
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, addr, replicas, None)).expect("write nginx.conf");
        let mut command = Command::new(nginx_binary());
        command
            .args(["-p", path_str(&dir), "-c", path_str(&conf), "-e", path_str(&dir.join("error.log"))])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut master = spawn_required(&mut command, "nginx", "nginx")?;
        wait_listening(&mut master, addr);
        Some(Nginx { addr, dir, master })
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Takes `down` (an index into `replicas`) out of the upstream group, or puts every
    /// replica back with `None`, and waits until a worker with the new config serves: what
    /// a Kubernetes Service does when a pod stops or starts being ready. Old workers finish
    /// the requests they hold, on the replicas they chose.
    pub fn route(&self, replicas: &[Replica], down: Option<usize>) {
        let conf = self.dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&self.dir, self.addr, replicas, down)).expect("rewrite nginx.conf");
        let before = self.workers();
        self.master.signal("HUP");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let now = self.workers();
            let serving =
                now.iter().any(|(pid, shutting_down)| !shutting_down && !before.iter().any(|(old, _)| old == pid));
            if serving {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not apply its new config: workers {now:?}, before {before:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master's children: (pid, whether it is an old worker still shutting down).
    fn workers(&self) -> Vec<(u32, bool)> {
        let master = self.master.pid();
        let mut workers = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid != Some(master) {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("worker process") {
                workers.push((pid, cmdline.contains("shutting down")));
            }
        }
        workers
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// `nginx` from `PATH`, else Debian's `/usr/sbin/nginx` (not on every user's `PATH`).
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("nginx")).find(|path| path.is_file()));
    match on_path.flatten() {
        Some(path) => path,
        None if Path::new("/usr/sbin/nginx").is_file() => PathBuf::from("/usr/sbin/nginx"),
        None => PathBuf::from("nginx"),
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// nginx in the foreground, one worker, buffering off (streams pass chunk by chunk), and a
/// failed connection retried on the next replica, as a production config would have it.
fn nginx_conf(dir: &Path, addr: SocketAddr, replicas: &[Replica], down: Option<usize>) -> String {
    let servers: String = replicas
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let down = if Some(i) == down { " down" } else { "" };
            format!("    server {}{down};\n", replica.addr)
        })
        .collect();
    let dir = path_str(dir);
    format!(
        r#"daemon off;
user root root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/client_body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream weir {{
{servers}  }}
  server {{
    listen {addr};
    location / {{
      proxy_pass http://weir;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 60s;
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 3;
    }}
  }}
}}
"#
    )
}

/// Redis, the shared config and three replicas behind nginx.
pub struct Cluster {
    pub redis: Redis,
    pub config: ConfigMap,
    pub replicas: Vec<Replica>,
    pub nginx: Nginx,
    /// Holds every file above; removed when the cluster drops.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts everything; `yaml` is the replicas' config given Redis's URL. `None` when a
    /// server binary is missing outside CI.
    pub fn start(yaml: impl Fn(&str) -> String) -> Option<Cluster> {
        let dir = tempfile::tempdir().expect("tempdir");
        let redis = Redis::start()?;
        let config = ConfigMap::new(&dir.path().join("config"), &yaml(&redis.url()));
        let mut replicas: Vec<Replica> =
            (0..3).map(|i| Replica::new(&format!("weir-{i}"), config.path(), dir.path())).collect();
        for replica in &mut replicas {
            replica.start();
        }
        let nginx = Nginx::start(dir.path(), &replicas)?;
        Some(Cluster { redis, config, replicas, nginx, _dir: dir })
    }

    /// Every replica's and nginx's last words, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for replica in &self.replicas {
            text.push_str(&format!("--- {} ---\n{}\n", replica.name, replica.log_tail()));
        }
        text.push_str(&format!("--- nginx ---\n{}\n", self.nginx.error_log()));
        text
    }
}
