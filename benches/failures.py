#!/usr/bin/env python3
"""Which agent's turn failed each held-out task, for both systems of a pipeline run.

    python3 benches/failures.py runs/NAME [runs/OTHER ...]

Reads `RUN/eval/{mas,afm}.jsonl` (the pipeline's evaluation) and the held-out
tasks file named in `RUN/pipeline_config.toml`. Each failed task is put
under the first agent whose turn went wrong:

- Planner: its plan is none of the plans with which either system solved a
  task of the same op in this run (the plan names the op: "Find the least
  common multiple." for a power task is a wrong plan);
- Coder: the last tool observation is not the task's answer (the program
  computed something else, or failed);
- Reviewer: the observation is the answer, but the final answer is not.

Also prints the failures per op. Standard library only.
"""

import collections
import json
import re
import sys
from pathlib import Path


def op_of(task_id):
    return task_id.rsplit("-", 1)[0]


def held_out_file(run):
    cfg = (run / "pipeline_config.toml").read_text()
    m = re.search(r'^tasks = "(.*)"$', cfg, re.M)
    return Path(m.group(1)) if m else Path("datasets/tasks/test.jsonl")


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(runs):
    for run in map(Path, runs):
        answers = {t["id"]: t["answer"] for t in load(held_out_file(run))}
        systems = {s: load(run / "eval" / f"{s}.jsonl") for s in ("mas", "afm")}
        good_plans = collections.defaultdict(set)
        for rows in systems.values():
            for r in rows:
                if r["success"] and r["trajectory"]:
                    good_plans[op_of(r["id"])].add(r["trajectory"][0].get("output"))
        for system, rows in systems.items():
            blame, per_op = collections.Counter(), collections.Counter()
            for r in rows:
                if r["success"]:
                    continue
                per_op[op_of(r["id"])] += 1
                turns = r["trajectory"]
                plan = turns[0].get("output") if turns else None
                obs = [t["observation"] for t in turns if "observation" in t]
                if plan not in good_plans[op_of(r["id"])]:
                    blame["Planner"] += 1
                elif not obs or obs[-1] != answers[r["id"]]:
                    blame["Coder"] += 1
                else:
                    blame["Reviewer"] += 1
            failed = sum(blame.values())
            print(
                f"{run.name} {system}: {len(rows) - failed}/{len(rows)} solved; failed at "
                + ", ".join(f"{a} {blame[a]}" for a in ("Planner", "Coder", "Reviewer"))
            )
            print("  per op: " + ", ".join(f"{k} {v}" for k, v in sorted(per_op.items())))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
