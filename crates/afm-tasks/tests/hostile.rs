//! Hostile programs, generated from the tool language's grammar: mixed
//! types, extreme integers (`i64::MIN`, `**`, `//`, `%`), deep nesting,
//! empty collections, Unicode, self-application. Every one must end in a
//! value or a `ToolError` (never a panic), within fuel (never the wall-clock
//! backstop under the default limits), and give the same observation twice.
//!
//! Repeat with more programs: `AFM_HOSTILE_PROGRAMS=1000000 cargo test
//! -p afm-tasks --release --test hostile`.

use afm_format::SplitMix64;
use afm_tasks::{observation_text, run_program, run_to_observation, Limits, ToolError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

const INTS: [&str; 16] = [
    "0",
    "1",
    "-1",
    "2",
    "7",
    "10",
    "19",
    "63",
    "64",
    "9223372036854775807",
    "(-9223372036854775807 - 1)",
    "(10 ** 18)",
    "(2 ** 62)",
    "4294967296",
    "-3",
    "999999999999",
];
const STRS: [&str; 10] = [
    "\"\"",
    "\"a\"",
    "\"apple\"",
    "\"Größe\"",
    "\"日本語\"",
    "\"🦀🦀\"",
    "\"a b  c\"",
    "\"\\\"q\\\"\"",
    "\"\\n\\t\"",
    "\"ǅ\u{301}\"",
];
const NAMES: [&str; 3] = ["x", "y", "xs"];
const UNARY_BUILTINS: [&str; 14] = [
    "sum", "len", "max", "min", "sorted", "reversed", "upper", "lower", "range", "abs", "even",
    "odd", "str", "int",
];
const BINARY_BUILTINS: [&str; 7] = ["map", "filter", "count", "gcd", "lcm", "join", "range"];
const OPS: [&str; 14] = [
    "+", "-", "*", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=", "and", "or",
];

/// A random expression of nesting depth at most `depth`.
fn expr(rng: &mut SplitMix64, depth: usize) -> String {
    if depth == 0 || rng.chance(0.2) {
        return atom(rng);
    }
    let d = depth - 1;
    match rng.below_mod(13) {
        0 | 1 => format!("{} {} {}", expr(rng, d), rng.pick(&OPS), expr(rng, d)),
        2 => format!("({})", expr(rng, d)),
        3 => {
            let n = rng.below_mod(5);
            let items: Vec<String> = (0..n).map(|_| expr(rng, d)).collect();
            format!("[{}]", items.join(", "))
        }
        4 => format!("{}({})", rng.pick(&UNARY_BUILTINS), expr(rng, d)),
        5 => format!(
            "{}({}, {})",
            rng.pick(&BINARY_BUILTINS),
            expr(rng, d),
            expr(rng, d)
        ),
        6 => format!("{} => {}", rng.pick(&NAMES), expr(rng, d)),
        7 => format!(
            "let {} = {} in {}",
            rng.pick(&NAMES),
            expr(rng, d),
            expr(rng, d)
        ),
        8 => format!(
            "if {} then {} else {}",
            expr(rng, d),
            expr(rng, d),
            expr(rng, d)
        ),
        9 => format!("{}[{}]", expr(rng, d), expr(rng, d)),
        10 => format!("({})({})", expr(rng, d), expr(rng, d)),
        11 => format!("not {}", expr(rng, d)),
        _ => format!("-{}", expr(rng, d)),
    }
}

fn atom(rng: &mut SplitMix64) -> String {
    match rng.below_mod(9) {
        0..=2 => rng.pick(&INTS).to_string(),
        3 | 4 => rng.pick(&STRS).to_string(),
        5 => rng.pick(&NAMES).to_string(),
        6 => ["true", "false", "[]", "[[]]"][rng.below_mod(4)].to_string(),
        7 => rng.pick(&UNARY_BUILTINS).to_string(),
        _ => [
            "range(19)",
            "(f => f(f))",
            "\"ab\" * 5000",
            "[1, \"a\", [2]]",
            "sorted([19, \"a\"] + reversed(range(19)))",
            "[] * 10 ** 18",
            "(f => f(f))(f => f(f))",
        ][rng.below_mod(7)]
        .to_string(),
    }
}

/// Deeply nested programs of every bracket kind, beyond the nesting limit.
fn deep(rng: &mut SplitMix64) -> String {
    let n = 1 + rng.below_mod(400);
    match rng.below_mod(4) {
        0 => format!("{}1{}", "(".repeat(n), ")".repeat(n)),
        1 => format!("{}{}", "[".repeat(n), "]".repeat(n)),
        2 => format!("{}0", "-".repeat(n)),
        _ => format!("{}x", "x => ".repeat(n)),
    }
}

fn program(rng: &mut SplitMix64) -> String {
    if rng.chance(0.03) {
        deep(rng)
    } else {
        let depth = 1 + rng.below_mod(6);
        expr(rng, depth)
    }
}

#[test]
fn generated_hostile_programs_never_panic_hang_or_flip() {
    let count: usize = std::env::var("AFM_HOSTILE_PROGRAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // The default limits, with a deadline far beyond what fuel allows: a run
    // that reaches it escaped fuel (a loose clock keeps a loaded machine
    // from failing the test).
    let limits = Limits {
        max_millis: 30_000,
        ..Limits::default()
    };
    let mut rng = SplitMix64::new(0x5EED);
    let (mut values, mut errors) = (0usize, 0usize);
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    let mut slowest = (Duration::ZERO, String::new());
    let t0 = Instant::now();
    for i in 0..count {
        let src = program(&mut rng);
        let started = Instant::now();
        let first = catch_unwind(AssertUnwindSafe(|| run_program(&src, &limits)))
            .unwrap_or_else(|_| panic!("program #{i} panicked: {src}"));
        let took = started.elapsed();
        if took > slowest.0 {
            slowest = (took, src.clone());
        }
        match &first {
            Ok(_) => values += 1,
            Err(e) => {
                errors += 1;
                let kind = match e {
                    ToolError::Parse { .. } => "parse",
                    ToolError::Runtime(_) => "runtime",
                    ToolError::OutOfFuel { .. } => "fuel",
                    ToolError::TooDeep { .. } => "depth",
                    ToolError::TooLarge { .. } => "size",
                    ToolError::SourceTooLong { .. } => "source",
                    ToolError::Timeout { .. } => {
                        panic!("program #{i} escaped fuel and hit the wall clock: {src}")
                    }
                };
                *kinds.entry(kind).or_default() += 1;
            }
        }
        let a = observation_text(&first, &limits);
        let b = run_to_observation(&src, &limits);
        assert_eq!(a, b, "program #{i} gave two different observations: {src}");
    }
    eprintln!(
        "{count} programs in {:.1} s: {values} values, {errors} errors {kinds:?}; slowest {:.1} ms: {}",
        t0.elapsed().as_secs_f64(),
        slowest.0.as_secs_f64() * 1e3,
        slowest.1
    );
    // The generator must reach both outcomes and the interesting failures.
    assert!(
        values > count / 20,
        "too few programs ran to a value: {values}"
    );
    for kind in ["parse", "runtime", "fuel", "depth", "size"] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "no program ended in a {kind} error: {kinds:?}"
        );
    }
}

#[test]
fn the_wall_clock_deadline_stops_a_run_fuel_would_allow() {
    // Unlimited fuel: only the deadline can stop ~80M element steps.
    let limits = Limits {
        fuel: u64::MAX,
        max_millis: 50,
        ..Limits::default()
    };
    let t0 = Instant::now();
    let r = run_program("sum(map(x => sum(range(9000)), range(9000)))", &limits);
    assert_eq!(r, Err(ToolError::Timeout { millis: 50 }));
    // Loose: the ~80M steps would take minutes in a debug build.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert_eq!(
        run_to_observation("1 + 1", &limits),
        "2",
        "a quick run is untouched"
    );
}
