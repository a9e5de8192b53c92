"""Sweeps over HTTP: expansion of candidates and grids into jobs, validation that names the candidate,
progress of the whole, cancel, and the winner named and selected once every candidate has ended."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.core.job_state import finish_job
from app.core.tables import Job, JobStatus, Selection, Sweep
from app.sweeps.service import finalize_open_sweeps
from tests.helpers.factories import N_ROWS, scored_job

SWEEPS = "/v1/sweeps"


def create(client, auth, **body):
    return client.post(SWEEPS, headers=auth, json=body)


def count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def test_grid_times_candidates_become_jobs_with_shared_seed_and_evaluation(client, auth, db_session, train_file):
    r = create(
        client,
        auth,
        training_file=train_file.id,
        seed=11,
        base={"model": "stories260k", "hyperparameters": {"n_epochs": 2}},
        candidates=[
            {"name": "lora", "adapter": {"type": "lora"}},
            {"name": "qlora", "adapter": {"type": "qlora", "target_modules": ["q_proj", "v_proj"]}},
        ],
        grid={"adapter.r": [4, 16], "training.learning_rate": [0.001]},
        evaluation={"max_rows": 50, "max_new_tokens": 32},
    )
    assert r.status_code == 200, r.text
    sweep = r.json()
    assert sweep["object"] == "sweep" and sweep["status"] == "running"
    assert sweep["selection_metric"] == "rougeL"  # auto on prompt/completion data
    names = [c["name"] for c in sweep["candidates"]]
    assert names == [
        "lora r=4 learning_rate=0.001",
        "lora r=16 learning_rate=0.001",
        "qlora r=4 learning_rate=0.001",
        "qlora r=16 learning_rate=0.001",
    ]
    assert sweep["progress"] == {
        "queued": 4,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "fraction": 0.0,
    }
    assert sweep["leaderboard_url"].endswith(f"/v1/sweeps/{sweep['id']}/leaderboard")
    jobs = {j.id: j for j in db_session.scalars(select(Job).where(Job.sweep_id == sweep["id"]))}
    assert len(jobs) == 4
    for cand in sweep["candidates"]:
        spec = jobs[cand["job_id"]].spec
        assert jobs[cand["job_id"]].seed == 11  # same held-out split and data order for every candidate
        assert spec["evaluation"]["max_rows"] == 50 and spec["evaluation"]["selection_metric"] == "rougeL"
        assert spec["hyperparameters"]["n_epochs"] == 2 and spec["training"]["learning_rate"] == 0.001
        assert spec["adapter"]["type"] == cand["adapter_type"]
    assert {j.spec["adapter"]["r"] for j in jobs.values()} == {4, 16}
    qlora = [j for j in jobs.values() if j.spec["adapter"]["type"] == "qlora"]
    assert all(j.spec["adapter"]["target_modules"] == ["q_proj", "v_proj"] for j in qlora)

    # get and list
    got = client.get(f"{SWEEPS}/{sweep['id']}", headers=auth).json()
    assert got["id"] == sweep["id"] and len(got["candidates"]) == 4
    listed = client.get(SWEEPS, headers=auth).json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == sweep["id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"candidates": [{"adapter": {"type": "lora"}}, {"adapter": {"r": 0}}]}, "candidates[1].adapter.r"),
        ({"candidates": [{"adapter": {"rank": 8}}]}, "candidates[0].adapter.rank"),
        ({"candidates": [{"hyperparameters": {"n_epochs": 0}}]}, "candidates[0].hyperparameters.n_epochs"),
        ({"candidates": [{"model": "gpt-5"}]}, "candidates[0].model"),
        ({"grid": {"adapter.type": ["lora", "bogus"]}}, "candidates[1].adapter.type"),
        ({"grid": {"seed": [1, 2]}}, "grid.seed"),
        ({"grid": {"adapter.r": []}}, "grid.adapter.r"),
        ({"grid": {"adapter.r": list(range(1, 10)), "training.learning_rate": [0.1] * 8}}, "grid"),
        ({"selection_metric": "bleu"}, "selection_metric"),
    ],
)
def test_a_bad_candidate_names_itself_and_stores_nothing(client, auth, db_session, train_file, body, param):
    before = (count(db_session, Sweep), count(db_session, Job))
    r = create(client, auth, training_file=train_file.id, base={"model": "stories260k"}, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert (count(db_session, Sweep), count(db_session, Job)) == before


def test_raw_text_cannot_be_ranked_by_generation_metrics(client, auth, db_session, train_file):
    train_file.shape = "text"
    db_session.commit()
    r = create(client, auth, training_file=train_file.id, base={"model": "stories260k"}, selection_metric="rougeL")
    assert r.status_code == 400 and r.json()["error"]["param"] == "selection_metric"
    r = create(client, auth, training_file=train_file.id, base={"model": "stories260k"})
    assert r.status_code == 200 and r.json()["selection_metric"] == "eval_loss"


def test_another_tenants_sweep_and_file_are_404(client, auth, other_auth, train_file):
    sweep = create(client, auth, training_file=train_file.id, base={"model": "stories260k"}).json()
    for method, path in (
        ("get", f"{SWEEPS}/{sweep['id']}"),
        ("get", f"{SWEEPS}/{sweep['id']}/leaderboard"),
        ("post", f"{SWEEPS}/{sweep['id']}/cancel"),
    ):
        r = getattr(client, method)(path, headers=other_auth)
        assert r.status_code == 404 and r.json()["error"]["param"] == "sweep_id", (path, r.text)
    assert client.get(SWEEPS, headers=other_auth).json()["data"] == []
    r = create(client, other_auth, training_file=train_file.id, base={"model": "stories260k"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "training_file"


def test_cancel_cancels_open_candidates_and_picks_no_winner(client, auth, db_session, train_file):
    sweep = create(
        client, auth, training_file=train_file.id, base={"model": "stories260k"}, grid={"adapter.r": [4, 8]}
    ).json()
    r = client.post(f"{SWEEPS}/{sweep['id']}/cancel", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled" and body["winner_job_id"] is None and body["finished_at"]
    assert body["progress"]["cancelled"] == 2 and body["progress"]["fraction"] == 1.0
    assert client.post(f"{SWEEPS}/{sweep['id']}/cancel", headers=auth).status_code == 409
    assert db_session.get(Selection, train_file.id) is None


def _run_to_end(db_session, job: Job, status=JobStatus.succeeded) -> None:
    """What the worker does at the end of a job (the fenced final write), then the API's background pass over
    open sweeps (app/api/background.py), which decides the sweep once its last candidate has ended."""
    job.status, job.attempt = JobStatus.running, 1
    db_session.commit()
    assert finish_job(db_session, job.id, 1, status)
    finalize_open_sweeps(db_session)


def test_the_winner_is_named_and_selected_when_the_last_candidate_ends(client, auth, db_session, acme, train_file):
    sweep = Sweep(
        tenant_id=acme.id, training_file_id=train_file.id, selection_metric="rougeL", seed=7, spec={}, status="running"
    )
    db_session.add(sweep)
    db_session.commit()
    scores = [0.3 + 0.3 * ((i * 37) % 11) / 10 for i in range(N_ROWS)]
    full = scored_job(
        db_session, acme, train_file, scores, adapter={"type": "full"}, trainable=260_000, sweep_id=sweep.id
    )
    lora = scored_job(db_session, acme, train_file, list(scores), trainable=4_000, sweep_id=sweep.id)
    weak = scored_job(db_session, acme, train_file, [s - 0.2 for s in scores], trainable=100, sweep_id=sweep.id)
    failed = scored_job(db_session, acme, train_file, [], sweep_id=sweep.id, status=JobStatus.queued)
    for job in (full, lora, weak):  # written as succeeded by the helper; replay the final transition
        job.status = JobStatus.running
    db_session.commit()
    for job in (full, lora, weak):
        _run_to_end(db_session, job)
        assert db_session.get(Sweep, sweep.id).finished_at is None  # `failed` has not ended yet
    _run_to_end(db_session, failed, JobStatus.failed)

    db_session.expire_all()
    done = db_session.get(Sweep, sweep.id)
    assert done.status == "succeeded" and done.winner_job_id == lora.id  # tied with full, far cheaper
    assert done.result["tied_job_ids"] == [full.id] and "cheapest" in done.result["reason"]
    assert db_session.get(Selection, train_file.id).job_id == lora.id  # the same selection /select makes
    body = client.get(f"{SWEEPS}/{sweep.id}", headers=auth).json()
    assert body["progress"]["succeeded"] == 3 and body["progress"]["failed"] == 1
    assert body["winner_job_id"] == lora.id
    lb = client.get(f"{SWEEPS}/{sweep.id}/leaderboard", headers=auth).json()
    assert lb["sweep_id"] == sweep.id and lb["winner_job_id"] == lora.id and lb["selected_job_id"] == lora.id
    statuses = {r["job_id"]: r["status"] for r in lb["data"] if r["job_id"]}
    assert statuses[failed.id] == "failed" and lb["data"][-1]["job_id"] == failed.id  # shown, ranked last
    # finalizing again is a no-op
    from app.sweeps.service import finalize_if_done

    assert finalize_if_done(db_session, sweep.id) is False
