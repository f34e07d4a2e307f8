//! Classification metrics from gold and predicted class ids, with scikit-learn's conventions:
//! a ratio whose denominator is 0 is 0 (`zero_division=0`), and macro-F1 averages over every
//! one of the `n_classes` classes, including those absent from gold or never predicted.
//!
//! For class `c`: `tp` = gold `c` predicted `c`, `fp` = predicted `c` but gold other, `fn` = gold
//! `c` predicted other; precision = tp / (tp + fp), recall = tp / (tp + fn),
//! F1 = 2·tp / (2·tp + fp + fn) (the harmonic mean of the two, and 0 when both are 0).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The scores of one class.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Gold examples of this class.
    pub support: usize,
}

/// The scores of a set of predictions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub macro_f1: f64,
    /// By class id.
    pub per_class: Vec<ClassScore>,
    /// `confusion[gold][pred]`: how many examples of gold class `gold` were predicted `pred`.
    pub confusion: Vec<Vec<usize>>,
    /// Examples scored.
    pub count: usize,
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 { 0.0 } else { num as f64 / den as f64 }
}

/// Checks that `gold` and `pred` pair up and hold ids below `n_classes`.
fn check_ids(op: &'static str, gold: &[usize], pred: &[usize], n_classes: usize) -> Result<()> {
    if gold.len() != pred.len() {
        return Err(Error::invalid(op, format!("{} gold labels but {} predictions", gold.len(), pred.len())));
    }
    for (name, ids) in [("gold", gold), ("predicted", pred)] {
        if let Some((i, id)) = ids.iter().enumerate().find(|&(_, &id)| id >= n_classes) {
            return Err(Error::invalid(
                op,
                format!("{name} class {id} at example {i} is not below n_classes {n_classes}"),
            ));
        }
    }
    Ok(())
}

impl Metrics {
    /// Scores `pred` against `gold`, both class ids in `0..n_classes`, one per example. An
    /// error if the lengths differ or an id is out of range.
    pub fn compute(gold: &[usize], pred: &[usize], n_classes: usize) -> Result<Metrics> {
        check_ids("Metrics::compute", gold, pred, n_classes)?;
        let mut confusion = vec![vec![0usize; n_classes]; n_classes];
        for (&g, &p) in gold.iter().zip(pred) {
            confusion[g][p] += 1;
        }
        let per_class: Vec<ClassScore> = (0..n_classes)
            .map(|c| {
                let tp = confusion[c][c];
                let support: usize = confusion[c].iter().sum();
                let predicted: usize = confusion.iter().map(|row| row[c]).sum();
                let (fp, fn_) = (predicted - tp, support - tp);
                ClassScore {
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                    f1: ratio(2 * tp, 2 * tp + fp + fn_),
                    support,
                }
            })
            .collect();
        let correct: usize = (0..n_classes).map(|c| confusion[c][c]).sum();
        let macro_f1 =
            if n_classes == 0 { 0.0 } else { per_class.iter().map(|s| s.f1).sum::<f64>() / n_classes as f64 };
        Ok(Metrics { accuracy: ratio(correct, gold.len()), macro_f1, per_class, confusion, count: gold.len() })
    }

    /// A table in the shape of scikit-learn's `classification_report` (4 digits), followed by
    /// the confusion matrix with gold classes as rows and predicted classes as columns. `names`
    /// are the class names by id; a class without one is shown by its id.
    pub fn report(&self, names: &[String]) -> String {
        let n = self.per_class.len();
        let name = |c: usize| names.get(c).cloned().unwrap_or_else(|| c.to_string());
        let width = (0..n).map(|c| name(c).chars().count()).max().unwrap_or(0).max("macro avg".len());
        let mean = |f: fn(&ClassScore) -> f64| {
            if n == 0 { 0.0 } else { self.per_class.iter().map(f).sum::<f64>() / n as f64 }
        };

        let mut out = String::new();
        let _ = writeln!(out, "{:>width$}  {:>9} {:>9} {:>9} {:>9}", "", "precision", "recall", "f1-score", "support");
        out.push('\n');
        for (c, s) in self.per_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>width$}  {:>9.4} {:>9.4} {:>9.4} {:>9}",
                name(c),
                s.precision,
                s.recall,
                s.f1,
                s.support
            );
        }
        out.push('\n');
        let _ = writeln!(out, "{:>width$}  {:>9} {:>9} {:>9.4} {:>9}", "accuracy", "", "", self.accuracy, self.count);
        let _ = writeln!(
            out,
            "{:>width$}  {:>9.4} {:>9.4} {:>9.4} {:>9}",
            "macro avg",
            mean(|s| s.precision),
            mean(|s| s.recall),
            self.macro_f1,
            self.count
        );

        out.push_str("\nconfusion matrix (rows: gold, columns: predicted)\n");
        let row_width = (0..n).map(|c| name(c).chars().count()).max().unwrap_or(0);
        let widest_count = self.confusion.iter().flatten().max().map_or(1, |m| m.to_string().len());
        let col_width = (0..n).map(|c| name(c).chars().count()).max().unwrap_or(0).max(widest_count);
        let _ = write!(out, "{:>row_width$}", "");
        for c in 0..n {
            let _ = write!(out, "  {:>col_width$}", name(c));
        }
        out.push('\n');
        for (g, row) in self.confusion.iter().enumerate() {
            let _ = write!(out, "{:>row_width$}", name(g));
            for count in row {
                let _ = write!(out, "  {count:>col_width$}");
            }
            out.push('\n');
        }
        out
    }
}

/// Correct predictions out of the examples of one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupScore {
    pub correct: usize,
    pub total: usize,
}

impl GroupScore {
    /// `correct / total`, 0 for an empty group.
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct, self.total)
    }
}

/// Accuracy within each group of examples (e.g. SpamAssassin's `hard-ham-1`, whose accuracy is
/// the recall of ham on hard ham); examples without a group are skipped. An error if the three
/// slices differ in length.
pub fn group_accuracy(
    gold: &[usize],
    pred: &[usize],
    groups: &[Option<String>],
) -> Result<BTreeMap<String, GroupScore>> {
    if gold.len() != pred.len() || gold.len() != groups.len() {
        return Err(Error::invalid(
            "group_accuracy",
            format!(
                "{} gold labels, {} predictions and {} groups; expected one each per example",
                gold.len(),
                pred.len(),
                groups.len()
            ),
        ));
    }
    let mut scores: BTreeMap<String, GroupScore> = BTreeMap::new();
    for ((g, p), group) in gold.iter().zip(pred).zip(groups) {
        if let Some(group) = group {
            let score = scores.entry(group.clone()).or_default();
            score.total += 1;
            score.correct += (g == p) as usize;
        }
    }
    Ok(scores)
}

/// The full scores ([`Metrics`]) within each group of examples (ELPV's cell types); examples
/// without a group are skipped. An error if the three slices differ in length.
pub fn group_metrics(
    gold: &[usize],
    pred: &[usize],
    groups: &[Option<String>],
    n_classes: usize,
) -> Result<BTreeMap<String, Metrics>> {
    // The same length check as group_accuracy's.
    group_accuracy(gold, pred, groups)?;
    let mut by: BTreeMap<String, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for ((g, p), group) in gold.iter().zip(pred).zip(groups) {
        if let Some(group) = group {
            let e = by.entry(group.clone()).or_default();
            e.0.push(*g);
            e.1.push(*p);
        }
    }
    by.into_iter().map(|(name, (g, p))| Ok((name, Metrics::compute(&g, &p, n_classes)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    fn close(found: f64, expected: f64) -> bool {
        (found - expected).abs() <= EPS
    }

    /// Compares every class's precision, recall, F1 (to `EPS`) and support.
    fn assert_scores(m: &Metrics, expected: &[(f64, f64, f64, usize)]) {
        assert_eq!(m.per_class.len(), expected.len());
        for (c, (s, &(p, r, f, n))) in m.per_class.iter().zip(expected).enumerate() {
            assert!(
                close(s.precision, p) && close(s.recall, r) && close(s.f1, f) && s.support == n,
                "class {c}: found {s:?}, expected precision {p} recall {r} f1 {f} support {n}"
            );
        }
    }

    #[test]
    fn three_classes_by_hand() {
        // Confusion [gold][pred]:   pred 0  1  2     precision        recall     F1 = 2tp/(2tp+fp+fn)
        //   gold 0                       2  1  1     2/3              2/4        4/7
        //   gold 1                       1  1  0     1/2              1/2        2/4
        //   gold 2                       0  0  3     3/4              3/3        6/7
        // accuracy 6/9, macro-F1 (4/7 + 1/2 + 6/7)/3 = 9/14. scikit-learn 1.9 agrees:
        //   precision_recall_fscore_support(g, y) -> [.6667 .5 .75], [.5 .5 1.], [.5714 .5 .8571]
        //   f1_score(g, y, average="macro") -> 0.6428571428571428
        let gold = [0, 0, 0, 0, 1, 1, 2, 2, 2];
        let pred = [0, 0, 1, 2, 1, 0, 2, 2, 2];
        let m = Metrics::compute(&gold, &pred, 3).unwrap();
        assert_eq!(m.confusion, vec![vec![2, 1, 1], vec![1, 1, 0], vec![0, 0, 3]]);
        assert_scores(&m, &[(2.0 / 3.0, 0.5, 4.0 / 7.0, 4), (0.5, 0.5, 0.5, 2), (0.75, 1.0, 6.0 / 7.0, 3)]);
        assert!(close(m.accuracy, 6.0 / 9.0), "{}", m.accuracy);
        assert!(close(m.macro_f1, 9.0 / 14.0), "{}", m.macro_f1);
        assert_eq!(m.count, 9);
    }

    #[test]
    fn a_class_never_predicted_scores_zero() {
        // Class 2 has two gold examples and no predictions: precision 0/0 -> 0, recall 0/2.
        let m = Metrics::compute(&[0, 1, 2, 2], &[0, 1, 1, 0], 3).unwrap();
        assert_scores(&m, &[(0.5, 1.0, 2.0 / 3.0, 1), (0.5, 1.0, 2.0 / 3.0, 1), (0.0, 0.0, 0.0, 2)]);
        assert!(close(m.accuracy, 0.5) && close(m.macro_f1, 4.0 / 9.0), "{m:?}");
    }

    #[test]
    fn a_class_absent_from_gold_still_counts_in_macro_f1() {
        // Class 2 is predicted once but never gold (precision 0/1, recall 0/0); class 3 is in
        // neither. Macro-F1 averages over all four: (2/3 + 1 + 0 + 0) / 4 = 5/12, as
        // f1_score(g, y, labels=[0, 1, 2, 3], average="macro", zero_division=0) gives.
        let m = Metrics::compute(&[0, 0, 1, 1], &[0, 2, 1, 1], 4).unwrap();
        assert_scores(&m, &[(1.0, 0.5, 2.0 / 3.0, 2), (1.0, 1.0, 1.0, 2), (0.0, 0.0, 0.0, 0), (0.0, 0.0, 0.0, 0)]);
        assert!(close(m.accuracy, 0.75) && close(m.macro_f1, 5.0 / 12.0), "{m:?}");
        assert_eq!(m.confusion[0], [1, 0, 1, 0]);
    }

    #[test]
    fn empty_input_and_bad_ids() {
        let m = Metrics::compute(&[], &[], 2).unwrap();
        assert_eq!((m.accuracy, m.macro_f1, m.count), (0.0, 0.0, 0));
        assert_eq!(m.confusion, vec![vec![0, 0], vec![0, 0]]);

        let err = Metrics::compute(&[0, 1], &[0], 2).unwrap_err().to_string();
        assert!(err.contains("2 gold labels but 1 predictions"), "{err}");
        let err = Metrics::compute(&[0, 1], &[0, 5], 2).unwrap_err().to_string();
        assert!(err.contains("predicted class 5 at example 1 is not below n_classes 2"), "{err}");
        let err = Metrics::compute(&[3], &[0], 2).unwrap_err().to_string();
        assert!(err.contains("gold class 3"), "{err}");
    }

    #[test]
    fn report_reads_like_sklearn() {
        let m = Metrics::compute(&[0, 0, 0, 0, 1, 1, 2, 2, 2], &[0, 0, 1, 2, 1, 0, 2, 2, 2], 3).unwrap();
        let names: Vec<String> = ["ham", "spam", "eggs"].map(String::from).to_vec();
        // The numbers and columns of scikit-learn's classification_report(..., digits=4) on the
        // same data, less its "weighted avg" row (so the name column is three characters narrower).
        let expected = [
            "           precision    recall  f1-score   support",
            "",
            "      ham     0.6667    0.5000    0.5714         4",
            "     spam     0.5000    0.5000    0.5000         2",
            "     eggs     0.7500    1.0000    0.8571         3",
            "",
            " accuracy                         0.6667         9",
            "macro avg     0.6389    0.6667    0.6429         9",
            "",
            "confusion matrix (rows: gold, columns: predicted)",
            "       ham  spam  eggs",
            " ham     2     1     1",
            "spam     1     1     0",
            "eggs     0     0     3",
            "",
        ]
        .join("\n");
        assert_eq!(m.report(&names), expected, "\n{}", m.report(&names));
        // Missing names fall back to ids.
        assert!(m.report(&names[..2]).contains("\n        2     0.7500"), "{}", m.report(&names[..2]));
    }

    #[test]
    fn accuracy_per_group_skips_ungrouped() {
        let group = |g: &str| Some(g.to_string());
        let groups = [group("hard-ham-1"), group("hard-ham-1"), None, group("spam-1"), group("hard-ham-1")];
        let scores = group_accuracy(&[0, 0, 0, 1, 0], &[0, 1, 1, 1, 0], &groups).unwrap();
        assert_eq!(scores.len(), 2);
        assert_eq!(scores["hard-ham-1"], GroupScore { correct: 2, total: 3 });
        assert!(close(scores["hard-ham-1"].accuracy(), 2.0 / 3.0));
        assert_eq!(scores["spam-1"], GroupScore { correct: 1, total: 1 });
        assert_eq!(GroupScore::default().accuracy(), 0.0);
        let err = group_accuracy(&[0], &[0], &[]).unwrap_err().to_string();
        assert!(err.contains("1 gold labels, 1 predictions and 0 groups"), "{err}");
    }

    #[test]
    fn metrics_per_group_score_apart() {
        let groups = [Some("a".to_string()), Some("a".into()), Some("b".into()), None];
        let m = group_metrics(&[0, 1, 1, 0], &[0, 0, 1, 1], &groups, 2).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m["a"].accuracy, m["a"].count, m["b"].accuracy), (0.5, 2, 1.0));
        assert_eq!(m["a"].per_class[1].recall, 0.0);
    }
}
