//! Harness for multi-process cluster scenarios: starts real `realtime` node processes (the
//! built binary, see `testkit::node`) against one throwaway PostgreSQL and drives them with
//! clients from `testkit`. Nothing here is linked into the server, and the server library is
//! not linked here.

pub use testkit;

use testkit::Node;

/// Node processes sharing one metadata database of this process's throwaway PostgreSQL.
pub struct Nodes {
    /// The shared metadata database.
    pub db: String,
    /// The running nodes, named `node-1`, `node-2`, ... in this order.
    pub nodes: Vec<Node>,
}

impl Nodes {
    /// Starts `count` nodes at once on a fresh database, each on its own free port with
    /// `NODE_NAME=node-<i>`, the self-host tenant seeded, and `extra` variables (later win).
    pub async fn start(count: usize, extra: &[(&str, &str)]) -> Nodes {
        let db = testkit::fresh_database().await;
        let starts = (1..=count).map(|i| {
            let name = format!("node-{i}");
            let mut vars = vec![("SEED_SELF_HOST", "true"), ("NODE_NAME", name.as_str())];
            vars.extend_from_slice(extra);
            Node::start(testkit::vars(&db, &vars))
        });
        let nodes = futures::future::join_all(starts).await;
        Nodes { db, nodes }
    }
}

impl std::ops::Index<usize> for Nodes {
    type Output = Node;

    fn index(&self, i: usize) -> &Node {
        &self.nodes[i]
    }
}
