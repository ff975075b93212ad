//! Running pgbench and reading its summary.

use std::process::Command;

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub tps: f64,
    pub latency_ms: f64,
    pub transactions: u64,
    pub failed: u64,
}

/// Runs pgbench against `url`; `None` (with the output printed) when it
/// fails to run or reports no transactions.
pub fn run(url: &str, args: &[String]) -> Option<Outcome> {
    let output = Command::new("pgbench").args(args).arg(url).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let outcome = parse(&text);
    if outcome.is_none() || !output.status.success() {
        eprintln!("pgbench {args:?} failed:\n{text}");
    }
    outcome
}

fn value_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(prefix))
        .map(str::trim)
}

pub fn parse(text: &str) -> Option<Outcome> {
    let tps = value_after(text, "tps = ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let latency_ms = value_after(text, "latency average = ")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let transactions = value_after(text, "number of transactions actually processed: ")?
        .split('/')
        .next()?
        .trim()
        .parse()
        .ok()?;
    let failed = value_after(text, "number of failed transactions: ")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Outcome {
        tps,
        latency_ms,
        transactions,
        failed,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_a_summary() {
        let text = "number of transactions actually processed: 1234/1234\n\
                    number of failed transactions: 0 (0.000%)\n\
                    latency average = 0.810 ms\n\
                    tps = 12345.678901 (without initial connection time)\n";
        let outcome = super::parse(text).unwrap();
        assert_eq!(outcome.transactions, 1234);
        assert!((outcome.tps - 12345.678901).abs() < 1e-6);
        assert!((outcome.latency_ms - 0.81).abs() < 1e-9);
    }
}
