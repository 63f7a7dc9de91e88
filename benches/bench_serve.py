"""MAS against AFM over HTTP: `afm serve` on loopback, the same tasks.

    afm serve --checkpoint RUN/models/afm/final --port 8100 &
    afm serve --mas Planner=RUN/models/mas-Planner/final,Coder=...,Reviewer=... --port 8101 &
    python benches/bench_serve.py --afm http://127.0.0.1:8100 --mas http://127.0.0.1:8101 \\
        --tasks datasets/tasks/test.jsonl --n 48 --concurrency 1,8,32

- AFM, one call per task: `POST /v1/afm/tasks` (the server writes every
  turn and runs the tool in the same KV cache).
- MAS, chained calls per task, as its orchestrator makes them: the
  Planner's turn, the Coder's turn (`/v1/chat/completions`, each agent its
  own model), the tool (`POST /v1/afm/tool`), the Reviewer's turn. No
  retries (afm's in-process MAS may ask the Coder again; this client does
  not), so its success here can be lower than `afm eval --mas`.
- Greedy decoding. Per task: the wall time from its first request to its
  answer. Per concurrency level: p50, p95, p99 of that, tasks/s, and the
  share of answers equal to the task's (`ANSWER: x` == answer, exactly).

Prints a table and one JSON line. Standard library only; one persistent
HTTP connection per client thread.
"""

import argparse
import concurrent.futures
import http.client
import json
import re
import threading
import time
import urllib.parse

_local = threading.local()


def post(base, path, body):
    u = urllib.parse.urlparse(base)
    key = (u.hostname, u.port)
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    if key not in conns:
        conns[key] = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    c = conns[key]
    data = json.dumps(body)
    for attempt in range(2):
        try:
            c.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            text = r.read().decode()
            break
        except (http.client.HTTPException, ConnectionError):
            c.close()
            if attempt:
                raise
    if r.status != 200:
        raise RuntimeError(f"{path}: {r.status} {text}")
    return json.loads(text)


ANSWER = re.compile(r"ANSWER:\s*(.*)", re.S)


def answer_of(text):
    m = ANSWER.search(text or "")
    return m.group(1).strip() if m else None


def afm_task(base, task, max_tokens):
    r = post(base, "/v1/afm/tasks", {"model": "afm", "task": task["prompt"], "max_tokens": max_tokens})
    return r["run"].get("answer"), 1


def mas_task(base, task, max_tokens):
    msgs = [{"role": "user", "content": task["prompt"]}]
    calls = 0

    def turn(agent):
        nonlocal calls
        calls += 1
        r = post(base, "/v1/chat/completions", {"model": agent, "messages": msgs, "max_tokens": max_tokens,
                                                 "temperature": 0})
        text = r["choices"][0]["message"]["content"] or ""
        msgs.append({"role": "assistant", "name": agent, "content": text})
        return text, r["choices"][0].get("afm_stop")

    turn("Planner")
    program, stop = turn("Coder")
    if stop == "<|obs|>":
        calls += 1
        obs = post(base, "/v1/afm/tool", {"program": program})["observation"]
        msgs.append({"role": "tool", "content": obs})
    text, _ = turn("Reviewer")
    return answer_of(text), calls


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run(system, fn, base, tasks, conc, max_tokens):
    lat = []

    def one(t):
        t0 = time.perf_counter()
        ans, calls = fn(base, t, max_tokens)
        return time.perf_counter() - t0, ans == t["answer"], calls

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(conc) as ex:
        res = list(ex.map(one, tasks))
    wall = time.perf_counter() - t0
    lat = [r[0] * 1000 for r in res]
    return {
        "system": system, "concurrency": conc, "tasks": len(tasks),
        "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
        "tasks_per_s": len(tasks) / wall, "success": sum(r[1] for r in res) / len(tasks),
        "calls_per_task": sum(r[2] for r in res) / len(tasks),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--afm", required=True)
    ap.add_argument("--mas", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=160)
    a = ap.parse_args()
    tasks = [json.loads(l) for l in open(a.tasks)][: a.n]
    # Warm both servers (first requests allocate caches).
    afm_task(a.afm, tasks[0], a.max_tokens)
    mas_task(a.mas, tasks[0], a.max_tokens)
    rows = []
    for c in [int(x) for x in a.concurrency.split(",")]:
        # Interleaved: MAS then AFM at each level.
        rows.append(run("MAS (chained calls)", mas_task, a.mas, tasks, c, a.max_tokens))
        rows.append(run("AFM (one call)", afm_task, a.afm, tasks, c, a.max_tokens))
    print("| system | concurrency | p50 ms | p95 ms | p99 ms | tasks/s | HTTP calls/task | answers right |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['system']} | {r['concurrency']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['tasks_per_s']:.1f} | {r['calls_per_task']:.2f} | {100 * r['success']:.1f}% |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
