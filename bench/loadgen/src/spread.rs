//! Repeated runs summarised: the median of a figure over its repetitions,
//! its spread (lowest to highest), and whether two servers' figures differ
//! beyond their spreads.

use std::fmt;

/// One figure over the repetitions that produced it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Repetitions with the figure.
    pub n: usize,
}

impl Spread {
    /// The median, lowest and highest of `values` (NaNs left out); `None`
    /// when nothing is left.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// Whether the two ranges share a value (touching counts).
    pub fn overlaps(&self, other: &Spread) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// Whether one server's figure differs from another's beyond the spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The ranges do not overlap and the first server's is the better side.
    Better,
    /// The ranges do not overlap and the first server's is the worse side.
    Worse,
    /// The ranges overlap: the difference is within the run-to-run spread.
    WithinSpread,
    /// A side has fewer than two repetitions: no spread to judge by.
    OneRun,
    /// A side has no figure.
    Missing,
}

/// `a` against `b` (`a` is cable): beyond the spread when the two ranges
/// do not overlap; which way is better follows `higher_is_better`.
pub fn verdict(a: Option<Spread>, b: Option<Spread>, higher_is_better: bool) -> Verdict {
    let (Some(a), Some(b)) = (a, b) else {
        return Verdict::Missing;
    };
    if a.n < 2 || b.n < 2 {
        return Verdict::OneRun;
    }
    if a.overlaps(&b) {
        return Verdict::WithinSpread;
    }
    // No overlap: a is wholly above or wholly below b.
    if (a.min > b.max) == higher_is_better {
        Verdict::Better
    } else {
        Verdict::Worse
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Better => "yes, better",
            Verdict::Worse => "yes, worse",
            Verdict::WithinSpread => "no, within spread",
            Verdict::OneRun => "— (one run)",
            Verdict::Missing => "—",
        })
    }
}

/// `x` with `digits` decimals and its integer part in groups of three:
/// `8,092`, `1,234.5`, `-12,000`.
pub fn grouped(x: f64, digits: usize) -> String {
    let s = format!("{x:.digits$}");
    let (sign, s) = match s.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", s.as_str()),
    };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let mut out = String::from(sign);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// A table cell: `median (min–max)`, `value (—)` for one run, with
/// `; n of N runs` when some of the `runs` repetitions lack the figure
/// (a failed run); `—` with no figure at all.
pub fn cell(s: Option<Spread>, runs: usize, digits: usize) -> String {
    let Some(s) = s else {
        return "—".into();
    };
    let range = if s.n >= 2 {
        format!("{}–{}", grouped(s.min, digits), grouped(s.max, digits))
    } else {
        "—".into()
    };
    let missing = if s.n < runs {
        format!("; {} of {runs} runs", s.n)
    } else {
        String::new()
    };
    format!("{} ({range}{missing})", grouped(s.median, digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(v: &[f64]) -> Option<Spread> {
        Spread::of(v)
    }

    #[test]
    fn median_of_odd_and_even_counts_in_any_order() {
        let s = sp(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = sp(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
        let s = sp(&[7.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (7.0, 7.0, 7.0, 1));
        // An outlier moves the range, not the median.
        assert_eq!(sp(&[10.0, 11.0, 1000.0]).unwrap().median, 11.0);
        assert_eq!(sp(&[]), None);
        assert_eq!(sp(&[f64::NAN]), None);
        assert_eq!(sp(&[f64::NAN, 5.0, 1.0]).unwrap().median, 3.0);
    }

    #[test]
    fn verdict_needs_ranges_apart() {
        let hi = sp(&[10.0, 11.0, 12.0]);
        let lo = sp(&[7.0, 8.0, 9.0]);
        assert_eq!(verdict(hi, lo, true), Verdict::Better);
        assert_eq!(verdict(lo, hi, true), Verdict::Worse);
        // For latencies and memory lower is better.
        assert_eq!(verdict(hi, lo, false), Verdict::Worse);
        assert_eq!(verdict(lo, hi, false), Verdict::Better);
        // Overlapping or touching ranges are within the spread, even with
        // medians far apart.
        let wide = sp(&[1.0, 2.0, 10.0]);
        assert_eq!(verdict(hi, wide, true), Verdict::WithinSpread);
        assert_eq!(
            verdict(hi, sp(&[12.0, 13.0, 14.0]), true),
            Verdict::WithinSpread
        );
        assert_eq!(
            verdict(sp(&[0.0, 0.0]), sp(&[0.0, 0.0, 0.0]), false),
            Verdict::WithinSpread
        );
        // One run on either side: no spread to judge by.
        assert_eq!(verdict(sp(&[100.0]), lo, true), Verdict::OneRun);
        assert_eq!(verdict(hi, sp(&[1.0]), true), Verdict::OneRun);
        assert_eq!(verdict(None, lo, true), Verdict::Missing);
        assert_eq!(Verdict::Better.to_string(), "yes, better");
        assert_eq!(Verdict::Worse.to_string(), "yes, worse");
        assert_eq!(Verdict::WithinSpread.to_string(), "no, within spread");
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(8092.0, 0), "8,092");
        assert_eq!(grouped(999.0, 0), "999");
        assert_eq!(grouped(1_234_567.891, 2), "1,234,567.89");
        assert_eq!(grouped(-1234.5, 1), "-1,234.5");
        assert_eq!(grouped(999.96, 1), "1,000.0");
        assert_eq!(grouped(0.93, 2), "0.93");
        assert_eq!(grouped(100000.0, 0), "100,000");
    }

    #[test]
    fn cells_show_median_and_range() {
        assert_eq!(
            cell(sp(&[8240.0, 7950.0, 8092.0]), 3, 0),
            "8,092 (7,950–8,240)"
        );
        assert_eq!(cell(sp(&[8092.0]), 1, 0), "8,092 (—)");
        assert_eq!(cell(sp(&[1.0, 2.0]), 3, 1), "1.5 (1.0–2.0; 2 of 3 runs)");
        assert_eq!(cell(sp(&[3.0]), 3, 0), "3 (—; 1 of 3 runs)");
        assert_eq!(cell(None, 3, 0), "—");
    }
}
