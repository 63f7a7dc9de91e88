//! `afm tool run`: the agents' tool by hand, same observation as the runtimes.

mod common;
use common::afm;

#[test]
fn tool_run_prints_the_agents_observation() {
    let (ok, out, err) = afm(&["tool", "run", "sum(map(x => x * x, [3, 1, 4]))"]);
    assert!(ok, "{err}");
    assert_eq!(out, "26\n");
    // Hostile programs end in an observation, never a crash or a hang.
    for (src, want) in [
        (
            "sorted([19, \"a\"] + reversed(range(19)))",
            "error: cannot compare",
        ),
        ("[] * 10 ** 18", "error: step limit exceeded"),
        ("1 +", "error: parse error"),
    ] {
        let (ok, out, err) = afm(&["tool", "run", src]);
        assert!(ok, "{src}: {err}");
        assert!(out.starts_with(want), "{src}: {out}");
        assert_eq!(
            out.trim_end(),
            afm_tasks::run_to_observation(src, &afm_tasks::Limits::default()),
            "{src}"
        );
    }
}

#[test]
fn tool_run_json_file_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.txt");
    std::fs::write(&f, "let xs = [5, 2, 8] in max(xs) - min(xs)\n").unwrap();
    let (ok, out, err) = afm(&["tool", "run", "--json", "--file", f.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["observation"], "6");
    assert_eq!(v["ok"], true);
    assert_eq!(v["internal_error"], serde_json::Value::Null);
    assert_eq!(v["limits"]["fuel"], 100_000);
    // A smaller fuel limit is honoured.
    let (ok, out, _) = afm(&["tool", "run", "--json", "--fuel", "10", "sum(range(100))"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["observation"], "error: step limit exceeded (10 steps)");
    // A missing file is a clear error naming it.
    let (ok, _, err) = afm(&["tool", "run", "--file", "/nonexistent/p.txt"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/p.txt"), "{err}");
}
