//! Merges the expositions of several nodes into one text: each family's `# HELP` and `# TYPE`
//! once, followed by the samples of every node (each node labels its own series with `node`,
//! so no two samples collide).

/// A family being merged: name, `# HELP` line, `# TYPE` line, samples.
type Family = (String, Option<String>, Option<String>, Vec<String>);

/// Merges Prometheus text expositions (as [`super::NodeMetrics::render`] writes them) into one,
/// families in order of first appearance. Samples that appear before any `# TYPE` line of
/// theirs are kept under an untyped family of their own name.
pub fn merge_expositions<S: AsRef<str>>(texts: &[S]) -> String {
    let mut families: Vec<Family> = Vec::new();
    let mut position = std::collections::HashMap::<String, usize>::new();
    let mut find = |families: &mut Vec<Family>, name: &str| {
        *position.entry(name.to_string()).or_insert_with(|| {
            families.push((name.to_string(), None, None, Vec::new()));
            families.len() - 1
        })
    };
    for text in texts {
        let mut current: Option<usize> = None;
        for line in text.as_ref().lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                let at = find(&mut families, name);
                families[at].1.get_or_insert_with(|| line.to_string());
                current = Some(at);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                let at = find(&mut families, name);
                families[at].2.get_or_insert_with(|| line.to_string());
                current = Some(at);
            } else if line.starts_with('#') {
                continue;
            } else {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..name_end];
                // Histogram and summary samples carry suffixes of their family's name.
                let at = match current {
                    Some(at) if name.starts_with(families[at].0.as_str()) => at,
                    _ => find(&mut families, name),
                };
                families[at].3.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for (_, help, kind, samples) in families {
        if samples.is_empty() {
            continue;
        }
        for line in help.iter().chain(kind.iter()).chain(samples.iter()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_appear_once_with_the_samples_of_every_node() {
        let a = "# HELP realtime_x_total X\n# TYPE realtime_x_total counter\nrealtime_x_total{node=\"a\"} 1\n\
                 # HELP realtime_y Y\n# TYPE realtime_y gauge\nrealtime_y{node=\"a\"} 2\n";
        let b = "# HELP realtime_x_total X\n# TYPE realtime_x_total counter\nrealtime_x_total{node=\"b\"} 3\n\
                 # HELP realtime_z Z\n# TYPE realtime_z gauge\nrealtime_z{node=\"b\"} 4\n";
        assert_eq!(
            merge_expositions(&[a, b]),
            "# HELP realtime_x_total X\n# TYPE realtime_x_total counter\n\
             realtime_x_total{node=\"a\"} 1\nrealtime_x_total{node=\"b\"} 3\n\
             # HELP realtime_y Y\n# TYPE realtime_y gauge\nrealtime_y{node=\"a\"} 2\n\
             # HELP realtime_z Z\n# TYPE realtime_z gauge\nrealtime_z{node=\"b\"} 4\n"
        );
        assert_eq!(merge_expositions::<&str>(&[]), "");
    }
}
