//! Harness for multi-process cluster scenarios: starts real `realtime` node processes (the
//! built binary, see `testkit::node`) against one throwaway PostgreSQL, clustered through
//! `CLUSTER_SEEDS`, and drives them with real clients from `testkit`. Nothing here is linked
//! into the server, and the server library is not linked here.
//!
//! * [`Nodes`]: the node processes (ports reserved up front, killed on drop), their
//!   `/api/cluster` views, convergence, kill / stop / restart, extra nodes with other settings;
//! * [`client`]: a WebSocket client that records frames and presence;
//! * [`ports`]: the port reservation;
//! * [`netns`]: network namespaces for partitions (root only);
//! * [`proxy`]: the entry proxy binary as a child process.

pub mod client;
pub mod netns;
pub mod ports;
pub mod proxy;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde::Deserialize;

pub use client::{Client, join_config, until_delivered};
pub use ports::NodePorts;
pub use testkit;
use testkit::Node;
use testkit::node::Launch;

/// How long [`Nodes::stop`] waits for a node to exit after SIGTERM before it kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// One member of a node's gossip view, as `/api/cluster` lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its node name.
    pub node: String,
    /// Its incarnation (a new one per process start), when the server says.
    #[serde(default)]
    pub incarnation: Option<u64>,
    /// Its HTTP address, when the server says.
    #[serde(default)]
    pub http_addr: Option<String>,
}

/// What `GET /api/cluster` answers.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ClusterInfo {
    /// This node's name.
    pub node: String,
    /// This node's incarnation.
    pub incarnation: u64,
    /// The live gossip view, this node included.
    pub members: Vec<MemberInfo>,
    /// Peers with an authenticated bus link.
    pub linked: Vec<String>,
    /// The members of this node's hash ring (who may own a tenant's stream).
    #[serde(default)]
    pub ring: Vec<String>,
    /// Tenants whose Postgres Changes stream runs on this node.
    #[serde(default)]
    pub streams: Vec<String>,
}

impl ClusterInfo {
    /// The names of the members.
    pub fn member_names(&self) -> BTreeSet<String> {
        self.members.iter().map(|m| m.node.clone()).collect()
    }

    /// The incarnation this view has for `node`, if it lists it.
    pub fn incarnation_of(&self, node: &str) -> Option<Option<u64>> {
        self.members
            .iter()
            .find(|m| m.node == node)
            .map(|m| m.incarnation)
    }

    /// The linked peers.
    pub fn linked_set(&self) -> BTreeSet<String> {
        self.linked.iter().cloned().collect()
    }
}

/// Where a node runs: the address it binds and advertises, and a command prefix that starts it
/// there (empty: the binary itself). See [`netns::NetLab::host`].
#[derive(Clone, Debug)]
pub struct Host {
    /// Its HTTP bind address and `ADVERTISE_ADDR`.
    pub ip: IpAddr,
    /// The program and arguments that come before the binary (e.g. `ip netns exec ns`).
    pub wrapper: Vec<String>,
}

impl Host {
    /// The default: the binary itself on 127.0.0.1.
    pub fn loopback() -> Host {
        Host {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            wrapper: Vec::new(),
        }
    }
}

/// The fixed facts of one node: it keeps them across restarts.
#[derive(Clone, Debug)]
struct NodeSpec {
    name: String,
    ports: NodePorts,
    host: Host,
    /// Variables that win over everything else, for this node only.
    overrides: Vec<(String, String)>,
}

/// How to start a [`Nodes`]; see [`Nodes::builder`].
pub struct Builder {
    count: usize,
    extra: Vec<(String, String)>,
    clustered: bool,
    hosts: Vec<Host>,
    db_addr: Option<SocketAddr>,
}

impl Builder {
    /// Adds variables for every node (they win over the harness's own).
    pub fn vars(mut self, vars: &[(&str, &str)]) -> Builder {
        self.extra
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Starts independent nodes: no `CLUSTER_SEEDS`, `CLUSTER_SECRET` or cluster ports (each
    /// node is a cluster of one).
    pub fn standalone(mut self) -> Builder {
        self.clustered = false;
        self
    }

    /// Places node `i` on `hosts[i]` (default: all on loopback).
    pub fn hosts(mut self, hosts: Vec<Host>) -> Builder {
        self.hosts = hosts;
        self
    }

    /// Nodes reach PostgreSQL at `addr` instead of the test cluster's own `127.0.0.1` port
    /// (e.g. a forwarder that namespaced nodes can reach).
    pub fn db_addr(mut self, addr: SocketAddr) -> Builder {
        self.db_addr = Some(addr);
        self
    }

    /// Creates a fresh metadata database, reserves every port and starts the nodes at once;
    /// returns when each answers `/healthcheck` (not when they have found each other: see
    /// [`Nodes::wait_converged`]).
    pub async fn start(self) -> Nodes {
        let db = testkit::fresh_database().await;
        let mut reservation = ports::Reservation::new();
        let specs = (0..self.count)
            .map(|i| NodeSpec {
                name: format!("node-{}", i + 1),
                ports: reservation.node(),
                host: self.hosts.get(i).cloned().unwrap_or_else(Host::loopback),
                overrides: Vec::new(),
            })
            .collect();
        let mut nodes = Nodes {
            db,
            cluster_id: format!("ct-{}-{}", std::process::id(), random_hex(4)),
            secret: random_hex(32),
            extra: self.extra,
            clustered: self.clustered,
            db_addr: self.db_addr,
            specs,
            procs: (0..self.count).map(|_| None).collect(),
            dead: Vec::new(),
            reservation,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client"),
        };
        nodes.reservation.release_probes();
        let launches: Vec<Launch> = (0..nodes.len()).map(|i| nodes.launch(i)).collect();
        let started =
            futures::future::join_all(launches.iter().map(|l| async { Node::launch(l).await }))
                .await;
        for (i, node) in started.into_iter().enumerate() {
            match node {
                Ok(node) => nodes.procs[i] = Some(node),
                Err(log) => panic!("{} did not start; its log:\n{log}", nodes.specs[i].name),
            }
        }
        nodes
    }
}

/// Prepares database `db` (of this process's PostgreSQL) for Postgres Changes of the self-host
/// tenant, whose database it is: a table `public.items (id bigint primary key, note text)`
/// readable by `anon`, and the publication `supabase_realtime` of it.
pub async fn publish_items_table(db: &str) {
    testkit::connect(db)
        .await
        .batch_execute(
            "do $$ begin create role anon nologin;
               exception when duplicate_object or unique_violation then null; end $$;
             create table public.items (id bigint primary key, note text);
             grant usage on schema public to anon;
             grant select on public.items to anon;
             create publication supabase_realtime for table public.items;",
        )
        .await
        .expect("the items table and its publication");
}

/// The ids of the `public.items` INSERTs `client` received on `sub_topic`, in arrival order.
pub fn inserted_ids(client: &Client, sub_topic: &str) -> Vec<i64> {
    client
        .changes(sub_topic)
        .iter()
        .filter(|d| d["type"] == "INSERT" && d["table"] == "items")
        .filter_map(|d| d["record"]["id"].as_i64())
        .collect()
}

/// The convergence rule of [`Nodes::wait_converged_among`] over the views of the nodes `among`
/// (`views[k]` is node `among[k]`'s): each lists each of them as a member, with the incarnation
/// that node reports for itself, and as linked (itself excepted); none lists a node that is not
/// running. `Err` says what is missing first.
fn check_converged(
    names: &[&str],
    running: &[bool],
    among: &[usize],
    views: &[Result<ClusterInfo, String>],
) -> Result<(), String> {
    let mut infos = Vec::new();
    for (&i, view) in among.iter().zip(views) {
        let info = view.as_ref().map_err(Clone::clone)?;
        if info.node != names[i] {
            return Err(format!("{} answers as {}", names[i], info.node));
        }
        infos.push(info);
    }
    let down: Vec<&str> = (0..names.len())
        .filter(|&k| !running[k])
        .map(|k| names[k])
        .collect();
    for (&i, info) in among.iter().zip(&infos) {
        for (&j, other) in among.iter().zip(&infos) {
            match info.incarnation_of(names[j]) {
                None => return Err(format!("{} does not list {}", names[i], names[j])),
                Some(Some(inc)) if inc != other.incarnation => {
                    return Err(format!(
                        "{} lists {} with incarnation {inc}, not {}",
                        names[i], names[j], other.incarnation
                    ));
                }
                Some(_) => {}
            }
            if i != j && !info.linked.iter().any(|n| n == names[j]) {
                return Err(format!("{} is not linked to {}", names[i], names[j]));
            }
        }
        if let Some(gone) = down
            .iter()
            .find(|d| info.incarnation_of(d).is_some() || info.linked.iter().any(|n| n == *d))
        {
            return Err(format!("{} still lists {gone}, which is down", names[i]));
        }
    }
    Ok(())
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Node processes sharing one metadata database of this process's throwaway PostgreSQL, named
/// `node-1`, `node-2`, ... (index 0 is `node-1`). Every node process is killed on drop.
///
/// Each node gets `SEED_SELF_HOST=true`, its own reserved `PORT`, `GOSSIP_PORT` and `BUS_PORT`,
/// `ADVERTISE_ADDR`, `CLUSTER_SEEDS` listing every node's gossip address (its own included),
/// and the set's `CLUSTER_ID` (unique per set) and `CLUSTER_SECRET` (random); then the
/// builder's variables, then the node's own overrides.
pub struct Nodes {
    /// The shared metadata database (also the self-host tenant's database).
    pub db: String,
    cluster_id: String,
    secret: String,
    extra: Vec<(String, String)>,
    clustered: bool,
    db_addr: Option<SocketAddr>,
    specs: Vec<NodeSpec>,
    procs: Vec<Option<Node>>,
    /// Killed or stopped processes, kept so their logs are printed if the test fails.
    dead: Vec<Node>,
    reservation: ports::Reservation,
    http: reqwest::Client,
}

impl Nodes {
    /// How to start a set of `count` clustered nodes.
    pub fn builder(count: usize) -> Builder {
        Builder {
            count,
            extra: Vec::new(),
            clustered: true,
            hosts: Vec::new(),
            db_addr: None,
        }
    }

    /// Starts `count` clustered nodes with `extra` variables (see [`Nodes::builder`]).
    pub async fn start(count: usize, extra: &[(&str, &str)]) -> Nodes {
        Nodes::builder(count).vars(extra).start().await
    }

    /// The environment and command of node `i`.
    fn launch(&self, i: usize) -> Launch {
        let spec = &self.specs[i];
        let mut vars = testkit::vars(&self.db, &[]);
        let http = spec.ports.http.to_string();
        let ip = spec.host.ip.to_string();
        let mut own: Vec<(&str, String)> = vec![
            ("SEED_SELF_HOST", "true".into()),
            ("NODE_NAME", spec.name.clone()),
            ("PORT", http),
            ("BIND_ADDR", ip.clone()),
            ("RUST_LOG", "info".into()),
        ];
        if let Some(db) = self.db_addr {
            own.push(("DB_HOST", db.ip().to_string()));
            own.push(("DB_PORT", db.port().to_string()));
        }
        if self.clustered {
            let seeds: Vec<String> = self
                .specs
                .iter()
                .map(|s| SocketAddr::new(s.host.ip, s.ports.gossip).to_string())
                .collect();
            own.extend([
                ("GOSSIP_PORT", spec.ports.gossip.to_string()),
                ("BUS_PORT", spec.ports.bus.to_string()),
                ("ADVERTISE_ADDR", ip),
                ("CLUSTER_ID", self.cluster_id.clone()),
                ("CLUSTER_SECRET", self.secret.clone()),
                ("CLUSTER_SEEDS", seeds.join(",")),
            ]);
        }
        vars.extend(own.into_iter().map(|(k, v)| (k.to_string(), v)));
        vars.extend(self.extra.iter().cloned());
        vars.extend(spec.overrides.iter().cloned());
        let binary = testkit::realtime_binary().display().to_string();
        let (program, args) = match spec.host.wrapper.split_first() {
            Some((program, rest)) => {
                let mut args = rest.to_vec();
                args.push(binary);
                (program.clone(), args)
            }
            None => (binary, Vec::new()),
        };
        Launch {
            program: program.into(),
            args,
            vars,
            addr: self.addr(i),
        }
    }

    /// How many nodes the set has (running or not).
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether the set has no node.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Node `i`'s name (`node-<i+1>` for the builder's nodes).
    pub fn name(&self, i: usize) -> &str {
        &self.specs[i].name
    }

    /// Node `i`'s HTTP address (also while it is down).
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.specs[i].host.ip, self.specs[i].ports.http)
    }

    /// Node `i`'s ports.
    pub fn ports(&self, i: usize) -> NodePorts {
        self.specs[i].ports
    }

    /// The set's `CLUSTER_SECRET`.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The set's `CLUSTER_ID`.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Whether node `i` has a process (started and not killed or stopped since).
    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    /// Whether node `i`'s process is running and has not exited by itself.
    pub fn alive(&mut self, i: usize) -> bool {
        self.procs[i].as_mut().is_some_and(|n| n.exited().is_none())
    }

    /// The indices of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Node `i`'s process.
    ///
    /// # Panics
    /// When it is not running.
    pub fn node(&self, i: usize) -> &Node {
        self.procs[i]
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.specs[i].name))
    }

    /// Connects a client to node `i` (see [`Client::connect`]), labelled `<label>@<node>`.
    pub async fn client(&self, i: usize, label: &str) -> Client {
        Client::connect(self.addr(i), format!("{label}@{}", self.name(i))).await
    }

    /// One client per node: client `i` joins `room` on node `i` with presence key `keys[i]` and
    /// tracks `{"node": <name>}`; returns once every client sees all the keys (within `within`).
    pub async fn tracked_clients(
        &self,
        room: &str,
        keys: &[&str],
        within: std::time::Duration,
    ) -> Vec<Client> {
        let mut clients: Vec<Client> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let mut c = self.client(i, key).await;
            c.join(room, join_config(false, Some(key), serde_json::json!([])))
                .await;
            c.track(room, serde_json::json!({"node": self.name(i)}))
                .await;
            clients.push(c);
        }
        for c in &mut clients {
            c.expect_until(within, "all the presences", |c| c.presence_is(room, keys))
                .await;
        }
        clients
    }

    /// `GET /api/cluster` of node `i` with the management token.
    ///
    /// # Errors
    /// A transport error, a status other than 200 or a body that does not parse.
    pub async fn cluster_info(&self, i: usize) -> Result<ClusterInfo, String> {
        let url = format!("http://{}/api/cluster", self.addr(i));
        let response = self
            .http
            .get(&url)
            .bearer_auth(testkit::api_token())
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {url}: {status} {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET {url}: {e}: {body}"))
    }

    /// Polls node `i`'s `/api/cluster` until `pred` holds and returns that view.
    ///
    /// # Panics
    /// After `timeout`, with the last view (or error) and `what`.
    pub async fn wait_for_view(
        &self,
        i: usize,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&ClusterInfo) -> bool,
    ) -> ClusterInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.cluster_info(i).await;
            if let Ok(info) = &last
                && pred(info)
            {
                return info.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: no {what} within {timeout:?}; last view: {last:?}",
                    self.name(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node's view lists every running node (with the incarnation
    /// that node reports for itself) as a member and every other running node as linked, and no
    /// stopped node at all. Returns how long it took.
    ///
    /// # Panics
    /// After `timeout`, with each node's last view.
    pub async fn wait_converged(&self, timeout: Duration) -> Duration {
        let running = self.running();
        self.wait_converged_among(&running, timeout).await
    }

    /// Like [`Nodes::wait_converged`] for the nodes `among` only: other running nodes may or may
    /// not appear in their views; nodes that are not running must not.
    pub async fn wait_converged_among(&self, among: &[usize], timeout: Duration) -> Duration {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let views =
                futures::future::join_all(among.iter().map(|&i| self.cluster_info(i))).await;
            match self.converged(among, &views) {
                Ok(()) => return start.elapsed(),
                Err(problem) if Instant::now() >= deadline => {
                    let mut report = String::new();
                    for (&i, view) in among.iter().zip(&views) {
                        let _ = writeln!(report, "  {}: {view:?}", self.name(i));
                    }
                    panic!("not converged within {timeout:?}: {problem}; views:\n{report}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn converged(
        &self,
        among: &[usize],
        views: &[Result<ClusterInfo, String>],
    ) -> Result<(), String> {
        let names: Vec<&str> = self.specs.iter().map(|s| s.name.as_str()).collect();
        let running: Vec<bool> = (0..self.len()).map(|k| self.is_running(k)).collect();
        check_converged(&names, &running, among, views)
    }

    /// Kills node `i` with SIGKILL and reaps it (its ports are free when this returns).
    pub fn kill(&mut self, i: usize) {
        let mut node = self.procs[i]
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.specs[i].name));
        node.kill();
        self.dead.push(node);
    }

    /// Stops node `i` with SIGTERM and waits for it to exit (killing it after 20 s); returns its
    /// exit status.
    pub async fn stop(&mut self, i: usize) -> ExitStatus {
        let mut node = self.procs[i]
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.specs[i].name));
        let status = node.terminate(STOP_TIMEOUT).await;
        self.dead.push(node);
        status
    }

    /// Starts node `i` again, after a kill or stop: same name, ports and variables, a new
    /// process (so a new incarnation).
    ///
    /// # Panics
    /// When it is still running, or does not become ready.
    pub async fn restart(&mut self, i: usize) {
        assert!(
            !self.is_running(i),
            "{} is still running",
            self.specs[i].name
        );
        let launch = self.launch(i);
        match Node::launch(&launch).await {
            Ok(node) => self.procs[i] = Some(node),
            Err(log) => panic!("{} did not restart; its log:\n{log}", self.specs[i].name),
        }
    }

    /// Starts one more node, `node-<len+1>`, on fresh ports and loopback, seeded with every
    /// node's gossip address, with `overrides` winning over every other variable (e.g. another
    /// `CLUSTER_SECRET`). Returns its index.
    pub async fn add_node(&mut self, overrides: &[(&str, &str)]) -> usize {
        let i = self.len();
        let ports = self.reservation.node();
        self.reservation.release_probes();
        self.specs.push(NodeSpec {
            name: format!("node-{}", i + 1),
            ports,
            host: Host::loopback(),
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        self.procs.push(None);
        self.restart(i).await;
        i
    }

    /// `POST /api/broadcast` on node `i` as the self-host tenant (an anon token as `apikey`)
    /// with `{"messages": messages}`; returns the status code.
    pub async fn http_broadcast(&self, i: usize, messages: serde_json::Value) -> u16 {
        let url = format!("http://{}/api/broadcast", self.addr(i));
        let token = testkit::client_token(testkit::API_SECRET, 3600);
        self.http
            .post(&url)
            .header("host", format!("{}.localhost", testkit::SELF_HOST))
            .header("apikey", token)
            .json(&serde_json::json!({ "messages": messages }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
            .status()
            .as_u16()
    }

    /// The node running the Postgres Changes stream of `tenant`, per the running nodes'
    /// `/api/cluster`, once exactly one of them says so.
    ///
    /// # Panics
    /// After `timeout`, with every node's streams.
    pub async fn wait_stream_owner(&self, tenant: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.running();
            let views =
                futures::future::join_all(running.iter().map(|&i| self.cluster_info(i))).await;
            let owners: Vec<usize> = running
                .iter()
                .zip(&views)
                .filter(|(_, v)| {
                    v.as_ref()
                        .is_ok_and(|info| info.streams.iter().any(|t| t == tenant))
                })
                .map(|(&i, _)| i)
                .collect();
            if owners.len() == 1 {
                return owners[0];
            }
            if Instant::now() >= deadline {
                panic!(
                    "no single owner of {tenant}'s stream within {timeout:?} (owners: {owners:?}); views: {views:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl std::ops::Index<usize> for Nodes {
    type Output = Node;

    fn index(&self, i: usize) -> &Node {
        self.node(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(node: &str, inc: u64, members: &[(&str, u64)], linked: &[&str]) -> ClusterInfo {
        serde_json::from_value(serde_json::json!({
            "node": node,
            "incarnation": inc,
            "members": members.iter().map(|(n, i)| serde_json::json!(
                {"node": n, "incarnation": i, "http_addr": "127.0.0.1:1"})).collect::<Vec<_>>(),
            "linked": linked,
            "streams": [],
        }))
        .expect("a view parses")
    }

    const NAMES: [&str; 3] = ["node-1", "node-2", "node-3"];

    #[test]
    fn convergence_needs_every_member_link_and_incarnation_and_no_down_node() {
        let all = [("node-1", 1), ("node-2", 2), ("node-3", 3)];
        let good = || {
            vec![
                Ok(view("node-1", 1, &all, &["node-2", "node-3"])),
                Ok(view("node-2", 2, &all, &["node-1", "node-3"])),
                Ok(view("node-3", 3, &all, &["node-1", "node-2"])),
            ]
        };
        let up = [true; 3];
        assert_eq!(check_converged(&NAMES, &up, &[0, 1, 2], &good()), Ok(()));

        let mut unlinked = good();
        unlinked[1] = Ok(view("node-2", 2, &all, &["node-1"]));
        assert_eq!(
            check_converged(&NAMES, &up, &[0, 1, 2], &unlinked),
            Err("node-2 is not linked to node-3".into())
        );

        let mut stale = good();
        stale[0] = Ok(view(
            "node-1",
            1,
            &[("node-1", 1), ("node-2", 9), ("node-3", 3)],
            &["node-2", "node-3"],
        ));
        assert!(
            check_converged(&NAMES, &up, &[0, 1, 2], &stale)
                .is_err_and(|e| e.contains("incarnation 9, not 2"))
        );

        // node-3 is down: the others must not list it, and only they are checked.
        let two = [("node-1", 1), ("node-2", 2)];
        let down = [true, true, false];
        let pair = vec![
            Ok(view("node-1", 1, &two, &["node-2"])),
            Ok(view("node-2", 2, &all, &["node-1"])),
        ];
        assert_eq!(
            check_converged(&NAMES, &down, &[0, 1], &pair),
            Err("node-2 still lists node-3, which is down".into())
        );
        let pair = vec![
            Ok(view("node-1", 1, &two, &["node-2"])),
            Ok(view("node-2", 2, &two, &["node-1"])),
        ];
        assert_eq!(check_converged(&NAMES, &down, &[0, 1], &pair), Ok(()));

        // A running node outside `among` (the wrong-secret case) may appear or not.
        let pair = vec![
            Ok(view("node-1", 1, &all, &["node-2"])),
            Ok(view("node-2", 2, &two, &["node-1"])),
        ];
        assert_eq!(check_converged(&NAMES, &up, &[0, 1], &pair), Ok(()));

        let failed = vec![Err("GET: 404".to_string())];
        assert_eq!(
            check_converged(&NAMES, &up, &[0], &failed),
            Err("GET: 404".into())
        );
    }
}
