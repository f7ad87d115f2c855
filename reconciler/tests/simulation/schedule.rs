//! The fault schedule: the steps a seed draws, and a model of the faults in force that says what Raft must do.
//!
//! The model is pure: it knows which nodes are down, isolated or held and which links are blocked, and from that
//! whether a majority can talk ([`Quorum`]). The simulation asserts liveness when [`Quorum::Clean`] and safety (no
//! acknowledged write) when [`Quorum::None`].

use std::collections::BTreeSet;
use std::fmt;

use swarm_reconciler::store::NodeId;

use super::rng::Rng;

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A client writes `k{n} = n` through a node that believes it leads; `pick` chooses among several believers.
    Write {
        n: u64,
        pick: u64,
    },
    /// Cut a node off from every other node, both ways.
    Isolate(NodeId),
    /// Undo [`Step::Isolate`].
    Rejoin(NodeId),
    /// Cut every link between these nodes (a minority) and the rest, both ways.
    Split(Vec<NodeId>),
    /// Drop the messages of one link, one way.
    Block(NodeId, NodeId),
    /// Hold a node's messages, both ways; they arrive late on release.
    Hold(NodeId),
    Release(NodeId),
    /// Shut a node's Raft down; its store stays on disk.
    Crash(NodeId),
    /// Start a crashed node again from its store.
    Restart(NodeId),
    /// Restore every link and release every held node (crashed nodes stay down).
    Heal,
    /// Let this many milliseconds pass under the current faults: timers fire, elections run.
    Idle(u64),
}

impl Step {
    pub fn is_fault(&self) -> bool {
        !matches!(self, Step::Write { .. } | Step::Idle(_))
    }

    /// The kind, for the summary's counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Write { .. } => "write",
            Step::Isolate(_) => "isolate",
            Step::Rejoin(_) => "rejoin",
            Step::Split(_) => "split",
            Step::Block(..) => "block",
            Step::Hold(_) => "hold",
            Step::Release(_) => "release",
            Step::Crash(_) => "crash",
            Step::Restart(_) => "restart",
            Step::Heal => "heal",
            Step::Idle(_) => "idle",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Write { n, pick } => write!(f, "write k{n} (pick {pick})"),
            Step::Isolate(id) => write!(f, "isolate {id}"),
            Step::Rejoin(id) => write!(f, "rejoin {id}"),
            Step::Split(minority) => write!(f, "split {minority:?} from the rest"),
            Step::Block(from, to) => write!(f, "block {from}->{to}"),
            Step::Hold(id) => write!(f, "hold {id}"),
            Step::Release(id) => write!(f, "release {id}"),
            Step::Crash(id) => write!(f, "crash {id}"),
            Step::Restart(id) => write!(f, "restart {id}"),
            Step::Heal => write!(f, "heal"),
            Step::Idle(ms) => write!(f, "idle {ms} ms"),
        }
    }
}

/// Whether the nodes that can talk form a majority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quorum {
    /// A majority of running nodes all talk to each other both ways, and no link joins them to anyone else: a
    /// write must succeed (after an election, if need be).
    Clean(Vec<NodeId>),
    /// No node has two-way links to a majority (itself included): no write can commit.
    None,
    /// Anything in between (one-way links, overlapping groups): Raft may or may not make progress.
    Partial,
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quorum::Clean(nodes) => write!(f, "majority {nodes:?}"),
            Quorum::None => write!(f, "no majority"),
            Quorum::Partial => write!(f, "partial"),
        }
    }
}

/// The faults in force, as the steps so far left them.
#[derive(Debug, Clone)]
pub struct Faults {
    pub nodes: Vec<NodeId>,
    pub down: BTreeSet<NodeId>,
    isolated: BTreeSet<NodeId>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    held: BTreeSet<NodeId>,
}

impl Faults {
    pub fn new(nodes: usize) -> Faults {
        Faults {
            nodes: (1..=nodes as NodeId).collect(),
            down: BTreeSet::new(),
            isolated: BTreeSet::new(),
            blocked: BTreeSet::new(),
            held: BTreeSet::new(),
        }
    }

    pub fn apply(&mut self, step: &Step) {
        match step {
            Step::Write { .. } | Step::Idle(_) => {}
            Step::Isolate(id) => {
                self.isolated.insert(*id);
            }
            Step::Rejoin(id) => {
                self.isolated.remove(id);
            }
            Step::Split(minority) => {
                for &x in minority {
                    for &y in self.nodes.iter().filter(|y| !minority.contains(y)) {
                        self.blocked.insert((x, y));
                        self.blocked.insert((y, x));
                    }
                }
            }
            Step::Block(from, to) => {
                self.blocked.insert((*from, *to));
            }
            Step::Hold(id) => {
                self.held.insert(*id);
            }
            Step::Release(id) => {
                self.held.remove(id);
            }
            Step::Crash(id) => {
                self.down.insert(*id);
            }
            Step::Restart(id) => {
                self.down.remove(id);
            }
            Step::Heal => {
                self.isolated.clear();
                self.blocked.clear();
                self.held.clear();
            }
        }
    }

    /// Whether a message from `from` reaches `to` now.
    fn link(&self, from: NodeId, to: NodeId) -> bool {
        let cut = |id: &NodeId| self.down.contains(id) || self.isolated.contains(id) || self.held.contains(id);
        from != to && !cut(&from) && !cut(&to) && !self.blocked.contains(&(from, to))
    }

    fn both_ways(&self, a: NodeId, b: NodeId) -> bool {
        self.link(a, b) && self.link(b, a)
    }

    fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    pub fn quorum(&self) -> Quorum {
        // Small clusters: try every group of nodes (2^5 at most).
        let n = self.nodes.len();
        for mask in 0u32..(1 << n) {
            let group: Vec<NodeId> = (0..n).filter(|i| mask & (1 << i) != 0).map(|i| self.nodes[i]).collect();
            if group.len() < self.majority() || group.iter().any(|id| self.down.contains(id)) {
                continue;
            }
            let talk = group
                .iter()
                .all(|&a| group.iter().all(|&b| a == b || self.both_ways(a, b)));
            let alone = group.iter().all(|&a| {
                self.nodes
                    .iter()
                    .filter(|b| !group.contains(b))
                    .all(|&b| !self.link(a, b) && !self.link(b, a))
            });
            if talk && alone {
                return Quorum::Clean(group);
            }
        }
        let reach = |a: NodeId| 1 + self.nodes.iter().filter(|&&b| self.both_ways(a, b)).count();
        if self
            .nodes
            .iter()
            .filter(|id| !self.down.contains(id))
            .all(|&a| reach(a) < self.majority())
        {
            return Quorum::None;
        }
        Quorum::Partial
    }

    /// Draws the next step. `leader` (the node that leads now, if any) is a likelier target: faults that hit the
    /// leader are the ones that make Raft work.
    pub fn next_step(&self, rng: &mut Rng, leader: Option<NodeId>, next_write: u64) -> Step {
        let up: Vec<NodeId> = self
            .nodes
            .iter()
            .copied()
            .filter(|id| !self.down.contains(id))
            .collect();
        let down: Vec<NodeId> = self.down.iter().copied().collect();
        let held: Vec<NodeId> = self.held.iter().copied().collect();
        let isolated: Vec<NodeId> = self.isolated.iter().copied().collect();
        let unheld: Vec<NodeId> = up.iter().copied().filter(|id| !self.held.contains(id)).collect();
        let cut = !self.isolated.is_empty() || !self.blocked.is_empty() || !self.held.is_empty();

        // (weight, kind); a kind with nothing to act on weighs 0.
        let weights = [
            (35, "write"),
            (7, "isolate"),
            (if isolated.is_empty() { 0 } else { 5 }, "rejoin"),
            (6, "split"),
            (6, "block"),
            (if unheld.is_empty() { 0 } else { 4 }, "hold"),
            (if held.is_empty() { 0 } else { 5 }, "release"),
            (if up.is_empty() { 0 } else { 7 }, "crash"),
            (4 * down.len() as u64, "restart"),
            (if cut { 8 } else { 0 }, "heal"),
            (6, "idle"),
        ];
        let total: u64 = weights.iter().map(|(w, _)| w).sum();
        let mut roll = rng.below(total);
        let kind = weights
            .iter()
            .find(|(w, _)| {
                if roll < *w {
                    return true;
                }
                roll -= w;
                false
            })
            .map(|(_, kind)| *kind)
            .expect("the roll is below the total");

        let all = &self.nodes;
        match kind {
            "write" => Step::Write {
                n: next_write,
                pick: rng.below(1000),
            },
            "isolate" => Step::Isolate(target(rng, all, leader)),
            "rejoin" => Step::Rejoin(rng.pick(&isolated)),
            "split" => {
                let size = 1 + rng.below(((all.len() - 1) / 2) as u64) as usize;
                let mut minority = Vec::new();
                if let Some(leader) = leader.filter(|_| rng.chance(50)) {
                    minority.push(leader);
                }
                while minority.len() < size {
                    let id = rng.pick(all);
                    if !minority.contains(&id) {
                        minority.push(id);
                    }
                }
                minority.sort_unstable();
                Step::Split(minority)
            }
            "block" => {
                let a = target(rng, all, leader);
                let others: Vec<NodeId> = all.iter().copied().filter(|id| *id != a).collect();
                let b = rng.pick(&others);
                if rng.chance(50) {
                    Step::Block(a, b)
                } else {
                    Step::Block(b, a)
                }
            }
            "hold" => Step::Hold(target(rng, &unheld, leader)),
            "release" => Step::Release(rng.pick(&held)),
            "crash" => Step::Crash(target(rng, &up, leader)),
            "restart" => Step::Restart(rng.pick(&down)),
            "heal" => Step::Heal,
            "idle" => Step::Idle(10 + rng.below(190)),
            _ => unreachable!("every kind above is matched"),
        }
    }
}

/// The leader half the time (if it is a candidate), otherwise any candidate.
fn target(rng: &mut Rng, candidates: &[NodeId], leader: Option<NodeId>) -> NodeId {
    match leader {
        Some(leader) if candidates.contains(&leader) && rng.chance(50) => leader,
        _ => rng.pick(candidates),
    }
}

#[test]
fn the_model_tells_a_clean_majority_from_none_and_partial() {
    let mut faults = Faults::new(3);
    assert_eq!(faults.quorum(), Quorum::Clean(vec![1, 2, 3]));
    faults.apply(&Step::Isolate(1));
    assert_eq!(faults.quorum(), Quorum::Clean(vec![2, 3]));
    faults.apply(&Step::Crash(2));
    assert_eq!(faults.quorum(), Quorum::None);
    faults.apply(&Step::Restart(2));
    faults.apply(&Step::Rejoin(1));
    faults.apply(&Step::Block(1, 2));
    // 1 and 3 talk, 2 and 3 talk, but 2 still reaches 1 one way: no clean majority, yet 3 can lead.
    assert_eq!(faults.quorum(), Quorum::Partial);
    faults.apply(&Step::Heal);
    faults.apply(&Step::Hold(3));
    assert_eq!(faults.quorum(), Quorum::Clean(vec![1, 2]));

    let mut five = Faults::new(5);
    five.apply(&Step::Split(vec![1, 2]));
    assert_eq!(five.quorum(), Quorum::Clean(vec![3, 4, 5]));
    five.apply(&Step::Crash(5));
    assert_eq!(five.quorum(), Quorum::None);
}
