//! The tags filter of a subscribe (`tf`): a client's JSON subscribe command decoded
//! as the session does, its filter validated, then run against tags taken from the
//! rest of the input. Nothing may panic, an accepted filter stays within the node
//! and value bounds, and `not` inverts its child.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tidings::session::decode_command;
use tidings_protocol::filter::{matches, validate, MAX_NODES, MAX_VALUES};
use tidings_protocol::FilterNode;

fn count(node: &FilterNode, nodes: &mut usize, values: &mut usize) {
    *nodes += 1;
    *values += node.vals.len();
    for child in &node.nodes {
        count(child, nodes, values);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: the command; each later line `key=value` is a tag.
    let mut lines = text.lines();
    let Some(first) = lines.next() else {
        return;
    };
    let Ok(command) = decode_command(first) else {
        return;
    };
    let Some(tf) = command.subscribe.and_then(|s| s.tf) else {
        return;
    };
    if validate(&tf).is_err() {
        return;
    }
    let (mut nodes, mut values) = (0, 0);
    count(&tf, &mut nodes, &mut values);
    assert!(nodes <= MAX_NODES && values <= MAX_VALUES);
    let tags: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let matched = matches(&tf, Some(&tags));
    let not = FilterNode {
        op: "not".into(),
        nodes: vec![tf],
        ..Default::default()
    };
    assert_eq!(matches(&not, Some(&tags)), !matched);
});
