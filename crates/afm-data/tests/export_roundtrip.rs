//! Text exports and back: native fixtures -> each writer -> the importer
//! -> the same turns (agent, kind, text) where the format carries them, and
//! exactly the documented difference where it does not; then `prepare` on
//! the native input and on the export gives byte-identical shards (as far
//! as the format carries the record), and a prepared dataset gives its
//! records back.

use afm_data::export::{axolotl, coa, native, prepared, sharegpt};
use afm_data::ingest::{convert, normalise, read_file, Format, IngestLimits};
use afm_data::{prepare, AgentWeights, AgentsMap, PrepareConfig};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/export/native.jsonl")
}

/// The fixture's records as read (no agents map).
fn records() -> Vec<Trajectory> {
    read_file(&fixture(), Format::Native, &IngestLimits::default())
        .unwrap()
        .into_iter()
        .map(|p| p.result.unwrap())
        .collect()
}

/// The fixture's records normalised by the default agents map (what
/// `afm convert` and `prepare` work on).
fn normalised() -> Vec<Trajectory> {
    records()
        .into_iter()
        .map(|t| normalise(t, &AgentsMap::default()).unwrap())
        .collect()
}

fn read_back(v: &Value, fmt: Format) -> Trajectory {
    // Auto-detection picks the format the export is meant for.
    let auto = convert(v, Format::Auto, &IngestLimits::default(), "dflt")
        .unwrap_or_else(|e| panic!("{e:?}: {v}"));
    let named = convert(v, fmt, &IngestLimits::default(), "dflt").unwrap();
    assert_eq!(auto, named, "auto-detection gives {fmt:?}");
    named
}

fn only(agent: &str) -> AgentWeights {
    AgentWeights {
        only: Some(agent.into()),
        ..Default::default()
    }
}

fn trained(w: &AgentWeights) -> impl Fn(&Step) -> bool + '_ {
    move |s: &Step| s.kind == StepKind::Agent && w.weight(&s.agent) > 0.0
}

#[test]
fn native_round_trip_keeps_every_field() {
    for t in records() {
        let line = native::line(&t);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(read_back(&v, Format::Native), t);
        // The schema's field order.
        assert!(line.starts_with("{\"id\":"), "{line}");
    }
}

/// ShareGPT keeps every turn up to the last trained one (agent, kind,
/// text), the task, id, success, score and answer; it drops the steps after
/// the last trained turn and `meta`.
#[test]
fn sharegpt_round_trip() {
    for w in [AgentWeights::default(), only("Coder"), only("WebSurfer")] {
        for t in records() {
            let Some(v) = sharegpt::record(&t, &w) else {
                assert!(!t.steps.iter().any(trained(&w)), "{}: no row", t.id);
                continue;
            };
            let back = read_back(&v, Format::Sharegpt);
            let last = t.steps.iter().rposition(trained(&w)).unwrap();
            assert_eq!(back.steps, t.steps[..=last], "{} with {w:?}", t.id);
            assert_eq!(
                (&back.task, &back.id, back.success, back.score, &back.answer),
                (&t.task, &t.id, t.success, t.score, &t.answer)
            );
            assert_eq!(back.meta, None);
            check_llama_factory_shape(&v, &t, &w);
        }
    }
}

/// The rules of LLaMA-Factory's `SharegptDatasetConverter`: human or
/// observation at odd positions, gpt or function_call at even ones, an
/// even count; every trained turn on the even side, nothing else there.
fn check_llama_factory_shape(v: &Value, t: &Trajectory, w: &AgentWeights) {
    let conv = v["conversations"].as_array().unwrap();
    assert!(conv.len() >= 2, "{v}");
    assert_eq!(conv.len() % 2, 0, "an even count: {v}");
    for (i, m) in conv.iter().enumerate() {
        let from = m["from"].as_str().unwrap();
        if i % 2 == 0 {
            assert!(["human", "observation"].contains(&from), "{i}: {v}");
        } else {
            assert!(["gpt", "function_call"].contains(&from), "{i}: {v}");
        }
    }
    assert!(conv[0]["value"].as_str().unwrap().starts_with(&t.task));
    // Trained turns (even side) are exactly the agent turns of weight > 0.
    let mut even = Vec::new();
    for m in conv.iter().skip(1).step_by(2) {
        let val = m["value"].as_str().unwrap();
        if m["from"] == "function_call" {
            even.push(m["agent"].as_str().unwrap().to_string());
        } else {
            let (pre, marked) = split(val);
            assert!(pre.is_empty(), "{val}");
            even.extend(marked.into_iter().map(|(k, a)| {
                assert_eq!(k, StepKind::Agent);
                a
            }));
        }
    }
    let want: Vec<String> = t
        .steps
        .iter()
        .filter(|s| trained(w)(s))
        .map(|s| s.agent.clone())
        .collect();
    assert_eq!(even, want);
}

/// (text before the first marker, markers) of a ShareGPT value, through
/// the importer itself (a one-message row).
fn split(val: &str) -> (String, Vec<(StepKind, String)>) {
    let v = serde_json::json!({"conversations": [
        {"from": "human", "value": format!("task{val}")}
    ]});
    match convert(&v, Format::Sharegpt, &IngestLimits::default(), "x") {
        Ok(t) => (
            t.task["task".len()..].to_string(),
            t.steps.into_iter().map(|s| (s.kind, s.agent)).collect(),
        ),
        // No marker: no step (an empty trajectory is rejected).
        Err(_) => (val.to_string(), Vec::new()),
    }
}

#[test]
fn sharegpt_rows_spelled_out() {
    let ts = records();
    let w = AgentWeights::default();
    // Consecutive turns of two agents merge into one gpt message; the
    // tool's observation is its own message; the row ends on the last
    // trained turn.
    let v = sharegpt::record(&ts[0], &w).unwrap();
    assert_eq!(
        v["conversations"],
        serde_json::json!([
            {"from": "human", "value": "Add 2 and 3, then check the sum."},
            {"from": "gpt", "value": "<|agent:Planner|>Coder: add the numbers. Reviewer: check.<|agent:Coder|>x = 2 + 3\nprint(x)"},
            {"from": "observation", "value": "<|obs:python|>5"},
            {"from": "gpt", "value": "<|agent:Reviewer|>The sum 5 is correct. ANSWER: 5"},
        ])
    );
    // A turn that is one call with compact JSON arguments is a
    // function_call (agent kept in `agent`); spaced arguments would not
    // read back the same, so that turn stays gpt text.
    let v = sharegpt::record(&ts[1], &w).unwrap();
    let c = &v["conversations"];
    assert_eq!(c[1]["from"], "function_call");
    assert_eq!(c[1]["agent"], "WebSurfer");
    let call: Value = serde_json::from_str(c[1]["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        call,
        serde_json::json!({"name": "search", "arguments": {"q": "Dune author"}})
    );
    assert_eq!(c[3]["from"], "gpt");
    assert!(c[3]["value"]
        .as_str()
        .unwrap()
        .starts_with("<|agent:WebSurfer|>I will double check."));
    // Two calls in one turn: a list. A leading observation joins the task
    // message; the trailing observation is dropped.
    let v = sharegpt::record(&ts[2], &w).unwrap();
    let c = v["conversations"].as_array().unwrap();
    assert_eq!(
        c[0]["value"],
        "List the files, then count them.<|obs:human|>Use the shell, please."
    );
    assert_eq!(c[1]["from"], "function_call");
    let calls: Value = serde_json::from_str(c[1]["value"].as_str().unwrap()).unwrap();
    assert_eq!(calls.as_array().unwrap().len(), 2);
    assert_eq!(c[2]["value"], "<|obs:shell|>a.txt\nb.txt<|obs:shell|>2");
    assert!(!c.last().unwrap()["value"]
        .as_str()
        .unwrap()
        .contains("session closed"));
    // --only-agent Coder: the other agents' turns are on the untrained side.
    let v = sharegpt::record(&ts[0], &only("Coder")).unwrap();
    assert_eq!(
        v["conversations"],
        serde_json::json!([
            {"from": "human", "value": "Add 2 and 3, then check the sum.<|agent:Planner|>Coder: add the numbers. Reviewer: check."},
            {"from": "gpt", "value": "<|agent:Coder|>x = 2 + 3\nprint(x)"},
        ])
    );
    // Nobody trained: no row.
    assert!(sharegpt::record(&ts[0], &only("Nobody")).is_none());
    // The dataset_info.json entry names the ShareGPT tags.
    let e = sharegpt::dataset_info("afm.jsonl");
    assert_eq!(
        (
            &e["file_name"],
            &e["formatting"],
            &e["tags"]["function_tag"]
        ),
        (
            &Value::from("afm.jsonl"),
            &Value::from("sharegpt"),
            &Value::from("function_call")
        )
    );
}

/// axolotl keeps every step (agent in `name`, observations as `tool`),
/// the task, id, success, score and answer; `train` is the agent's weight
/// > 0; `meta` is lost.
#[test]
fn axolotl_round_trip() {
    for w in [AgentWeights::default(), only("Coder")] {
        for t in records() {
            let v = axolotl::record(&t, &w);
            let back = read_back(&v, Format::Messages);
            assert_eq!(back.steps, t.steps, "{}", t.id);
            assert_eq!(
                (&back.task, &back.id, back.success, back.score, &back.answer),
                (&t.task, &t.id, t.success, t.score, &t.answer)
            );
            assert_eq!(back.meta, None);
            let msgs = v["messages"].as_array().unwrap();
            assert_eq!(msgs.len(), t.steps.len() + 1);
            assert_eq!(msgs[0]["role"], "user");
            assert_eq!(msgs[0]["train"], false);
            for (m, s) in msgs[1..].iter().zip(&t.steps) {
                assert_eq!(m["name"], s.agent.as_str());
                assert_eq!(m["train"], trained(&w)(s), "{m}");
                let role = if s.kind == StepKind::Agent {
                    "assistant"
                } else {
                    "tool"
                };
                assert_eq!(m["role"], role);
            }
        }
    }
    let yaml = axolotl::config("out/afm.jsonl");
    assert!(yaml.contains("type: chat_template"), "{yaml}");
    assert!(yaml.contains("message_field_training: train"), "{yaml}");
}

/// CoA keeps the steps' kinds and texts; agents come back as their tags
/// (lower case), observations as agent `observation`; an agent whose tag
/// reads as an observation (contains `tool`...) comes back as one.
#[test]
fn coa_round_trip() {
    for t in records() {
        let v = coa::record(&t);
        let back = read_back(&v, Format::CoaTags);
        assert_eq!(
            (&back.task, &back.id, back.success, back.score, &back.answer),
            (&t.task, &t.id, t.success, t.score, &t.answer)
        );
        assert_eq!(back.steps.len(), t.steps.len(), "{}", t.id);
        for (b, s) in back.steps.iter().zip(&t.steps) {
            assert_eq!(b.text, s.text);
            match s.kind {
                StepKind::Observation => {
                    assert_eq!((b.agent.as_str(), b.kind), ("observation", s.kind))
                }
                StepKind::Agent => {
                    assert_eq!(b.agent, coa::tag(&s.agent));
                    let as_obs = afm_data::is_default_observation(&b.agent);
                    let kind = if as_obs {
                        StepKind::Observation
                    } else {
                        StepKind::Agent
                    };
                    assert_eq!(b.kind, kind, "{}", b.agent);
                }
            }
        }
    }
    let t = &records()[3];
    let v = coa::record(t);
    assert_eq!(
        v["output"],
        "<traducteur>こんにちは (konnichiwa) <think>simple</think></traducteur>\n\n<relecteur_2>  Correct.  </relecteur_2>\n\n<toolsmith>no tool needed</toolsmith>"
    );
    let back = read_back(&v, Format::CoaTags);
    assert_eq!(
        back.steps[2].kind,
        StepKind::Observation,
        "ToolSmith -> toolsmith reads as a tool"
    );
    // A last observation is followed by a blank line (CoA's mask ends there).
    assert!(coa::record(&records()[2])["output"]
        .as_str()
        .unwrap()
        .ends_with("<observation>(session closed)</observation>\n\n"));
    assert_eq!(coa::tag("Web Surfer"), "web_surfer");
    assert_eq!(coa::tag("2nd"), "agent_2nd");
    assert_eq!(coa::tag("Orchestrator (thought)"), "orchestrator__thought_");
    // The alpaca `instruction` is the task (with a non-empty `input` joined
    // by a newline, as LLaMA-Factory joins them).
    let v =
        serde_json::json!({"instruction": "Sys.", "input": "Q?", "output": "<answer>A</answer>"});
    assert_eq!(read_back(&v, Format::CoaTags).task, "Sys.\nQ?");
}

fn write_jsonl(path: &Path, rows: impl IntoIterator<Item = String>) {
    let mut s = String::new();
    for r in rows {
        s.push_str(&r);
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn prepare_one(input: &Path, out: &Path, w: &AgentWeights) -> serde_json::Value {
    prepare(&PrepareConfig {
        inputs: vec![input.to_path_buf()],
        out: out.to_path_buf(),
        weights: w.clone(),
        val_fraction: 0.3,
        ..Default::default()
    })
    .unwrap();
    serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

/// Every file `prepare` wrote but the manifest (which names the inputs)
/// and the rejects is byte-identical; the manifests agree on roles and
/// counts of what was kept.
fn same_dataset(a: &Path, b: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "manifest.json" && n != "rejects.jsonl")
        .collect();
    names.sort();
    assert!(names.iter().any(|n| n == "train.tokens.u32"), "{names:?}");
    for n in &names {
        assert_eq!(
            std::fs::read(a.join(n)).unwrap(),
            std::fs::read(b.join(n)).unwrap(),
            "{n:?} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    let m = |d: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap()
    };
    let (ma, mb) = (m(a), m(b));
    for k in [
        "roles",
        "kept",
        "tokens",
        "loss_tokens",
        "train",
        "val",
        "per_agent",
    ] {
        assert_eq!(ma[k], mb[k], "{k}");
    }
}

/// `prepare` on the ShareGPT export gives the same shards as on the native
/// records cut after their last trained turn (what ShareGPT carries); on
/// the axolotl export the same as on the native records; on the CoA export
/// the same as on the native records with agents renamed to their tags.
#[test]
fn prepare_on_an_export_gives_the_same_tokens_and_masks() {
    let d = tempfile::tempdir().unwrap();
    let ts = normalised();
    for (k, w) in [AgentWeights::default(), only("Coder")].iter().enumerate() {
        let dir = d.path().join(format!("w{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        // ShareGPT.
        let cut: Vec<Trajectory> = ts
            .iter()
            .filter_map(|t| {
                let last = t.steps.iter().rposition(trained(w))?;
                let mut c = t.clone();
                c.steps.truncate(last + 1);
                Some(c)
            })
            .collect();
        write_jsonl(&dir.join("cut.jsonl"), cut.iter().map(native::line));
        write_jsonl(
            &dir.join("sharegpt.jsonl"),
            ts.iter()
                .filter_map(|t| sharegpt::record(t, w))
                .map(|v| v.to_string()),
        );
        prepare_one(&dir.join("cut.jsonl"), &dir.join("p-cut"), w);
        prepare_one(&dir.join("sharegpt.jsonl"), &dir.join("p-sharegpt"), w);
        same_dataset(&dir.join("p-cut"), &dir.join("p-sharegpt"));
        // axolotl.
        write_jsonl(&dir.join("native.jsonl"), ts.iter().map(native::line));
        write_jsonl(
            &dir.join("axolotl.jsonl"),
            ts.iter().map(|t| axolotl::record(t, w).to_string()),
        );
        let m = prepare_one(&dir.join("native.jsonl"), &dir.join("p-native"), w);
        prepare_one(&dir.join("axolotl.jsonl"), &dir.join("p-axolotl"), w);
        same_dataset(&dir.join("p-native"), &dir.join("p-axolotl"));
        assert_eq!(m["rejected"], serde_json::json!({}));
    }
    // CoA (weights are not carried: default weights on both sides).
    let w = AgentWeights::default();
    let tagged: Vec<Trajectory> = ts
        .iter()
        .map(|t| {
            let mut c = t.clone();
            for s in &mut c.steps {
                s.agent = match s.kind {
                    StepKind::Agent => coa::tag(&s.agent),
                    StepKind::Observation => "observation".into(),
                };
            }
            normalise(c, &AgentsMap::default()).unwrap()
        })
        .collect();
    write_jsonl(
        &d.path().join("tagged.jsonl"),
        tagged.iter().map(native::line),
    );
    write_jsonl(
        &d.path().join("coa.jsonl"),
        ts.iter().map(|t| coa::record(t).to_string()),
    );
    prepare_one(
        &d.path().join("tagged.jsonl"),
        &d.path().join("p-tagged"),
        &w,
    );
    prepare_one(&d.path().join("coa.jsonl"), &d.path().join("p-coa"), &w);
    same_dataset(&d.path().join("p-tagged"), &d.path().join("p-coa"));
}

/// A prepared dataset gives back the records it was made from: the walk's
/// counts equal the manifest's (rejects, score filter, duplicates, no-loss
/// records, the split), and `prepare` on the kept records writes the same
/// shards.
#[test]
fn a_prepared_dataset_gives_its_records_back() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(fixture())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.push(lines[0].clone()); // a duplicate
    lines.push("{broken".into()); // a reject
    lines.push(
        r#"{"task":"only a tool","trajectory":[{"agent":"python","observation":"1"}]}"#.into(),
    );
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    for (k, w) in [AgentWeights::default(), only("Coder")]
        .into_iter()
        .enumerate()
    {
        let out = d.path().join(format!("p{k}"));
        let m = prepare_one(&input, &out, &w);
        assert!(prepared::is_prepared(&out));
        let mut kept = Vec::new();
        let mut outcomes = 0;
        let walk = prepared::for_each_record(&out, |loc, o| {
            outcomes += 1;
            assert!(loc.line.is_some());
            if let prepared::Outcome::Kept { trajectory, .. } = o {
                kept.push(trajectory);
            }
        })
        .unwrap();
        walk.check().unwrap();
        assert_eq!(outcomes, walk.total);
        assert_eq!(walk.total, lines.len());
        assert_eq!(m["filtered"]["duplicate"], 1);
        assert_eq!(m["rejected"]["broken_json"], 1);
        assert!(m["filtered"]["no_loss_tokens"].as_u64().unwrap() >= 1);
        assert_eq!(walk.manifest.config.weights, w);
        if k > 0 {
            // With --only-agent the records filtered as no_loss_tokens
            // still gave their agents to the role vocabulary: the kept
            // records alone make a smaller one.
            continue;
        }
        // prepare on what the walk kept: the same shards.
        let again = d.path().join(format!("kept{k}.jsonl"));
        write_jsonl(&again, kept.iter().map(native::line));
        prepare_one(&again, &d.path().join(format!("q{k}")), &w);
        same_dataset(&out, &d.path().join(format!("q{k}")));
    }
    // A changed input no longer matches the manifest: an error, not a
    // silent difference.
    std::fs::write(&input, lines[..3].join("\n") + "\n").unwrap();
    let walk = prepared::for_each_record(&d.path().join("p0"), |_, _| {}).unwrap();
    let e = walk.check().unwrap_err().to_string();
    assert!(e.contains("no longer give"), "{e}");
}

/// Hostile texts: what each format does with text that looks like its own
/// markup, spelled out. Native and axolotl carry any text; ShareGPT splits
/// at a marker inside a text; CoA ends a turn at its own closing tag.
#[test]
fn hostile_texts() {
    let step = |agent: &str, kind, text: &str| Step {
        agent: agent.into(),
        kind,
        text: text.into(),
    };
    let t = Trajectory {
        id: "h".into(),
        task: "Echo <|agent:Fake|> and </coder>.".into(),
        steps: vec![
            step("Coder", StepKind::Agent, "a<|agent:Evil|>b"),
            step(
                "python",
                StepKind::Observation,
                "<observation>x</observation>",
            ),
            step("Coder", StepKind::Agent, "c</coder>d"),
            step("Coder", StepKind::Agent, ""),
            step(
                "Coder",
                StepKind::Agent,
                "<tool_call>f(not json)</tool_call>",
            ),
            step("Coder", StepKind::Agent, "<|obs|>\n\u{202e}rtl"),
        ],
        success: None,
        score: None,
        answer: None,
        meta: None,
    };
    let w = AgentWeights::default();
    // Native and axolotl: exact.
    let v: Value = serde_json::from_str(&native::line(&t)).unwrap();
    assert_eq!(read_back(&v, Format::Native), t);
    assert_eq!(
        read_back(&axolotl::record(&t, &w), Format::Messages).steps,
        t.steps
    );
    // ShareGPT: a marker inside a text starts a step there, in the task
    // too: the task is the text before the first marker of its message.
    let back = read_back(&sharegpt::record(&t, &w).unwrap(), Format::Sharegpt);
    assert_eq!(back.task, "Echo ");
    let mut want = t.steps.clone();
    want[0].text = "a".into();
    want.insert(0, step("Fake", StepKind::Agent, " and </coder>."));
    want.insert(2, step("Evil", StepKind::Agent, "b"));
    want[7].text = String::new();
    want.push(step("tool", StepKind::Observation, "\n\u{202e}rtl"));
    assert_eq!(back.steps, want);
    // Arguments that are not JSON: a gpt message, not a function_call.
    let v = sharegpt::record(&t, &w).unwrap();
    assert!(v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["from"] != "function_call"));
    // CoA: a text holding its own closing tag (`</coder>` in a coder turn,
    // `</observation>` in an observation) ends the turn there; the rest
    // up to the next tag is free text (agent `response`). Other tags inside
    // a turn stay text.
    let back = read_back(&coa::record(&t), Format::CoaTags);
    let got: Vec<(&str, StepKind, &str)> = back
        .steps
        .iter()
        .map(|s| (s.agent.as_str(), s.kind, s.text.as_str()))
        .collect();
    use StepKind::{Agent, Observation};
    assert_eq!(
        got,
        [
            ("coder", Agent, "a<|agent:Evil|>b"),
            ("observation", Observation, "<observation>x"),
            ("response", Agent, "</observation>\n\n"),
            ("coder", Agent, "c"),
            ("response", Agent, "d</coder>\n\n"),
            ("coder", Agent, ""),
            ("coder", Agent, "<tool_call>f(not json)</tool_call>"),
            ("coder", Agent, "<|obs|>\n\u{202e}rtl"),
        ]
    );
    assert_eq!(back.task, t.task);
}
