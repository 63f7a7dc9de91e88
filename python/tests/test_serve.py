"""`afm serve` from the official `openai` client, run by
crates/afm-cli/tests/serve.rs against a live server.

    python test_serve.py --base-url http://127.0.0.1:PORT --pid SERVER_PID

Checks, in order (the last one stops the server):

- /health, /v1/models;
- completions and chat completions (greedy): text, usage, the agent's name;
- streaming (SSE) gives the same text as the plain response;
- malformed JSON, an unknown field, a bad max_tokens and an unknown model
  get 4xx with OpenAI's error object naming the field; a body over the
  limit gets 413;
- a client that disconnects in the middle of a stream frees its sequence
  (afm_cancelled_total in /metrics) and the server keeps serving;
- 8 concurrent greedy requests give the tokens of the same requests one
  by one;
- /v1/afm/tasks runs a whole task (the server runs the tool), /v1/afm/tool
  the interpreter alone;
- SIGTERM while a stream is running: the stream still finishes, then the
  server exits.

Exits non-zero with a message on the first failed check.
"""

import argparse
import concurrent.futures
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

import openai


def fail(msg):
    print(f"test_serve: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def raw(base, path, body=None, method=None):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(base, name):
    _, text = raw(base, "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    a = ap.parse_args()
    base = a.base_url
    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=60)

    status, body = raw(base, "/health")
    check(status == 200, f"/health: {status} {body}")
    models = [m.id for m in client.models.list().data]
    check(models == ["afm"], f"/v1/models: {models}")

    # Completions and chat, greedy.
    c = client.completions.create(model="afm", prompt="Task: add 2 and 3.", max_tokens=12, temperature=0)
    check(c.object == "text_completion" and len(c.choices) == 1, f"completion: {c}")
    check(c.usage.completion_tokens >= 1 and c.usage.prompt_tokens >= 1, f"usage: {c.usage}")
    check(c.choices[0].finish_reason in ("stop", "length"), f"finish_reason: {c.choices[0].finish_reason}")
    msgs = [{"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "name": "Planner", "content": "Add the numbers."}]
    ch = client.chat.completions.create(model="afm", messages=msgs, max_tokens=12, temperature=0,
                                        extra_body={"agent": "Coder"})
    m = ch.choices[0].message
    check(ch.object == "chat.completion" and m.role == "assistant", f"chat: {ch}")
    check(getattr(m, "name", None) == "Coder" or (m.model_extra or {}).get("name") == "Coder", f"chat name: {m}")

    # Streaming gives the same text.
    parts, finish = [], None
    for ev in client.chat.completions.create(model="afm", messages=msgs, max_tokens=12, temperature=0,
                                             extra_body={"agent": "Coder"}, stream=True):
        for choice in ev.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    check("".join(parts) == (m.content or ""), f"streamed chat {''.join(parts)!r} != {m.content!r}")
    check(finish == ch.choices[0].finish_reason, f"streamed finish {finish} != {ch.choices[0].finish_reason}")
    parts = [ev.choices[0].text for ev in client.completions.create(
        model="afm", prompt="Task: add 2 and 3.", max_tokens=12, temperature=0, stream=True) if ev.choices]
    check("".join(parts) == c.choices[0].text, f"streamed completion {''.join(parts)!r} != {c.choices[0].text!r}")

    # Bad requests: 4xx naming the field.
    for body, code, param in [
        (b"{not json", 400, "body"),
        ({"model": "afm", "prompt": "x", "bogus": 1}, 400, "bogus"),
        ({"model": "afm", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "afm", "prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": "afm", "messages": [{"role": "assistant", "content": "x"}]}, 400, "messages[0].role"),
    ]:
        status, text = raw(base, "/v1/completions" if "prompt" in str(body) or body == b"{not json" else "/v1/chat/completions", body)
        check(status == code, f"{body!r}: status {status}, want {code}: {text}")
        err = json.loads(text)["error"]
        check(err["param"] == param and err["message"], f"{body!r}: error {err}, want param {param}")
    status, _ = raw(base, "/v1/completions", b'{"model":"afm","prompt":"' + b"x" * (2 << 20) + b'"}')
    check(status == 413, f"oversized body: status {status}")
    try:
        client.completions.create(model="afm", prompt="x", max_tokens=-3)
        fail("max_tokens=-3 was accepted")
    except openai.BadRequestError:
        pass

    # A client that leaves in the middle of a stream.
    before = metric(base, "afm_cancelled_total")
    body = json.dumps({"model": "afm", "prompt": "Count:", "max_tokens": 1000, "temperature": 0,
                       "stream": True}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    r = urllib.request.urlopen(req, timeout=60)
    check(r.readline().startswith(b"data: "), "the stream did not start")
    r.close()
    deadline = time.time() + 20
    while metric(base, "afm_cancelled_total") <= before and time.time() < deadline:
        time.sleep(0.1)
    check(metric(base, "afm_cancelled_total") > before, "a disconnected stream was not cancelled")
    check(metric(base, "afm_active_sequences") == 0, "sequences left active after the disconnect")

    # Concurrent == sequential (greedy).
    prompts = [f"Task {i}: what is {i} times {i + 1}?" for i in range(8)]
    one = lambda p: client.completions.create(model="afm", prompt=p, max_tokens=16, temperature=0).choices[0].text
    seq = [one(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        par = list(ex.map(one, prompts))
    check(par == seq, f"concurrent != sequential:\n{par}\n{seq}")

    # A whole task in one call (the server runs the tool), and the tool alone.
    status, text = raw(base, "/v1/afm/tasks", {"model": "afm", "task": "What is 3 + 2?", "max_tokens": 40})
    check(status == 200, f"/v1/afm/tasks: {status} {text}")
    t = json.loads(text)
    check(t["object"] == "afm.task" and t["run"]["runtime"] == "afm", f"task: {t}")
    check(isinstance(t["run"]["trajectory"], list) and t["usage"]["completion_tokens"] >= 1, f"task run: {t}")
    status, text = raw(base, "/v1/afm/tasks", {"model": "afm"})
    check(status == 400 and json.loads(text)["error"]["param"] == "task", f"task without task: {status} {text}")
    status, text = raw(base, "/v1/afm/tool", {"program": "sum([3, 1, 4])"})
    check(status == 200 and json.loads(text) == {"observation": "8", "ok": True}, f"/v1/afm/tool: {status} {text}")

    # SIGTERM drains: the running stream finishes, then the server exits.
    got, finish = [], None
    stream = client.completions.create(model="afm", prompt="Count:", max_tokens=200, temperature=0, stream=True)
    first = next(iter(stream))
    os.kill(a.pid, signal.SIGTERM)
    for ev in stream:
        for choice in ev.choices:
            got.append(choice.text)
            finish = choice.finish_reason or finish
    check(finish in ("stop", "length"), f"the stream in flight at SIGTERM did not finish: {finish}")
    _ = first
    print(json.dumps({"ok": True, "models": models}))


if __name__ == "__main__":
    main()
