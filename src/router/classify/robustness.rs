//! Robustness of the classifier: random, truncated and adversarial input
//! never panics or overflows the stack, and the limits hold.

use super::tests::CASES;
use super::*;
use Kind::{Read, Unparsable};

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn random_and_truncated_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let corpus: Vec<&str> = CASES.iter().map(|(sql, _)| *sql).collect();
    let mut checked = 0;
    // Every prefix of every case (at char boundaries).
    for sql in &corpus {
        for (at, _) in sql.char_indices() {
            let got = classify(&sql[..at]);
            assert!(got.statements <= 1, "{:?}", &sql[..at]);
            checked += 1;
        }
    }
    // Random bytes, biased towards what SQL's lexer cares about.
    const PIECES: &[&str] = &[
        "'",
        "\"",
        "$",
        "$$",
        "$a$",
        ";",
        "--",
        "/*",
        "*/",
        "\\",
        "E'",
        "(",
        ")",
        "[",
        "]",
        ",",
        "::",
        " ",
        "\n",
        "SELECT",
        "FROM",
        "FOR",
        "UPDATE",
        "NO",
        "KEY",
        "SHARE",
        "WITH",
        "AS",
        "INSERT",
        "DELETE",
        "BEGIN",
        "SET",
        "pgrouter",
        ".",
        "route",
        "=",
        "1",
        "t",
        "f(",
        "TABLE",
        "INTO",
        "TEMP",
        "é",
        "\u{0}",
        "pgrouter: replica",
        "CASE",
        "WHEN",
        "END",
    ];
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..rng.below(24) {
            if rng.below(4) == 0 {
                text.push(char::from(rng.below(128) as u8));
            } else {
                text.push_str(PIECES[rng.below(PIECES.len())]);
            }
        }
        let _ = classify(&text);
        checked += 1;
    }
    // Random splices of the corpus.
    for _ in 0..1000 {
        let a = corpus[rng.below(corpus.len())];
        let b = corpus[rng.below(corpus.len())];
        let cut_a = a
            .char_indices()
            .nth(rng.below(a.len()))
            .map_or(a.len(), |(i, _)| i);
        let cut_b = b
            .char_indices()
            .nth(rng.below(b.len()))
            .map_or(0, |(i, _)| i);
        let _ = classify(&format!("{}{}", &a[..cut_a], &b[cut_b..]));
        checked += 1;
    }
    // Arbitrary bytes, made valid UTF-8.
    for _ in 0..1000 {
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        let _ = classify(&String::from_utf8_lossy(&bytes));
        checked += 1;
    }
    assert!(checked > 5000);
}

#[test]
fn deeply_nested_input_does_not_overflow_the_stack() {
    let n = 100_000;
    let texts = [
        format!("SELECT {}1", "(".repeat(n)),
        format!("SELECT 1{}", " + 1".repeat(n)),
        format!("SELECT 1{}", "::int".repeat(n / 4)),
        format!("SELECT x{}", "[1]".repeat(n / 2)),
        format!("SELECT {}1", "- ".repeat(n)),
        format!("SELECT {}true", "NOT ".repeat(n / 2)),
        format!("SELECT {}1", "CASE WHEN true THEN ".repeat(n / 20)),
        format!("SELECT 1{}", " UNION SELECT 1".repeat(n / 15)),
        format!("SELECT * FROM t{}", " JOIN t ON true".repeat(n / 15)),
        format!("SELECT {}", "f(".repeat(n)),
        format!("SELECT 1 WHERE {}", "a = 1 OR ".repeat(n / 10) + "true"),
    ];
    for text in &texts {
        // Small stacks, as on runtime worker threads.
        let text = text.clone();
        let got = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || classify(&text))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got.statements, 1);
    }
    let huge = format!("SELECT 1{}", " + 1".repeat(MAX_PARSE_LEN / 4 + 1));
    assert_eq!(classify(&huge).kind, Unparsable);
}

/// The stack estimate holds for the shapes that need the most stack per
/// byte or per bracket: each runs on a thread with exactly the estimated
/// stack (an overflow would abort the test run).
#[test]
fn the_stack_estimate_covers_adversarial_shapes() {
    fn nest(open: &str, inner: &str, close: &str, n: usize) -> String {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    }
    let mut texts = Vec::new();
    for n in [1, 5, 10, 15, 20, 31, 33, 40, 64, 65] {
        texts.extend([
            nest("SELECT * FROM (", "SELECT 1", ") x", n),
            nest("SELECT (", "SELECT 1", ")", n),
            nest("SELECT * FROM t, LATERAL (SELECT * FROM t", "", ") x", n),
            nest("SELECT * FROM (", "VALUES (1)", ") x", n),
            nest("(SELECT 1 UNION ", "SELECT 1", ")", n),
            nest("SELECT * FROM (t JOIN ", "t", " ON true)", n),
            nest("WITH a AS (", "SELECT 1", ") SELECT 1", n),
            nest("SELECT 1 WHERE EXISTS (SELECT 1 WHERE ", "true", ")", n),
            nest("SELECT CASE WHEN true THEN ", "1", " END", n),
            nest("SELECT f(", "1", ") OVER (ORDER BY 1)", n),
            nest("SELECT ARRAY[", "1", "]", n),
            nest("SELECT (", "1", ")", n),
            format!("SELECT {}true", "NOT ".repeat(n)),
            format!("SELECT {}1", "- ".repeat(n)),
        ]);
    }
    for n in [10, 100, 1000, 4095, 4097, 20_000] {
        texts.extend([
            format!("SELECT 1{}", "+1".repeat(n)),
            format!("SELECT 1 WHERE {}true", "a OR ".repeat(n)),
            format!("SELECT 1{}", "::int".repeat(n)),
            format!("SELECT x{}", "[1]".repeat(n)),
            format!("SELECT 1{}", " UNION SELECT 1".repeat(n)),
            format!("SELECT * FROM t{}", " JOIN t ON true".repeat(n)),
        ]);
    }
    for text in texts {
        let scan = scan::scan(&text);
        let [piece] = scan.pieces.as_slice() else {
            panic!("one statement expected: {text}");
        };
        if piece.depth > MAX_BRACKET_DEPTH {
            continue;
        }
        let stack = piece::stack_needed(piece);
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || piece::classify_here(&text))
            .unwrap()
            .join()
            .unwrap();
    }
}

#[test]
fn limits_make_statements_unparsable() {
    let chain = |n: usize| format!("SELECT 1 WHERE {}true", "a OR ".repeat(n));
    assert_eq!(classify(&chain(MAX_EXPR_DEPTH - 10)).kind, Read);
    assert_eq!(classify(&chain(MAX_EXPR_DEPTH + 10)).kind, Unparsable);
    let parens = |n: usize| format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(classify(&parens(20)).kind, Read);
    assert_eq!(classify(&parens(MAX_BRACKET_DEPTH + 1)).kind, Unparsable);
    let subqueries = |n: usize| format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n));
    assert_eq!(classify(&subqueries(10)).kind, Read);
    assert_eq!(
        classify(&subqueries(PARSER_RECURSION_LIMIT)).kind,
        Unparsable
    );
    let long = format!("SELECT 1{}", ", 1".repeat(MAX_PARSE_LEN / 3));
    assert_eq!(classify(&long).kind, Unparsable);
    // A long flat statement is read (on a helper thread).
    let in_list = format!("SELECT * FROM t WHERE id IN (1{})", ", 1".repeat(100_000));
    assert_eq!(classify(&in_list).kind, Read);
}
