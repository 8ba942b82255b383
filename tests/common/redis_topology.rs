//! Redis Cluster and Sentinel deployments for the scale-out tests: every process a
//! `redis-server` on a free 127.0.0.1 port (never 6379), in one temporary directory, killed
//! (SIGKILL, by PID) when its [`Node`] is dropped, so also when a test panics.
//!
//! Included by test files through `tests/common/mod.rs`; it holds no tests itself.

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::redis_server::{free_port, write_tls_files, TlsSetup};

/// How long a node may take to answer PING, a cluster to form, or Sentinel to see its master.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
/// Redis Cluster's bus port is the client port plus this.
const BUS_OFFSET: u16 = 10_000;
/// Cluster client ports are picked here, so that their bus ports stay below the kernel's
/// ephemeral range (a port in it can be taken by any outgoing connection meanwhile).
const CLUSTER_PORTS: std::ops::Range<u16> = 20_000..22_700;
/// `cluster-node-timeout` and Sentinel's `down-after-milliseconds`: failovers start this
/// quickly.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// The master name the sentinels monitor.
pub const SERVICE: &str = "mymaster";

/// One redis-server (or sentinel) process.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// What it was started with, so [`Node::restart`] starts the same server again.
    args: Vec<String>,
    tls: Option<TlsSetup>,
}

impl Node {
    /// Starts redis-server on `port` in `dir/port` and waits until it answers. A first
    /// argument that is not an option is its config file (redis-server reads one only there);
    /// the other `args` come after the defaults here, so they override them (for a repeated
    /// directive redis-server keeps the last).
    fn spawn(port: u16, dir: &Path, args: &[String], tls: Option<&TlsSetup>) -> Node {
        let dir = dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node dir");
        let mut node = Node { port, child: None, dir, args: args.to_vec(), tls: tls.cloned() };
        node.start();
        node
    }

    fn start(&mut self) {
        let (config_file, args) = match self.args.split_first() {
            Some((first, rest)) if !first.starts_with("--") => (Some(first), rest),
            _ => (None, self.args.as_slice()),
        };
        let mut command = Command::new("redis-server");
        command.args(config_file);
        command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        match &self.tls {
            None => {
                command.arg("--port").arg(self.port.to_string());
            }
            Some(tls) => {
                tls.server_args(&mut command, self.port);
                // Nodes speak TLS to each other and authenticate to their master.
                command
                    .arg("--tls-cluster")
                    .arg("yes")
                    .arg("--tls-replication")
                    .arg("yes")
                    .arg("--masterauth")
                    .arg(&tls.password);
            }
        }
        command.args(args);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("spawn redis-server (apt-get install -y redis-server): {err}"));
        self.child = Some(child);
        self.wait_until("answers PING", |node| node.cli(&["PING"]) == "PONG");
    }

    /// Starts the killed server again: same port, arguments and directory (so a cluster node
    /// reads its `nodes.conf`, and a durable one its data), and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// Runs `redis-cli` against this node; trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = self.cli_command(args).stdin(Stdio::null()).output().expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("redis-cli");
        command.arg("-h").arg("127.0.0.1").arg("-p").arg(self.port.to_string());
        if let Some(tls) = &self.tls {
            tls.cli_args(&mut command);
        }
        command.args(args);
        command
    }

    /// A field of `INFO` (`info("role")` gives `"master"`).
    pub fn info(&self, field: &str) -> Option<String> {
        let info = self.cli(&["INFO"]);
        info.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':').map(str::to_owned))
    }

    /// Kills the process with SIGKILL, by its PID, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether this cluster node's `nodes.conf` says it is a master (readable while it is
    /// stopped: the node rewrites that file on every change of the cluster's layout).
    fn was_master(&self) -> bool {
        let conf = std::fs::read_to_string(self.dir.join("nodes.conf")).expect("read nodes.conf");
        conf.lines().filter_map(|line| line.split_whitespace().nth(2)).any(|flags| {
            let mut flags = flags.split(',');
            flags.clone().any(|f| f == "myself") && flags.any(|f| f == "master")
        })
    }

    pub fn wait_until(&self, what: &str, ready: impl Fn(&Node) -> bool) {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while !ready(self) {
            assert!(
                Instant::now() < deadline,
                "redis node {} never {what} within {SETUP_TIMEOUT:?}; log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            thread::sleep(POLL);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client port whose cluster bus port (port + 10000) is free as well.
fn cluster_port() -> u16 {
    let seed = RandomState::new();
    for attempt in 0u32..200 {
        let span = u64::from(CLUSTER_PORTS.end - CLUSTER_PORTS.start);
        let port = CLUSTER_PORTS.start + u16::try_from(seed.hash_one(attempt) % span).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + BUS_OFFSET)).is_ok()
        {
            return port;
        }
    }
    panic!("no free cluster port pair found");
}

/// A Redis Cluster of `masters` masters with one replica each.
pub struct Cluster {
    pub nodes: Vec<Node>,
    tls: Option<TlsSetup>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// 3 masters, 3 replicas, plain TCP.
    pub fn start() -> Cluster {
        Self::start_with(3, None, false)
    }

    /// 3 masters, 3 replicas, TLS only (a CA made here) with a password.
    pub fn start_tls(password: &str) -> Cluster {
        Self::start_with(3, Some(password), false)
    }

    /// 3 masters, 3 replicas, plain TCP, each node keeping its data in an append-only file
    /// written to disk before every reply: a node killed and [restarted](Cluster::restart_all)
    /// comes back with what it acknowledged, as a production node with persistence would.
    pub fn start_durable() -> Cluster {
        Self::start_with(3, None, true)
    }

    fn start_with(masters: usize, password: Option<&str>, durable: bool) -> Cluster {
        let dir = tempfile::Builder::new().prefix("redis-cluster-").tempdir().expect("temp dir");
        let tls = password.map(|password| write_tls_files(dir.path(), password));
        let nodes: Vec<Node> = (0..masters * 2)
            .map(|_| {
                let port = cluster_port();
                let node_timeout = NODE_TIMEOUT_MS.to_string();
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &node_timeout,
                    // Replicas may always take over, however long their link was down.
                    "--cluster-replica-validity-factor",
                    "0",
                ];
                if durable {
                    args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
                }
                let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
                Node::spawn(port, dir.path(), &args, tls.as_ref())
            })
            .collect();
        let mut create = nodes[0].cli_command(&["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        // Bounded: redis-cli waits for the nodes to join for as long as it takes.
        let mut bounded = Command::new("timeout");
        bounded.arg("30").arg(create.get_program()).args(create.get_args());
        for (name, value) in create.get_envs() {
            if let Some(value) = value {
                bounded.env(name, value);
            }
        }
        let output = bounded.stdin(Stdio::null()).output().expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create: {}\nfirst node's log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            std::fs::read_to_string(nodes[0].dir.join("redis.log")).unwrap_or_default()
        );
        let cluster = Cluster { nodes, tls, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    /// Until every running node says `cluster_state:ok` and every replica's link is up.
    pub fn wait_ok(&self) {
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            node.wait_until("saw the cluster ok", |node| {
                node.cli(&["CLUSTER", "INFO"]).lines().any(|l| l.trim() == "cluster_state:ok")
                    && (node.info("role").as_deref() != Some("slave")
                        || node.info("master_link_status").as_deref() == Some("up"))
            });
        }
    }

    /// `redis-cluster://127.0.0.1:P?node=...` over every node (or `rediss-cluster://` with
    /// the password).
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|node| node.port);
        let first = ports.next().unwrap();
        let rest: Vec<String> = ports.map(|port| format!("node=127.0.0.1:{port}")).collect();
        match &self.tls {
            None => format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&")),
            Some(tls) => format!("rediss-cluster://:{}@127.0.0.1:{first}?{}", tls.password, rest.join("&")),
        }
    }

    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.ca.clone())
    }

    /// The running masters.
    pub fn masters(&self) -> Vec<&Node> {
        self.nodes.iter().filter(|n| n.is_running() && n.info("role").as_deref() == Some("master")).collect()
    }

    /// The running node that serves `key` (as master), asked with `CLUSTER KEYSLOT` and
    /// `CLUSTER NODES`.
    pub fn master_of(&self, key: &str) -> &Node {
        let any = self.nodes.iter().find(|n| n.is_running()).expect("a running node");
        let slot: u16 = any.cli(&["CLUSTER", "KEYSLOT", key]).parse().expect("a slot number");
        for line in any.cli(&["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 =
                fields[1].split('@').next().unwrap().rsplit(':').next().unwrap().parse().expect("a port");
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot),
                None => range.parse::<u16>().ok() == Some(slot),
            });
            if owns {
                return self.nodes.iter().find(|n| n.port == port).expect("a known node");
            }
        }
        panic!("no master owns slot {slot}");
    }

    /// `GET key` on the master that owns it.
    pub fn get(&self, key: &str) -> String {
        self.master_of(key).cli(&["GET", key])
    }

    pub fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.port == port).expect("a known node")
    }

    /// Kills every node (SIGKILL, by PID): replicas first, so no replica outlives its master
    /// and starts a failover.
    pub fn stop_all(&mut self) {
        let replicas: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.is_running() && n.info("role").as_deref() != Some("master"))
            .map(|n| n.port)
            .collect();
        for port in replicas {
            self.node_mut(port).kill();
        }
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Starts every node again from its directory and `nodes.conf` (same ports, ids, roles and
    /// slots), masters first so no replica finds its master missing and takes over; then
    /// waits until the cluster is ok.
    pub fn restart_all(&mut self) {
        let (masters, replicas): (Vec<&mut Node>, Vec<&mut Node>) =
            self.nodes.iter_mut().partition(|node| node.was_master());
        for node in masters.into_iter().chain(replicas) {
            node.restart();
        }
        self.wait_ok();
    }
}

/// One master, one replica, three sentinels (quorum 2).
pub struct Sentinel {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    tls: Option<TlsSetup>,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Plain TCP, no passwords.
    pub fn start() -> Sentinel {
        Self::start_with(None)
    }

    /// Every process TLS only (a CA made here) and requiring `password`: the sentinels reach
    /// the master and replica, and each other, over TLS (`tls-replication yes`, which also
    /// makes each announce its TLS port) and authenticate to them with the same password.
    pub fn start_tls(password: &str) -> Sentinel {
        Self::start_with(Some(password))
    }

    fn start_with(password: Option<&str>) -> Sentinel {
        let dir = tempfile::Builder::new().prefix("redis-sentinel-").tempdir().expect("temp dir");
        let tls = password.map(|password| write_tls_files(dir.path(), password));
        let master = Node::spawn(free_port(), dir.path(), &[], tls.as_ref());
        let replica_args = ["--replicaof".to_owned(), "127.0.0.1".to_owned(), master.port.to_string()];
        let replica = Node::spawn(free_port(), dir.path(), &replica_args, tls.as_ref());
        replica
            .wait_until("synced with its master", |n| n.info("master_link_status").as_deref() == Some("up"));
        let auth = match &tls {
            None => String::new(),
            Some(tls) => format!("sentinel auth-pass {SERVICE} {}\n", tls.password),
        };
        let sentinels: Vec<Node> = (0..3)
            .map(|_| {
                let port = free_port();
                let conf = dir.path().join(format!("sentinel-{port}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n\
                         sentinel down-after-milliseconds {SERVICE} {NODE_TIMEOUT_MS}\n\
                         sentinel failover-timeout {SERVICE} 3000\n\
                         sentinel parallel-syncs {SERVICE} 1\n{auth}",
                        master = master.port
                    ),
                )
                .expect("write sentinel.conf");
                let args = [conf.display().to_string(), "--sentinel".to_owned()];
                Node::spawn(port, dir.path(), &args, tls.as_ref())
            })
            .collect();
        for sentinel in &sentinels {
            sentinel.wait_until("saw the replica and the other sentinels", |s| {
                let master = s.cli(&["SENTINEL", "MASTER", SERVICE]);
                let field = |name: &str| {
                    let lines: Vec<&str> = master.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .map(|v| v.to_string())
                };
                field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2")
            });
        }
        Sentinel { master, replica, sentinels, tls, _dir: dir }
    }

    /// `redis-sentinel://127.0.0.1:S1?sentinelServiceName=mymaster&node=...`; over TLS
    /// `rediss-sentinel://:PASSWORD@...&sentinelPassword=PASSWORD`: the password in front is
    /// the master's, `sentinelPassword` the sentinels'.
    pub fn url(&self) -> String {
        let nodes: Vec<String> =
            self.sentinels[1..].iter().map(|s| format!("&node=127.0.0.1:{}", s.port)).collect();
        let (scheme, auth, sentinel_auth) = match &self.tls {
            None => ("redis-sentinel", String::new(), String::new()),
            Some(tls) => {
                let password = utf8_percent_encode(&tls.password, NON_ALPHANUMERIC);
                ("rediss-sentinel", format!(":{password}@"), format!("&sentinelPassword={password}"))
            }
        };
        format!(
            "{scheme}://{auth}127.0.0.1:{}?sentinelServiceName={SERVICE}{sentinel_auth}{}",
            self.sentinels[0].port,
            nodes.concat()
        )
    }

    /// The test CA's PEM file, for `store.ca_file` (TLS only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.ca.clone())
    }

    /// The master's port as the sentinels name it.
    pub fn master_port(&self) -> Option<u16> {
        let reply = self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]);
        reply.lines().nth(1)?.trim().parse().ok()
    }
}
