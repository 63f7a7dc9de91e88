//! Lines of several MB (Magentic-One logs carry base64 screenshots in their
//! observations): JSONL is batched by bytes, so what a batch holds stays
//! bounded however long the lines are, and every record is still read, in
//! order, byte for byte.
#![cfg(feature = "pipeline")]

mod common;

use afm_data::ingest::{for_each_batch, read_file, BatchInfo, BatchSize, Format, IngestLimits};
use afm_data::{prepare, PrepareConfig};
use afm_format::StepKind;
use common::Lcg;
use std::io::Write;
use std::path::Path;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A base64 "screenshot" of `n` bytes (a PNG header, then seeded noise).
fn screenshot(n: usize, rng: &mut Lcg) -> String {
    let mut s = String::with_capacity(n);
    s.push_str("iVBORw0KGgo");
    while s.len() < n {
        let x = rng.next();
        for k in 0..5 {
            if s.len() < n {
                s.push(B64[((x >> (6 * k)) & 63) as usize] as char);
            }
        }
    }
    s
}

/// FNV-1a, to compare multi-MB texts without keeping them.
fn fnv(s: &str) -> u64 {
    afm_format::fnv1a(s.as_bytes(), 0)
}

/// Writes `n` Magentic-One-like records; every `big_every`-th carries a
/// screenshot of `min_mb..=max_mb` MB in its observation. Returns per
/// record (id, observation length, observation hash).
fn write_log(
    path: &Path,
    n: usize,
    big_every: usize,
    (min_mb, max_mb): (usize, usize),
    seed: u64,
) -> Vec<(String, usize, u64)> {
    let mut rng = Lcg(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut want = Vec::new();
    for i in 0..n {
        let obs = if i % big_every == 0 {
            let mb = min_mb + rng.below((max_mb - min_mb + 1) as u64) as usize;
            let extra = rng.below(1 << 19) as usize;
            format!(
                "screenshot: data:image/png;base64,{}",
                screenshot((mb << 20) + extra, &mut rng)
            )
        } else {
            format!("page title: result {i}")
        };
        let id = format!("m1-{i}");
        let r = serde_json::json!({
            "id": id,
            "task": format!("Find the opening hours of shop {i}."),
            "trajectory": [
                {"agent": "Orchestrator", "output": format!("WebSurfer, open the page of shop {i}.")},
                {"agent": "WebSurfer", "observation": obs},
                {"agent": "Orchestrator", "output": "The shop opens at 9."},
            ],
            "success": true,
        });
        writeln!(f, "{r}").unwrap();
        want.push((id, obs.len(), fnv(&obs)));
    }
    f.flush().unwrap();
    want
}

fn observation(t: &afm_format::Trajectory) -> &str {
    let s = &t.steps[1];
    assert_eq!(s.kind, StepKind::Observation);
    &s.text
}

#[test]
fn multi_mb_lines_are_batched_by_bytes_and_read_exactly() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("magentic.jsonl");
    // 16 records, 8 of them with a 4-8 MB screenshot (~50 MB in all).
    let want = write_log(&p, 16, 2, (4, 7), 7);
    let file_len = std::fs::metadata(&p).unwrap().len();
    let limits = IngestLimits {
        max_field_bytes: 16 << 20,
        ..Default::default()
    };
    let size = BatchSize {
        max_bytes: 12 << 20,
        max_records: 4096,
    };
    let mut got = Vec::new();
    let mut infos: Vec<(usize, BatchInfo)> = Vec::new();
    for_each_batch(&p, Format::Auto, &limits, size, |b, info| {
        infos.push((b.len(), info));
        for r in b {
            let t = r
                .result
                .unwrap_or_else(|e| panic!("{}: {}", r.loc, e.message));
            let o = observation(&t);
            got.push((t.id.clone(), o.len(), fnv(o), r.loc.line.unwrap()));
        }
    })
    .unwrap();
    // Every record, in order, byte for byte, with its line number.
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!((&g.0, g.1, g.2), (&w.0, w.1, w.2), "record {i}");
        assert_eq!(g.3, i + 1);
    }
    // Bounded: a batch never holds more than the budget plus one line, and
    // holds more than the budget only when it is a single line.
    assert!(infos.len() >= 4, "{infos:?}");
    let mut prev = 0u64;
    for (n, info) in &infos {
        assert!(info.held_bytes <= size.max_bytes + info.largest, "{info:?}");
        assert!(info.held_bytes <= size.max_bytes || *n == 1, "{n} {info:?}");
        // What the batch held is what was read since the last batch (no blank lines here).
        assert_eq!(info.bytes_read - prev, info.held_bytes as u64, "{info:?}");
        prev = info.bytes_read;
    }
    assert_eq!(prev, file_len);
    assert_eq!(infos.iter().map(|x| x.0).sum::<usize>(), want.len());

    // The record-count bound still applies to short lines.
    let mut counts = Vec::new();
    let small = BatchSize {
        max_bytes: 64 << 20,
        max_records: 3,
    };
    for_each_batch(&p, Format::Native, &limits, small, |b, info| {
        counts.push(b.len());
        assert!(info.held_bytes <= small.max_bytes + info.largest);
    })
    .unwrap();
    assert_eq!(counts, vec![3, 3, 3, 3, 3, 1]);

    // The default batch size reads the same records.
    let all = read_file(&p, Format::Auto, &limits).unwrap();
    assert_eq!(all.len(), want.len());
    assert!(all.iter().all(|r| r.result.is_ok()));
}

#[test]
fn lines_over_the_record_limit_hold_nothing_and_are_rejected_by_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.jsonl");
    // 6 records; records 0, 3 carry 4-5 MB screenshots: over a 3 MiB record limit.
    let want = write_log(&p, 6, 3, (4, 4), 11);
    let limits = IngestLimits {
        max_field_bytes: 16 << 20,
        max_record_bytes: 3 << 20,
    };
    let mut reasons = Vec::new();
    for_each_batch(
        &p,
        Format::Native,
        &limits,
        BatchSize::default(),
        |b, info| {
            // Only the short lines are held.
            assert!(info.held_bytes < 4096, "{info:?}");
            for r in b {
                reasons.push((
                    r.loc.line.unwrap(),
                    r.result.err().map(|e| (e.reason.key(), e.message)),
                ));
            }
        },
    )
    .unwrap();
    assert_eq!(reasons.len(), want.len());
    for (line, r) in &reasons {
        if (line - 1) % 3 == 0 {
            let (k, msg) = r.as_ref().unwrap();
            assert_eq!(*k, "record_too_long");
            assert!(msg.contains(&(3usize << 20).to_string()), "{msg}");
        } else {
            assert!(r.is_none(), "line {line}: {r:?}");
        }
    }
}

#[test]
fn prepare_accounts_for_every_multi_mb_record() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.jsonl");
    // 12 records, 4 with screenshots over the default 1 MiB field limit.
    write_log(&p, 12, 3, (4, 5), 3);
    let out = d.path().join("out");
    let m = prepare(&PrepareConfig {
        inputs: vec![p],
        out: out.clone(),
        val_fraction: 0.0,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(m.total, 12);
    assert_eq!(m.kept, 8, "{:?} {:?}", m.filtered, m.rejected);
    assert_eq!(m.rejected.get("field_too_long"), Some(&4));
    let rejects = std::fs::read_to_string(out.join("rejects.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["line"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 4, 7, 10]
    );
    for l in &lines {
        let msg = l["message"].as_str().unwrap();
        assert!(msg.contains("trajectory[1].observation"), "{msg}");
        assert!(l["file"].as_str().unwrap().ends_with("m.jsonl"));
    }
}

/// Peak-RSS probe (run by hand; see the crate README, "Measured"):
/// `AFM_RSS_DIR=DIR AFM_RSS_MB=200 /usr/bin/time -v target/debug/deps/big_lines-HASH --ignored --exact rss_probe --nocapture`.
/// Writes DIR/screens.jsonl (~AFM_RSS_MB MB of 5 MB lines) when absent, then
/// runs `prepare` on it (`AFM_RSS_MODE=prepare`, default), or only reads it
/// with batches of `AFM_RSS_BATCH_MB` MB (`AFM_RSS_MODE=read`; 0 = no byte
/// bound: 4096 lines, the old rule).
#[test]
#[ignore]
fn rss_probe() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let dir = std::path::PathBuf::from(env("AFM_RSS_DIR", "/tmp/afm-rss"));
    let mb: usize = env("AFM_RSS_MB", "200").parse().unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("screens.jsonl");
    if !input.exists() {
        write_log(&input, mb / 5, 1, (5, 5), 1);
    }
    let len = std::fs::metadata(&input).unwrap().len();
    let hwm = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("")
            .to_string()
    };
    eprintln!("input {} bytes; before: {}", len, hwm());
    match env("AFM_RSS_MODE", "prepare").as_str() {
        "read" => {
            let batch_mb: usize = env("AFM_RSS_BATCH_MB", "64").parse().unwrap();
            let size = BatchSize {
                max_bytes: if batch_mb == 0 {
                    usize::MAX
                } else {
                    batch_mb << 20
                },
                max_records: 4096,
            };
            let limits = IngestLimits {
                max_field_bytes: 16 << 20,
                ..Default::default()
            };
            let (mut n, mut ok, mut most) = (0, 0, 0);
            for_each_batch(&input, Format::Auto, &limits, size, |b, info| {
                n += b.len();
                ok += b.iter().filter(|r| r.result.is_ok()).count();
                most = most.max(info.held_bytes);
            })
            .unwrap();
            eprintln!("read {n} records ({ok} valid); largest batch held {most} bytes");
        }
        _ => {
            let m = prepare(&PrepareConfig {
                inputs: vec![input],
                out: dir.join("out"),
                allow_empty: true,
                ..Default::default()
            })
            .unwrap();
            eprintln!(
                "prepare: total {} kept {} rejected {:?}",
                m.total, m.kept, m.rejected
            );
        }
    }
    eprintln!("after: {}", hwm());
}
