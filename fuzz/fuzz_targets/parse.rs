//! Fuzz every input parser and the format rule on arbitrary bytes:
//! `cargo fuzz run parse` (from the repository root).
//!
//! Invariants: parsing never panics; a record that validates can always be
//! normalised, formatted and labelled, its roles follow the tracker, and
//! no special token comes from text.
#![no_main]

use afm_data::ingest::{parse_coa_tags, parse_document, parse_line, Format, IngestLimits};
use afm_data::AgentsMap;
use afm_format::layout::{encode_trajectory, label};
use afm_format::StepKind;
use afm_tokenizer::{RoleTracker, RoleVocab, Tokenizer};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn check(t: afm_format::Trajectory) {
    let Ok(t) = afm_data::ingest::normalise(t, &AgentsMap::default()) else {
        return;
    };
    let mut roles = RoleVocab::new();
    for s in t.steps.iter().filter(|s| s.kind == StepKind::Agent) {
        roles
            .insert(&s.agent)
            .expect("validated agent names are valid role names");
    }
    let n_markers = t.steps.len() + 2;
    let tok = Tokenizer::new(roles);
    let enc = encode_trajectory(&tok, &t).expect("every agent is in the vocabulary");
    let specials = enc.tokens.iter().filter(|&&x| tok.is_special(x)).count();
    assert_eq!(specials, n_markers, "special token produced from text");
    let l = label(&enc.tokens);
    assert_eq!(l.roles, RoleTracker::roles_of(&enc.tokens));
    assert_eq!(*l.owners.last().unwrap(), 0);
}

fuzz_target!(|data: &[u8]| {
    // Keep inputs small enough that BPE time does not dominate.
    if data.len() > 1 << 16 {
        return;
    }
    let limits = IngestLimits::default();
    let p = Path::new("fuzz.json");
    for fmt in [
        Format::Auto,
        Format::Native,
        Format::Ag2,
        Format::Messages,
        Format::Sharegpt,
        Format::CoaTags,
        Format::Smolagents,
        Format::Crewai,
        Format::MagenticOne,
        Format::AutogenAgentchat,
    ] {
        for r in parse_document(data, fmt, &limits, p).into_iter().flatten() {
            check(r);
        }
        if let Ok(t) = parse_line(data, fmt, &limits, p, 1) {
            check(t);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let steps = parse_coa_tags(s);
        assert!(steps.iter().all(|x| !x.agent.is_empty()));
    }
});
