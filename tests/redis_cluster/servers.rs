//! Real Redis topologies on 127.0.0.1 ephemeral ports, started and stopped by the tests: a
//! Redis Cluster of three primaries and three replicas, and a primary with one replica watched
//! by three sentinels. Every wait is bounded; a server that does not come up fails the test
//! with what it logged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Value;

/// The longest a topology may take to form, or to fail over.
pub(crate) const FORM_DEADLINE: Duration = Duration::from_secs(40);

/// Whether `redis-server` and `redis-cli` can be run (CI installs them: scripts/test).
pub(crate) fn available() -> bool {
    ["redis-server", "redis-cli"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// Ports (and their bus ports) already handed out in this process: the cluster and Sentinel
/// tests start servers at once, and a port found free is only bound once its server starts, so
/// without this two servers could be given the same port, or one another's bus port (a
/// Sentinel test once waited 40 s for sentinels that never met).
static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free port whose cluster bus port (+10000) is free too, neither handed out before.
fn free_port() -> u16 {
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..200 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = |p: u16| given.contains(&p);
        if !(10_000..=55_000).contains(&port) || taken(port) || taken(port + 10_000) || taken(port - 10_000) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            given.insert(port);
            given.insert(port + 10_000);
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// One `redis-server` child; killed when dropped.
pub(crate) struct Server {
    pub(crate) port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn spawn(dir: &Path, port: u16, args: &[String]) -> Self {
        let log = dir.join(format!("redis-{port}.log"));
        let child = Command::new("redis-server")
            .args(args)
            .args(["--logfile".to_owned(), log.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        Self {
            port,
            child: Some(child),
            log,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server dies without a word to its replicas or clients.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary folder, removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("falgate-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// One command to one server (no cluster redirection), bounded.
pub(crate) async fn ask(port: u16, command: &redis::Cmd) -> redis::RedisResult<Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let work = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        command.query_async::<Value>(&mut connection).await
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => format!("{other:?}"),
    }
}

/// Polls `ready` every 100 ms until it holds, for at most `FORM_DEADLINE`.
pub(crate) async fn until<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + FORM_DEADLINE;
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {FORM_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn answers_ping(server: &Server) {
    let port = server.port;
    let deadline = tokio::time::Instant::now() + FORM_DEADLINE;
    while ask(port, &redis::cmd("PING")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server on {port} did not start: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Until every replica among `ports` has its link to its primary up (its first sync done).
async fn until_replicas_synced(ports: &[u16]) {
    until("replicas synced", || async {
        for port in ports {
            let Ok(info) = ask(*port, redis::cmd("INFO").arg("replication")).await else {
                return false;
            };
            let info = text(&info);
            if info.contains("role:slave") && !info.contains("master_link_status:up") {
                return false;
            }
        }
        true
    })
    .await;
}

/// One plain server (the capacity figures).
pub(crate) struct Single {
    pub(crate) server: Server,
    _dir: TempDir,
}

impl Single {
    pub(crate) async fn start() -> Self {
        let dir = TempDir::new("single");
        let port = free_port();
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let server = Server::spawn(&dir.0, port, &args);
        answers_ping(&server).await;
        Self { server, _dir: dir }
    }
}

/// `INFO commandstats` as command → (calls, CPU µs).
pub(crate) async fn command_stats(port: u16) -> std::collections::BTreeMap<String, (u64, u64)> {
    let info = text(&ask(port, redis::cmd("INFO").arg("commandstats")).await.unwrap());
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// Three primaries and three replicas (`redis-cli --cluster create … --cluster-replicas 1`).
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Server>,
    _dir: TempDir,
}

impl Cluster {
    pub(crate) async fn start() -> Self {
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &dir.0.join(format!("nodes-{port}.conf")).display().to_string(),
                "--cluster-node-timeout",
                "1000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                &dir.0.display().to_string(),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            nodes.push(Server::spawn(&dir.0, port, &args));
        }
        for node in &nodes {
            answers_ping(node).await;
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(FORM_DEADLINE, create.output())
            .await
            .expect("redis-cli --cluster create finished in time")
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes, _dir: dir };
        cluster.until_healthy(&[]).await;
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
        until_replicas_synced(&ports).await;
        cluster
    }

    /// The seed list for `[redis] cluster`, as an environment value (a TOML inline list).
    pub(crate) fn seeds(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|n| format!("\"{}\"", n.url())).collect();
        format!("[{}]", urls.join(", "))
    }

    /// Until every live node (all but `dead`) says `cluster_state:ok` and sees three primaries
    /// serving all slots, none of them dead.
    pub(crate) async fn until_healthy(&self, dead: &[u16]) {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .map(|n| n.port)
            .filter(|p| !dead.contains(p))
            .collect();
        until("cluster healthy", || async {
            for port in &live {
                let Ok(info) = ask(*port, redis::cmd("CLUSTER").arg("INFO")).await else {
                    return false;
                };
                if !text(&info).contains("cluster_state:ok") {
                    return false;
                }
                let Ok(primaries) = self.primaries(*port).await else {
                    return false;
                };
                if primaries.len() != 3 || primaries.iter().any(|p| dead.contains(p)) {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// The primaries' ports as `port` sees the slot map.
    async fn primaries(&self, port: u16) -> redis::RedisResult<Vec<u16>> {
        let slots = ask(port, redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let mut ports: Vec<u16> = slot_ranges(&slots).into_iter().map(|(_, _, port)| port).collect();
        ports.sort_unstable();
        ports.dedup();
        Ok(ports)
    }

    /// The port of the primary serving `key`'s slot.
    pub(crate) async fn owner_of(&self, key: &str) -> u16 {
        let port = self.nodes[0].port;
        let slot = match ask(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await.unwrap() {
            Value::Int(slot) => slot,
            other => panic!("CLUSTER KEYSLOT answered {other:?}"),
        };
        let slots = ask(port, redis::cmd("CLUSTER").arg("SLOTS")).await.unwrap();
        slot_ranges(&slots)
            .into_iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, port)| port)
            .expect("every slot is served")
    }

    pub(crate) fn node_mut(&mut self, port: u16) -> &mut Server {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }
}

/// `CLUSTER SLOTS` as (first slot, last slot, primary port).
fn slot_ranges(slots: &Value) -> Vec<(i64, i64, u16)> {
    let Value::Array(ranges) = slots else { return Vec::new() };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else { return None };
            let (Value::Int(start), Value::Int(end), Value::Array(primary)) =
                (fields.first()?, fields.get(1)?, fields.get(2)?)
            else {
                return None;
            };
            let Value::Int(port) = primary.get(1)? else { return None };
            Some((*start, *end, u16::try_from(*port).ok()?))
        })
        .collect()
}

/// A primary, its replica, and three sentinels monitoring them as `falgate`.
pub(crate) struct Sentinels {
    pub(crate) primary: Server,
    pub(crate) replica: Server,
    pub(crate) sentinels: Vec<Server>,
    _dir: TempDir,
}

pub(crate) const MASTER: &str = "falgate";

impl Sentinels {
    pub(crate) async fn start() -> Self {
        let dir = TempDir::new("sentinel");
        let data = |port: u16, replica_of: Option<u16>| {
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                &dir.0.display().to_string(),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            if let Some(primary) = replica_of {
                args.extend(["--replicaof".to_owned(), "127.0.0.1".to_owned(), primary.to_string()]);
            }
            Server::spawn(&dir.0, port, &args)
        };
        let primary = data(free_port(), None);
        let replica = data(free_port(), Some(primary.port));
        answers_ping(&primary).await;
        answers_ping(&replica).await;
        // A replica that never finished its first sync has nothing to fail over with.
        until_replicas_synced(&[replica.port]).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let file = dir.0.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &file,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir.0.display(),
                    primary.port
                ),
            )
            .unwrap();
            sentinels.push(Server::spawn(
                &dir.0,
                port,
                &[file.display().to_string(), "--sentinel".to_owned()],
            ));
        }
        for sentinel in &sentinels {
            answers_ping(sentinel).await;
        }
        let topology = Self {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        // Each sentinel knows the replica and the two other sentinels (a quorum can act).
        let ports: Vec<u16> = topology.sentinels.iter().map(|s| s.port).collect();
        until("sentinels see the replica and each other", || async {
            for port in &ports {
                let replicas = ask(*port, redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER)).await;
                let others = ask(*port, redis::cmd("SENTINEL").arg("SENTINELS").arg(MASTER)).await;
                match (replicas, others) {
                    (Ok(Value::Array(r)), Ok(Value::Array(s))) if r.len() == 1 && s.len() == 2 => {}
                    _ => return false,
                }
            }
            true
        })
        .await;
        topology
    }

    /// `[redis] sentinels`, as an environment value.
    pub(crate) fn urls(&self) -> String {
        let urls: Vec<String> = self.sentinels.iter().map(|s| format!("\"{}\"", s.url())).collect();
        format!("[{}]", urls.join(", "))
    }

    /// Until every sentinel names the replica as the primary, and it answers as one.
    pub(crate) async fn until_failed_over(&self) {
        let (ports, replica) = (
            self.sentinels.iter().map(|s| s.port).collect::<Vec<_>>(),
            self.replica.port,
        );
        until("sentinels fail over to the replica", || async {
            for port in &ports {
                let named = ask(*port, redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER)).await;
                let Ok(Value::Array(addr)) = named else { return false };
                if addr.get(1).map(text) != Some(replica.to_string()) {
                    return false;
                }
            }
            matches!(ask(replica, &redis::cmd("ROLE")).await, Ok(Value::Array(role)) if role.first().map(text).as_deref() == Some("master"))
        })
        .await;
    }
}
