//! Which eligible node takes the next task of a group: spread preferences, then least-loaded nodes.
//!
//! The nodes form a tree by the values of the preference labels (outermost first; a node without the label sits
//! in the `""` branch, as in Swarm). Each task walks down the branch that holds the fewest tasks of the service,
//! and within the leaf takes the first node in the order (keeps failing, tasks of the service, tasks, index).

use std::collections::BTreeSet;
use std::collections::HashMap;

use super::filters;
use super::NodeInfo;

/// Orders the nodes of a leaf: nodes where the service keeps failing last, then the least loaded.
type NodeKey = (bool, u64, u64, usize);

struct Leaf {
    path: Vec<String>,
    queue: BTreeSet<NodeKey>,
}

struct Placed {
    leaf: usize,
    failing: bool,
}

pub struct Spread {
    /// Label descriptors (`node.labels.zone`), outermost first.
    preferences: Vec<String>,
    leaves: Vec<Leaf>,
    leaf_by_path: HashMap<Vec<String>, usize>,
    /// Node index → its leaf, for nodes that passed the static filters.
    nodes: HashMap<usize, Placed>,
    /// Tasks of the service under each branch (a path prefix), over nodes that passed the static filters.
    branch_tasks: HashMap<Vec<String>, u64>,
}

impl Spread {
    pub fn new(preferences: &[String]) -> Spread {
        let preferences = preferences
            .iter()
            .map(|p| match p.get(..7) {
                Some(head) if head.eq_ignore_ascii_case("spread=") => p[7..].trim().to_string(),
                _ => p.trim().to_string(),
            })
            .collect();
        Spread {
            preferences,
            leaves: Vec::new(),
            leaf_by_path: HashMap::new(),
            nodes: HashMap::new(),
            branch_tasks: HashMap::new(),
        }
    }

    /// Adds a node that passed the static filters; `eligible` when it passes all of them now.
    pub fn add_node(&mut self, index: usize, info: &NodeInfo, service: &str, failing: bool, eligible: bool) {
        let path: Vec<String> = self
            .preferences
            .iter()
            .map(|key| filters::label(info.node, key).unwrap_or("").to_string())
            .collect();
        let count = info.service_tasks(service);
        for level in 1..=path.len() {
            *self.branch_tasks.entry(path[..level].to_vec()).or_default() += count;
        }
        let leaf = match self.leaf_by_path.get(&path) {
            Some(&leaf) => leaf,
            None => {
                self.leaves.push(Leaf {
                    path: path.clone(),
                    queue: BTreeSet::new(),
                });
                self.leaf_by_path.insert(path, self.leaves.len() - 1);
                self.leaves.len() - 1
            }
        };
        if eligible {
            self.leaves[leaf]
                .queue
                .insert((failing, count, info.total_tasks, index));
        }
        self.nodes.insert(index, Placed { leaf, failing });
    }

    /// Takes the node for the next task out of its queue (put it back with [`Spread::assigned`]); `None` when no
    /// node can take it.
    pub fn pick(&mut self) -> Option<usize> {
        let mut candidates: Vec<usize> = (0..self.leaves.len())
            .filter(|&l| !self.leaves[l].queue.is_empty())
            .collect();
        for level in 1..=self.preferences.len() {
            let best = candidates
                .iter()
                .map(|&l| {
                    let prefix = &self.leaves[l].path[..level];
                    (self.branch_tasks.get(prefix).copied().unwrap_or(0), prefix)
                })
                .min()?
                .1;
            candidates.retain(|&l| self.leaves[l].path[..level] == *best);
        }
        let leaf = *candidates.first()?;
        self.leaves[leaf].queue.pop_first().map(|(_, _, _, index)| index)
    }

    /// Records a task placed on the node [`Spread::pick`] returned; `eligible` when it can take another.
    pub fn assigned(&mut self, index: usize, info: &NodeInfo, service: &str, eligible: bool) {
        let Some(placed) = self.nodes.get(&index) else { return };
        let leaf = &mut self.leaves[placed.leaf];
        for level in 1..=leaf.path.len() {
            *self.branch_tasks.entry(leaf.path[..level].to_vec()).or_default() += 1;
        }
        if eligible {
            leaf.queue
                .insert((placed.failing, info.service_tasks(service), info.total_tasks, index));
        }
    }
}
