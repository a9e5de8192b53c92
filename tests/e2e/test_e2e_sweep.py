"""End to end: a sweep of five candidates on WikiSQL with the tiny Llama — LoRA r=4 and r=16, QLoRA,
prompt tuning, and full fine-tuning as the reference — through HTTP, a real API process and real Celery
workers. Every leaderboard number is recomputed here, independently, from the stored per-row outputs, and
the selected job must be the best by the sweep's metric or tied with it. The winner is chosen on WikiSQL's
validation rows and reported on its test rows, which no decision saw, with intervals (exact_match and ROUGE-L).

FTAAS_E2E_SWEEP_WORKERS (default 1) sets how many workers run the candidates at once."""

from __future__ import annotations

import hashlib
import math
import os
import time

import pytest

from tests.conftest import DATASETS, REPORT, TEST_ENV
from tests.helpers.e2e_service import JOB_TIMEOUT_S, client_for, running_service, upload, worker_logs

WORKERS = int(os.environ.get("FTAAS_E2E_SWEEP_WORKERS", "1"))
# What is checked (every leaderboard number recomputed from the stored rows, the winner's rule, both epoch ends
# evaluated, charts, the comparison) holds for any number of rows: few enough that the five candidates train and
# are evaluated (the base model five times: once per job) in minutes on two CPU cores.
TRAIN_ROWS, EVAL_ROWS = 160, 30


@pytest.fixture(scope="module")
def service():
    # Workers on one CPU host split its cores: oversubscribed threads spin and slow every job.
    threads = max(1, (os.cpu_count() or 1) // WORKERS)
    with running_service(workers=WORKERS, extra_env={"FTAAS_TORCH_THREADS": str(threads)}) as svc:
        yield svc


def _subset(src, dst, n: int):
    with open(src) as fh:
        dst.write_text("".join(fh.readlines()[:n]))
    return dst


def _rouge_recomputed(outputs: list[str], refs: list[str]) -> dict[str, float]:
    """ROUGE straight from Google's rouge-score, not through ftaas's code."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(ref, out) for out, ref in zip(outputs, refs)]
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}


def _bertscore_recomputed(outputs: list[str], refs: list[str]) -> float:
    """BERTScore F1 straight from bert-score with the same offline encoder (empty outputs score 0)."""
    from bert_score import BERTScorer

    from worker.evaluation.metrics import resolve_bertscore_model

    name, layers = resolve_bertscore_model(TEST_ENV["FTAAS_BERTSCORE_MODEL"], None)
    scorer = BERTScorer(model_type=name, num_layers=layers, lang="en")
    idx = [i for i, o in enumerate(outputs) if o.strip()]
    f1 = [0.0] * len(outputs)
    if idx:
        _, _, f = scorer.score([outputs[i] for i in idx], [refs[i] for i in idx])
        for j, i in enumerate(idx):
            f1[i] = float(f[j])
    return sum(f1) / len(f1)


def test_sweep_of_five_candidates_picks_a_winner_the_rows_support(service, tmp_path):
    c = client_for(service)
    train = upload(
        c,
        _subset(DATASETS / "wikisql" / "train.jsonl", tmp_path / "train.jsonl", TRAIN_ROWS),
        completion_separator="\nA: ",
    )
    held = upload(
        c,
        _subset(DATASETS / "wikisql" / "valid.jsonl", tmp_path / "valid.jsonl", EVAL_ROWS),
        completion_separator="\nA: ",
    )
    test = upload(
        c,
        _subset(DATASETS / "wikisql" / "test.jsonl", tmp_path / "test.jsonl", EVAL_ROWS),
        completion_separator="\nA: ",
    )
    all_linear = {"target_modules": "all-linear"}
    body = {
        "training_file": train["id"],
        "validation_file": held["id"],
        "test_file": test["id"],
        "seed": 7,
        "selection_metric": "rougeL",
        "base": {
            "model": "stories260k",
            "hyperparameters": {"n_epochs": 2, "batch_size": 16},
            "training": {"learning_rate": 5e-3, "lr_scheduler": "cosine"},
        },
        "candidates": [
            {"name": "lora r=4", "adapter": {"type": "lora", "r": 4, **all_linear}},
            {"name": "lora r=16", "adapter": {"type": "lora", "r": 16, **all_linear}},
            {
                "name": "qlora r=8 qkvo",
                "adapter": {"type": "qlora", "r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            },
            {
                "name": "prompt tuning 16",
                "adapter": {"type": "prompt_tuning", "num_virtual_tokens": 16},
                "training": {"learning_rate": 3e-2},
            },
            {"name": "full", "adapter": {"type": "full"}, "training": {"learning_rate": 2e-3}},
        ],
        "evaluation": {
            "max_rows": EVAL_ROWS,
            "max_new_tokens": 64,
            "batch_size": 30,
            "graders": [{"type": "exact_match"}],
        },
    }
    t0 = time.time()
    r = c.post("/v1/sweeps", json=body)
    assert r.status_code == 200, r.text
    sweep = r.json()
    assert len(sweep["candidates"]) == 5

    deadline = time.monotonic() + JOB_TIMEOUT_S
    fractions = []
    while sweep["finished_at"] is None:
        assert time.monotonic() < deadline, "sweep did not finish:\n" + worker_logs(service)
        time.sleep(3)
        sweep = c.get(f"/v1/sweeps/{sweep['id']}").json()
        fractions.append(sweep["progress"]["fraction"])
    elapsed = time.time() - t0
    assert sweep["status"] == "succeeded", (sweep, worker_logs(service))
    assert sweep["progress"]["succeeded"] == 5, (sweep, worker_logs(service))
    assert fractions == sorted(fractions) and 0 < fractions[len(fractions) // 2] < 1  # progress of the whole

    board = c.get(f"/v1/sweeps/{sweep['id']}/leaderboard").json()
    assert board["metric"] == "rougeL" and board["winner_job_id"] == sweep["winner_job_id"]
    rows = {r["job_id"]: r for r in board["data"] if r["job_id"]}
    assert len(rows) == 5 and sum(1 for r in board["data"] if r["kind"] == "base") == 1

    # Every number is the stored rows recomputed independently.
    for job_id, row in rows.items():
        ev = c.get(f"/v1/fine_tuning/jobs/{job_id}/evaluation", params={"limit": 1000}).json()
        samples = ev["samples"]
        assert len(samples) == EVAL_ROWS == row["num_rows"]
        outputs, refs = [s["tuned_output"] for s in samples], [s["reference"] for s in samples]
        for key, value in _rouge_recomputed(outputs, refs).items():
            assert row["metrics"][key] == pytest.approx(value, abs=1e-9), (row["name"], key)
        assert row["metrics"]["bertscore_f1"] == pytest.approx(_bertscore_recomputed(outputs, refs), abs=1e-4)
        nll = sum(s["tuned_scores"]["nll"] for s in samples if "nll" in s["tuned_scores"])
        tokens = sum(s["tuned_scores"]["loss_tokens"] for s in samples if "loss_tokens" in s["tuned_scores"])
        assert row["metrics"]["eval_loss"] == pytest.approx(nll / tokens, rel=1e-9)
        assert row["metrics"]["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-9)
        assert ev["tuned"]["rougeL"] == pytest.approx(row["metrics"]["rougeL"], abs=1e-9)  # the job's own figure
        cost = row["cost"]
        assert cost["trainable_params"] > 0 and cost["train_seconds"] > 0 and cost["peak_memory_bytes"] > 0
        # per-checkpoint evaluation: both epoch ends evaluated and downloadable
        ckpts = c.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 50}).json()["data"]
        evaluated = sorted(k["step_number"] for k in ckpts if "rougeL" in k["metrics"])
        assert len(evaluated) >= 2, (row["name"], ckpts)
        part = c.get(f"/v1/fine_tuning/jobs/{job_id}/adapter", params={"step": evaluated[0]})
        assert part.status_code == 200 and hashlib.sha256(part.content).hexdigest() == part.headers["x-checksum-sha256"]

    # Chosen on the validation rows, reported on the test rows: the winner's test figure with its interval, every
    # candidate's drop, and the test figures the same stored rows give.
    report = sweep["result"]["test"]
    assert sweep["result"]["decided_on"] == "validation" and report["independent"] is True
    assert report["winner"]["value"] == rows[sweep["winner_job_id"]]["test_value"]
    low, high = report["winner"]["interval"]
    assert low <= report["winner"]["value"] <= high and report["winner"]["num_rows"] == EVAL_ROWS
    assert {c_["job_id"] for c_ in report["candidates"]} == set(rows)
    exact = c.get(f"/v1/sweeps/{sweep['id']}/leaderboard", params={"metric": "exact_match"}).json()
    exact_rows = {r["job_id"]: r for r in exact["data"] if r["job_id"]}
    for job_id, row in rows.items():
        ev = c.get(f"/v1/fine_tuning/jobs/{job_id}/evaluation").json()
        assert ev["test"]["independent"] is True and ev["test"]["num_rows"] == EVAL_ROWS
        assert ev["test"]["tuned"]["rougeL"] == pytest.approx(row["test_value"], abs=1e-9)
        assert row["validation_to_test"] == pytest.approx(row["test_value"] - row["value"], abs=1e-9)
        assert exact_rows[job_id]["test_value"] == pytest.approx(ev["test"]["tuned"]["exact_match"], abs=1e-9)

    # The winner is the leader or tied with it, and it is the file's selection.
    winner = rows[sweep["winner_job_id"]]
    assert winner["winner"] and winner["vs_leader"]["tied"]
    leader = rows[board["leader_job_id"]]
    assert all(leader["value"] >= r["value"] for r in rows.values())
    tied = [r for r in rows.values() if r["vs_leader"] and r["vs_leader"]["tied"]]
    assert min(r["cost"]["trainable_params"] for r in tied) == winner["cost"]["trainable_params"]
    assert c.get(f"/v1/files/{train['id']}/leaderboard").json()["selected_job_id"] == winner["job_id"]
    full = next(r for r in rows.values() if r["adapter_type"] == "full")
    assert full["cost"]["trainable_share"] == pytest.approx(1.0)

    # Pictures and the page are served.
    for path in ("charts/metric.png", "charts/cost.png", "charts/loss.png"):
        img = c.get(f"/v1/sweeps/{sweep['id']}/{path}")
        assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n", path
    page = c.get(sweep["page_url"], headers={"Authorization": ""})
    assert page.status_code == 200 and winner["job_id"] in page.text

    # Side by side on the user's own prompts: the base model, the winner and the full fine-tune.
    prompts = ["Q: What is the name of the team whose coach is Bob?\nA:", "Q: How many games were played in 1999?\nA:"]
    r = c.post("/v1/comparisons", json={"job_ids": [winner["job_id"], full["job_id"]], "prompts": prompts})
    assert r.status_code == 200, r.text
    cmp = r.json()
    deadline = time.monotonic() + 600
    while cmp["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, worker_logs(service)
        time.sleep(2)
        cmp = c.get(f"/v1/comparisons/{cmp['id']}").json()
    assert cmp["status"] == "succeeded", cmp
    assert [e["prompt"] for e in cmp["results"]] == prompts
    for entry in cmp["results"]:
        subjects = [(o["subject"], o.get("job_id")) for o in entry["outputs"]]
        assert subjects == [("base", None), ("job", winner["job_id"]), ("job", full["job_id"])]
        assert all(isinstance(o["text"], str) for o in entry["outputs"])

    REPORT.append(
        f"[e2e sweep] 5 candidates, {TRAIN_ROWS} rows x 2 epochs, {WORKERS} worker(s) x {os.cpu_count() // WORKERS} "
        f"thread(s): {elapsed:.0f}s"
    )
    REPORT.append(
        "[e2e sweep] | rank | candidate | rougeL [95% CI] | vs leader [95% CI] | bertscore_f1 | perplexity "
        "| trainable | train s | tok/s |"
    )
    for r in board["data"]:
        ci = f"[{r['value_ci']['low']:.3f}, {r['value_ci']['high']:.3f}]" if r["value_ci"] else ""
        vs = r["vs_leader"]
        vs_s = f"{vs['diff']:+.3f} [{vs['low']:+.3f}, {vs['high']:+.3f}]{' tied' if vs['tied'] else ''}" if vs else ""
        cost = r["cost"] or {}
        REPORT.append(
            f"[e2e sweep] | {r['rank']} | {r['name']}{' (winner)' if r['winner'] else ''} | {r['value']:.3f} {ci} | "
            f"{vs_s} | {r['metrics'].get('bertscore_f1', float('nan')):.3f} | {r['metrics']['perplexity']:.2f} | "
            f"{cost.get('trainable_params') or '-'} | {cost.get('train_seconds') or 0:.1f} | "
            f"{cost.get('tokens_per_second') or 0:.0f} |"
        )
    REPORT.append(
        "[e2e sweep] validation (chose) vs test (only reported): | candidate | rougeL val | rougeL test [95% CI] "
        "| drop | exact_match val | exact_match test [95% CI] |"
    )

    def _fig(r, key):
        ci = r[f"{key}_ci"] if key == "test_value" else r["value_ci"]
        value = r[key]
        return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else f"{value:.3f}"

    for r in board["data"]:
        e = exact_rows.get(r["job_id"]) or next(x for x in exact["data"] if x["kind"] == "base")
        REPORT.append(
            f"[e2e sweep] | {r['name']}{' (winner)' if r['winner'] else ''} | {_fig(r, 'value')} | "
            f"{_fig(r, 'test_value')} | {r['validation_to_test']:+.3f} | {_fig(e, 'value')} | "
            f"{_fig(e, 'test_value')} |"
            if r["validation_to_test"] is not None
            else f"[e2e sweep] | {r['name']} | {r['value']} | {r['test_value']} | - | - | - |"
        )
