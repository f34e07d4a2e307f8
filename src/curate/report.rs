//! An inspection as people read it: a short summary for the terminal, and report.md with
//! examples of each finding (file, line and an excerpt of the text).

use std::fmt::Write as _;

use super::inspect::{Inspection, Leak, RowId};
use super::rows::DataFile;
use super::suspicious::Suspect;

/// Suspicious labels as the report shows them: the row, its label and the suggestion.
pub struct SuspectRow {
    pub row: RowId,
    pub suspect: Suspect,
    pub label: String,
    pub suggested: String,
}

/// One line per file and one per finding, with counts.
pub fn summary(files: &[DataFile], ins: &Inspection) -> String {
    let mut s = String::new();
    for f in &ins.files {
        let labels = f.labels.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ");
        let _ = write!(s, "{}: {} rows", f.name, f.rows);
        if !labels.is_empty() {
            let _ = write!(s, " ({labels}");
            if let Some(r) = f.imbalance_ratio {
                let _ = write!(s, "; imbalance {r:.2}:1");
            }
            s.push(')');
        }
        if f.unlabelled > 0 && !f.labels.is_empty() {
            let _ = write!(s, ", {} unlabelled", f.unlabelled);
        }
        let _ = writeln!(s, ", {} empty, {} junk", f.empty.len(), f.junk.len());
        if let Some(t) = &f.token_lengths {
            let _ = writeln!(
                s,
                "  tokens: median {}, p95 {}, max {}; {} longer than {} (truncated in training)",
                t.median, t.p95, t.max, t.over_max, t.max_len
            );
        }
    }
    let _ = writeln!(
        s,
        "exact duplicates: {} groups, {} redundant rows",
        ins.exact_duplicates.len(),
        ins.redundant_exact()
    );
    let _ = writeln!(
        s,
        "near duplicates (Jaccard >= {} on {}-word shingles): {} pairs of distinct texts",
        ins.near.threshold,
        ins.near.shingle,
        ins.near_duplicates.len()
    );
    let _ = writeln!(s, "label conflicts: {} duplicate clusters with more than one label", ins.label_conflicts.len());
    if files.len() > 1 {
        let exact = ins.file_leaks.iter().filter(|l| l.exact).count();
        let _ = writeln!(
            s,
            "leakage across files: {} rows duplicate a row of an earlier file ({exact} exactly, {} nearly)",
            ins.file_leaks.len(),
            ins.file_leaks.len() - exact
        );
        for (a, b, n) in leak_counts(ins, files.len()) {
            let _ = writeln!(s, "  {} -> {}: {n}", files[a].name(), files[b].name());
        }
    }
    if !ins.group_leaks.is_empty() {
        let exact = ins.group_leaks.iter().filter(|l| l.exact).count();
        let _ = writeln!(
            s,
            "leakage across groups: {} rows duplicate a row of another group ({exact} exactly)",
            ins.group_leaks.len()
        );
    }
    s
}

/// (earlier file, later file, rows of the later file with a copy in the earlier one).
fn leak_counts(ins: &Inspection, files: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for a in 0..files {
        for b in a + 1..files {
            let n = ins.file_leaks.iter().filter(|l| l.with.file == a && l.row.file == b).count();
            if n > 0 {
                out.push((a, b, n));
            }
        }
    }
    out
}

/// report.md: the summary, then up to `examples` examples of each finding.
pub fn markdown(files: &[DataFile], ins: &Inspection, suspects: Option<&[SuspectRow]>, examples: usize) -> String {
    let mut md = String::from("# Data inspection\n\n");
    let _ = writeln!(md, "```\n{}```", summary(files, ins));
    let row = |id: &RowId| &files[id.file].rows[id.row];
    let at = |id: &RowId| format!("{}:{}", files[id.file].name(), id.line);
    let label = |id: &RowId| row(id).label.clone().unwrap_or_else(|| "–".into());

    md.push_str(
        "\n## Files\n\n| file | rows | labels | imbalance | empty | junk | tokens (median / p95 / max) | over max |\n",
    );
    md.push_str("|---|---:|---|---:|---:|---:|---|---:|\n");
    for f in &ins.files {
        let labels = f.labels.iter().map(|(l, n)| format!("{} {n}", cell(l))).collect::<Vec<_>>().join(", ");
        let ratio = f.imbalance_ratio.map_or("–".into(), |r| format!("{r:.2}"));
        let (tokens, over) = match &f.token_lengths {
            Some(t) => (format!("{} / {} / {}", t.median, t.p95, t.max), format!("{} (> {})", t.over_max, t.max_len)),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {labels} | {ratio} | {} | {} | {tokens} | {over} |",
            f.name,
            f.rows,
            f.empty.len(),
            f.junk.len()
        );
    }
    for f in ins.files.iter().filter(|f| f.token_lengths.is_some()) {
        let t = f.token_lengths.as_ref().expect("filtered");
        let _ = writeln!(md, "\nToken lengths of {}:\n\n| tokens | rows |\n|---|---:|", f.name);
        for (from, to, n) in &t.histogram {
            let _ = writeln!(md, "| {from}–{} | {n} |", to - 1);
        }
    }

    let junk: Vec<(RowId, String)> = ins
        .files
        .iter()
        .flat_map(|f| {
            f.empty
                .iter()
                .map(|id| (*id, "empty".to_string()))
                .chain(f.junk.iter().map(|(id, j)| (*id, j.name().to_string())))
        })
        .collect();
    if !junk.is_empty() {
        let _ = writeln!(md, "\n## Empty and junk texts ({})\n\n| row | kind | text |\n|---|---|---|", junk.len());
        for (id, kind) in junk.iter().take(examples) {
            let _ = writeln!(md, "| {} | {kind} | {} |", at(id), excerpt(&row(id).text));
        }
    }
    if !ins.exact_duplicates.is_empty() {
        let _ = writeln!(
            md,
            "\n## Exact duplicates ({} groups, {} redundant rows)\n\n| rows | labels | text |\n|---|---|---|",
            ins.exact_duplicates.len(),
            ins.redundant_exact()
        );
        let mut groups: Vec<&Vec<RowId>> = ins.exact_duplicates.iter().collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
        for g in groups.iter().take(examples) {
            let _ =
                writeln!(md, "| {} | {} | {} |", rows_list(g, &at), labels_list(g, &label), excerpt(&row(&g[0]).text));
        }
    }
    if !ins.near_duplicates.is_empty() {
        let _ = writeln!(
            md,
            "\n## Near duplicates ({} pairs)\n\n| row | row | Jaccard | text | text |\n|---|---|---:|---|---|",
            ins.near_duplicates.len()
        );
        for p in ins.near_duplicates.iter().take(examples) {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {} | {} |",
                at(&p.a),
                at(&p.b),
                p.jaccard,
                excerpt(&row(&p.a).text),
                excerpt(&row(&p.b).text)
            );
        }
    }
    if !ins.label_conflicts.is_empty() {
        let _ = writeln!(
            md,
            "\n## Duplicates whose labels disagree ({} clusters)\n\n| rows | labels | text |\n|---|---|---|",
            ins.label_conflicts.len()
        );
        for g in ins.label_conflicts.iter().take(examples) {
            let _ =
                writeln!(md, "| {} | {} | {} |", rows_list(g, &at), labels_list(g, &label), excerpt(&row(&g[0]).text));
        }
    }
    for (title, leaks) in [("Leakage across files", &ins.file_leaks), ("Leakage across groups", &ins.group_leaks)] {
        if leaks.is_empty() {
            continue;
        }
        let _ =
            writeln!(md, "\n## {title} ({} rows)\n\n| row | copies | kind | text |\n|---|---|---|---|", leaks.len());
        for l in leaks.iter().take(examples) {
            let Leak { row: r, with, exact } = l;
            let group = |id: &RowId| row(id).group.as_ref().map_or(String::new(), |g| format!(" ({g})"));
            let _ = writeln!(
                md,
                "| {}{} | {}{} | {} | {} |",
                at(r),
                group(r),
                at(with),
                group(with),
                if *exact { "exact" } else { "near" },
                excerpt(&row(r).text)
            );
        }
    }
    if let Some(s) = suspects {
        let _ = writeln!(
            md,
            "\n## Suspicious labels ({} rows whose out-of-fold prediction is another label; lowest confidence first)\n\n\
             | row | label | p(label) | suggested | p(suggested) | text |\n|---|---|---:|---|---:|---|",
            s.len()
        );
        for r in s.iter().take(examples.max(20)) {
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} | {} | {:.3} | {} |",
                at(&r.row),
                cell(&r.label),
                r.suspect.self_confidence,
                cell(&r.suggested),
                r.suspect.suggested_probability,
                excerpt(&row(&r.row).text)
            );
        }
    }
    md
}

fn rows_list(rows: &[RowId], at: &dyn Fn(&RowId) -> String) -> String {
    let shown: Vec<String> = rows.iter().take(4).map(at).collect();
    let more = if rows.len() > 4 { format!(" and {} more", rows.len() - 4) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

fn labels_list(rows: &[RowId], label: &dyn Fn(&RowId) -> String) -> String {
    let mut labels: Vec<String> = rows.iter().map(label).collect();
    labels.sort();
    let mut counted: Vec<(String, usize)> = Vec::new();
    for l in labels {
        match counted.last_mut() {
            Some((last, n)) if *last == l => *n += 1,
            _ => counted.push((l, 1)),
        }
    }
    counted.iter().map(|(l, n)| format!("{} ×{n}", cell(l))).collect::<Vec<_>>().join(", ")
}

/// The first 80 characters of a text, on one line, safe in a table cell.
pub fn excerpt(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line.chars().take(80).collect();
    if one_line.chars().count() > 80 {
        out.push('…');
    }
    cell(&out)
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('`', "'")
}
