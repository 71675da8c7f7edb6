//! Publication tags filters: the `tf` of a subscribe request.
//!
//! A filter is a tree of [`FilterNode`]s. A leaf (`op` empty) compares one tag of
//! the publication with `val` or `vals`; `and`, `or` and `not` combine their
//! children. The operators and what each needs are Centrifugo's:
//!
//! | `cmp` | true when | needs |
//! |---|---|---|
//! | `eq` / `neq` | the tag is / is not `val` (a missing tag is "not") | `key`, `val` |
//! | `in` / `nin` | the tag's value (empty when missing) is / is not one of `vals` | `key`, `vals` |
//! | `ex` / `nex` | the tag is present / absent | `key` |
//! | `sw`, `ew`, `ct` | the tag starts with, ends with, contains `val` | `key`, `val` |
//! | `gt`, `gte`, `lt`, `lte` | both the tag and `val` are decimal numbers and compare so | `key`, `val` |
//!
//! [`validate`] checks a filter once, when the client subscribes; [`matches`] then
//! runs for each publication and never fails.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::FilterNode;

/// Most nodes one filter may have. Each publication runs the filter once per
/// filtering subscriber, so its size is bounded like every other client input.
pub const MAX_NODES: usize = 128;
/// Most values (`vals` entries, summed over the tree) one filter may have.
pub const MAX_VALUES: usize = 1024;

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tags filter: {0}")]
pub struct InvalidFilter(&'static str);

/// Checks that a filter is well formed and within [`MAX_NODES`] and [`MAX_VALUES`].
///
/// # Errors
/// [`InvalidFilter`] naming the first problem found.
pub fn validate(filter: &FilterNode) -> Result<(), InvalidFilter> {
    let mut nodes = 0;
    let mut values = 0;
    check(filter, &mut nodes, &mut values)
}

fn check(node: &FilterNode, nodes: &mut usize, values: &mut usize) -> Result<(), InvalidFilter> {
    *nodes += 1;
    *values += node.vals.len();
    if *nodes > MAX_NODES {
        return Err(InvalidFilter("too many nodes"));
    }
    if *values > MAX_VALUES {
        return Err(InvalidFilter("too many values"));
    }
    match node.op.as_str() {
        "" => {
            let has_val = !node.val.is_empty();
            let has_vals = !node.vals.is_empty();
            let ok = match node.cmp.as_str() {
                "eq" | "neq" | "sw" | "ew" | "ct" | "gt" | "gte" | "lt" | "lte" => {
                    has_val && !has_vals
                }
                "in" | "nin" => has_vals && !has_val,
                "ex" | "nex" => !has_val && !has_vals,
                "" => return Err(InvalidFilter("a comparison needs cmp")),
                _ => return Err(InvalidFilter("unknown cmp")),
            };
            if !ok {
                return Err(InvalidFilter("val or vals do not fit cmp"));
            }
            if node.key.is_empty() && !matches!(node.cmp.as_str(), "ex" | "nex") {
                return Err(InvalidFilter("a comparison needs key"));
            }
            if !node.nodes.is_empty() {
                return Err(InvalidFilter("a comparison has no child nodes"));
            }
            Ok(())
        }
        "and" | "or" => {
            if node.nodes.is_empty() {
                return Err(InvalidFilter("and/or need a child node"));
            }
            node.nodes.iter().try_for_each(|c| check(c, nodes, values))
        }
        "not" => {
            if node.nodes.len() != 1 {
                return Err(InvalidFilter("not needs exactly one child node"));
            }
            check(&node.nodes[0], nodes, values)
        }
        _ => Err(InvalidFilter("unknown op")),
    }
}

/// Whether a publication with `tags` passes a [`validate`]d filter.
pub fn matches(filter: &FilterNode, tags: Option<&BTreeMap<String, String>>) -> bool {
    match filter.op.as_str() {
        "" => leaf(
            filter,
            tags.and_then(|t| t.get(&filter.key)).map(String::as_str),
        ),
        "and" => filter.nodes.iter().all(|c| matches(c, tags)),
        "or" => filter.nodes.iter().any(|c| matches(c, tags)),
        "not" => filter.nodes.first().is_some_and(|c| !matches(c, tags)),
        _ => false,
    }
}

fn leaf(node: &FilterNode, value: Option<&str>) -> bool {
    let val = node.val.as_str();
    match node.cmp.as_str() {
        "eq" => value == Some(val),
        "neq" => value != Some(val),
        "in" => node.vals.iter().any(|v| v == value.unwrap_or("")),
        "nin" => !node.vals.iter().any(|v| v == value.unwrap_or("")),
        "ex" => value.is_some(),
        "nex" => value.is_none(),
        "sw" => value.is_some_and(|v| v.starts_with(val)),
        "ew" => value.is_some_and(|v| v.ends_with(val)),
        "ct" => value.is_some_and(|v| v.contains(val)),
        cmp @ ("gt" | "gte" | "lt" | "lte") => {
            let Some(order) = value.and_then(|v| compare_decimals(v, val)) else {
                return false;
            };
            match cmp {
                "gt" => order == Ordering::Greater,
                "gte" => order != Ordering::Less,
                "lt" => order == Ordering::Less,
                _ => order != Ordering::Greater,
            }
        }
        _ => false,
    }
}

/// A decimal number as text: sign, integer digits without leading zeros, fraction
/// digits without trailing zeros.
struct Decimal<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
}

fn parse_decimal(s: &str) -> Option<Decimal<'_>> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    // Zero has no sign.
    let negative = negative && !(int.is_empty() && frac.is_empty());
    Some(Decimal {
        negative,
        int,
        frac,
    })
}

/// Compares two decimal numbers exactly (no rounding through floats); `None` when
/// either is not a number.
fn compare_decimals(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse_decimal(a)?, parse_decimal(b)?);
    let magnitude = a
        .int
        .len()
        .cmp(&b.int.len())
        .then_with(|| a.int.cmp(b.int))
        .then_with(|| a.frac.cmp(b.frac));
    Some(match (a.negative, b.negative) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_node(key: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode {
            key: key.into(),
            cmp: cmp.into(),
            val: val.into(),
            ..Default::default()
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn comparisons_follow_centrifugo() {
        let t = tags(&[("ticker", "BTC"), ("price", "100.50"), ("n", "-3")]);
        let t = Some(&t);
        assert!(matches(&leaf_node("ticker", "eq", "BTC"), t));
        assert!(!matches(&leaf_node("ticker", "eq", "ETH"), t));
        assert!(matches(&leaf_node("missing", "neq", "x"), t));
        assert!(matches(&leaf_node("ticker", "sw", "B"), t));
        assert!(matches(&leaf_node("ticker", "ew", "TC"), t));
        assert!(matches(&leaf_node("ticker", "ct", "T"), t));
        assert!(!matches(&leaf_node("missing", "ct", "T"), t));
        assert!(matches(&leaf_node("price", "gt", "100.4"), t));
        assert!(matches(&leaf_node("price", "gte", "100.5"), t));
        assert!(!matches(&leaf_node("price", "lt", "100.5"), t));
        assert!(matches(&leaf_node("price", "lte", "100.500"), t));
        assert!(matches(&leaf_node("n", "lt", "-2.9"), t));
        assert!(matches(&leaf_node("n", "gt", "-10"), t));
        assert!(!matches(&leaf_node("ticker", "gt", "1"), t), "not a number");
        let ex = FilterNode {
            key: "ticker".into(),
            cmp: "ex".into(),
            ..Default::default()
        };
        assert!(matches(&ex, t));
        assert!(!matches(&ex, None));
        let within = FilterNode {
            key: "ticker".into(),
            cmp: "in".into(),
            vals: vec!["ETH".into(), "BTC".into()],
            ..Default::default()
        };
        assert!(matches(&within, t));
        let not = FilterNode {
            op: "not".into(),
            nodes: vec![within.clone()],
            ..Default::default()
        };
        assert!(!matches(&not, t));
        let and = FilterNode {
            op: "and".into(),
            nodes: vec![within, leaf_node("price", "gt", "1000")],
            ..Default::default()
        };
        assert!(!matches(&and, t));
        let or = FilterNode {
            op: "or".into(),
            ..and
        };
        assert!(matches(&or, t));
    }

    #[test]
    fn malformed_and_oversized_filters_are_refused() {
        assert!(validate(&leaf_node("k", "eq", "v")).is_ok());
        assert!(validate(&leaf_node("k", "eq", "")).is_err(), "eq needs val");
        assert!(validate(&leaf_node("", "eq", "v")).is_err(), "needs key");
        assert!(validate(&leaf_node("k", "like", "v")).is_err());
        assert!(validate(&leaf_node("k", "", "v")).is_err());
        let xor = FilterNode {
            op: "xor".into(),
            nodes: vec![leaf_node("k", "eq", "v")],
            ..Default::default()
        };
        assert!(validate(&xor).is_err());
        let empty_and = FilterNode {
            op: "and".into(),
            ..Default::default()
        };
        assert!(validate(&empty_and).is_err());
        let wide = FilterNode {
            op: "or".into(),
            nodes: vec![leaf_node("k", "eq", "v"); MAX_NODES],
            ..Default::default()
        };
        assert!(validate(&wide).is_err());
        let many_vals = FilterNode {
            key: "k".into(),
            cmp: "in".into(),
            vals: vec!["v".into(); MAX_VALUES + 1],
            ..Default::default()
        };
        assert!(validate(&many_vals).is_err());
    }

    #[test]
    fn decimals_compare_exactly() {
        assert_eq!(
            compare_decimals("9007199254740993", "9007199254740992"),
            Some(Ordering::Greater)
        );
        assert_eq!(compare_decimals("-0", "0.000"), Some(Ordering::Equal));
        assert_eq!(compare_decimals("007.10", "7.1"), Some(Ordering::Equal));
        assert_eq!(compare_decimals("1e3", "1"), None);
        assert_eq!(compare_decimals(".5", "0.4"), Some(Ordering::Greater));
        assert_eq!(compare_decimals("-", "1"), None);
    }
}
