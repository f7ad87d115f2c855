//! Naming nodes on the command line: a full id, a unique id prefix or a hostname; an ambiguous prefix is refused.

use std::collections::BTreeMap;

use crate::harness::Cluster;

/// The shortest prefix of `id` that no other id starts with.
fn unique_prefix(id: &str, all: &[String]) -> String {
    (1..=id.len())
        .map(|n| &id[..n])
        .find(|p| all.iter().filter(|other| other.starts_with(p)).count() == 1)
        .expect("ids are distinct")
        .to_string()
}

#[test]
fn nodes_are_named_by_unique_id_prefix_or_hostname_and_an_ambiguous_prefix_is_refused() {
    let mut c = Cluster::new();
    c.init("m1");
    let w1 = c.join_worker("w1");
    c.wait_all_ready();
    let ids: Vec<String> = c.node_ls("m1").into_iter().map(|r| r.id).collect();
    let prefix = unique_prefix(&w1, &ids);
    assert!(prefix.len() < w1.len());

    for name in [prefix.as_str(), "w1", w1.as_str()] {
        let node = c.inspect("m1", name);
        assert_eq!(node["id"], w1.as_str(), "`node inspect {name}`");
    }
    let run = c
        .swarm("m1", &["node", "update", "--label-add", "by=prefix", &prefix])
        .ok();
    assert_eq!(run.stdout.trim(), w1);
    let run = c.run("m1", "node update --availability drain w1").ok();
    assert_eq!(run.stdout.trim(), w1);
    let node = c.inspect("m1", &w1);
    assert_eq!(
        (node["labels"]["by"].as_str(), node["availability"].as_str()),
        (Some("prefix"), Some("drain"))
    );

    // Ids are random: add nodes until two share their first character (at most 16 digits can lead an id).
    let mut by_first: BTreeMap<char, Vec<String>> = BTreeMap::new();
    for id in [c.id("m1"), w1.clone()] {
        by_first.entry(id.chars().next().unwrap()).or_default().push(id);
    }
    let mut extra = 0;
    while by_first.values().all(|ids| ids.len() < 2) {
        extra += 1;
        assert!(extra <= 16, "17 random ids and no shared first character: {by_first:?}");
        let id = c.join_worker(&format!("x{extra}"));
        by_first.entry(id.chars().next().unwrap()).or_default().push(id);
    }
    let (first, twins) = by_first
        .iter()
        .find(|(_, ids)| ids.len() >= 2)
        .expect("a shared first character");
    let ambiguous = first.to_string();

    c.swarm("m1", &["node", "inspect", &ambiguous]).fails_with("ambiguous");
    c.swarm("m1", &["node", "update", "--label-add", "which=one", &ambiguous])
        .fails_with("ambiguous");
    for id in twins {
        let node = c.inspect("m1", id);
        assert!(
            node["labels"].get("which").is_none(),
            "an ambiguous update changed {id}: {node}"
        );
    }
    c.run("m1", "node inspect nosuchnode")
        .fails_with("node nosuchnode not found");
}
