//! Reading values out of Prometheus text exposition.

/// Sums every sample of `name` whose labels contain all of `labels`
/// (`[("method", "connect")]`). Returns `None` when no sample matches.
///
/// Summing makes the answer independent of extra labels the server may add.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value_text) = if let Some(inner) = rest.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                continue;
            };
            (&inner[..end], inner[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            // A longer metric name that merely starts with `name`.
            continue;
        };
        let wanted = labels.iter().all(|(key, value)| {
            label_text
                .split(',')
                .any(|pair| pair.trim() == format!("{key}=\"{value}\""))
        });
        if !wanted {
            continue;
        }
        let value = value_text.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn reads_plain_and_labelled_samples() {
        let text = "# TYPE tidings_connections gauge\n\
                    tidings_connections 3\n\
                    tidings_connections_extra 9\n\
                    tidings_commands_total{method=\"connect\"} 2\n\
                    tidings_commands_total{method=\"subscribe\",x=\"y\"} 5\n";
        assert_eq!(sample(text, "tidings_connections", &[]), Some(3.0));
        assert_eq!(
            sample(text, "tidings_commands_total", &[("method", "subscribe")]),
            Some(5.0)
        );
        assert_eq!(sample(text, "tidings_commands_total", &[]), Some(7.0));
        assert_eq!(sample(text, "tidings_missing", &[]), None);
    }
}
