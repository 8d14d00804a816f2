"""The colorization Turing test (paper Sec. 3.1, Table 1 AMT column): pairs folder, protocol, store, report
statistics, the server's answer checks and its refusal to serve anything but the current trial's images."""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xchannel.cli import main as cli_main
from xchannel.color import lab_to_rgb, rgb_to_lab
from xchannel.errors import UserError
from xchannel.turing.pairs import IMAGE_SIZE, make_pairs, scan_pairs
from xchannel.turing.protocol import (DISPLAY_MS, N_PRACTICE, N_TEST, ProtocolConfig, choose_method,
                                      plan_session)
from xchannel.turing.report import PAPER_AMT, bootstrap_rate, markdown, per_participant, summarize
from xchannel.turing.server import TuringApp, TuringHTTPServer, build_server
from xchannel.turing.store import Answer, AnswerStore

SIZE = 32  # pairs written at 32x32 here: the protocol and the server do not depend on the size


def _photo(rng: np.random.Generator, h: int = 40, w: int = 48) -> np.ndarray:
    """A smooth, colourful synthetic photo (H x W x 3 uint8)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [0.5 + 0.35 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y) + rng.uniform(0, 6))
             for _ in range(3)]
    return np.round(np.stack(chans, -1) * 255).astype(np.uint8)


def _desaturate(rgb: np.ndarray, factor: float) -> np.ndarray:
    """A stand-in colorization: the photo's own L with its ab scaled by ``factor`` (a colorizer keeps L)."""
    lab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    lab[:, 1:] *= factor
    return np.round(lab_to_rgb(lab)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _write_sources(root: Path, n: int, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    rng = np.random.default_rng(seed)
    real, full, l2 = root / "photos", root / "col_full", root / "col_l2"
    for d in (real, full, l2):
        d.mkdir(parents=True)
    for i in range(n):
        rgb = _photo(rng)
        Image.fromarray(rgb).save(real / f"img{i:03d}.png")
        Image.fromarray(_desaturate(rgb, 0.8)).save(full / f"img{i:03d}.png")
        Image.fromarray(_desaturate(rgb, 0.3)).save(l2 / f"img{i:03d}.jpg")
    return real, {"ours_full": full, "l2": l2}


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("turing")
    real, methods = _write_sources(root, 12)
    make_pairs(real, methods, root / "pairs", size=SIZE, seed=3, progress=False)
    return root / "pairs"


def _lab(path: Path) -> torch.Tensor:
    return rgb_to_lab(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float()
                      / 255)


# --------------------------------------------------------------------------------------------- pairs folder

def test_make_pairs_writes_the_documented_folder_and_the_random_baseline(pairs_dir):
    manifest = json.loads((pairs_dir / "pairs.json").read_text())
    assert manifest["format"] == "xchannel-turing-pairs/1" and manifest["size"] == SIZE
    assert sorted(p.name for p in pairs_dir.iterdir()) == ["l2", "ours_full", "pairs.json", "random", "real"]
    ids = manifest["ids"]
    for folder in ("real", "random", "ours_full", "l2"):
        assert sorted(p.stem for p in (pairs_dir / folder).iterdir()) == ids
        assert Image.open(pairs_dir / folder / f"{ids[0]}.png").size == (SIZE, SIZE)
    # The stand-in colorizations keep L, so make-pairs measures a small lightness gap for them.
    assert max(manifest["mean_lightness_gap"].values()) < 1.0
    # Random (Table 1): the photo's own L with the ab of a *different* photo.
    for image_id, donor in manifest["random_ab_from"].items():
        assert donor != image_id
        rnd, own, other = (_lab(pairs_dir / d / f"{i}.png")
                           for d, i in (("random", image_id), ("real", image_id), ("real", donor)))
        assert (rnd[:, 0] - own[:, 0]).abs().mean() < 2.0
        assert (rnd[:, 1:] - other[:, 1:]).abs().mean() < 0.35 * (rnd[:, 1:] - own[:, 1:]).abs().mean()
    assert IMAGE_SIZE == 256  # "Individual images of resolution 256x256" (the default size)


def test_make_pairs_refuses_missing_colorizations_and_existing_output(tmp_path, pairs_dir):
    real, methods = _write_sources(tmp_path, 3)
    (methods["l2"] / "img001.jpg").unlink()
    with pytest.raises(UserError, match=r"col_l2.*missing ids: img001"):
        make_pairs(real, methods, tmp_path / "out", size=SIZE, progress=False)
    with pytest.raises(UserError, match="not empty"):
        make_pairs(real, {"ours_full": methods["ours_full"]}, pairs_dir, size=SIZE, progress=False)


def test_scan_skips_symlinks_leading_outside_and_non_images(tmp_path, pairs_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "secret.png")
    copy = tmp_path / "pairs"
    shutil.copytree(pairs_dir, copy)
    os.symlink(outside / "secret.png", copy / "real" / "evil.png")
    os.symlink(outside, copy / "sneaky")
    (copy / "ours_full" / "notes.png").write_text("not an image")
    os.symlink(copy / "real" / "img000.png", copy / "ours_full" / "inside.png")  # inside: allowed
    pairs = scan_pairs(copy)
    assert "evil" not in pairs.real and "sneaky" not in pairs.fakes and "notes" not in pairs.fakes["ours_full"]
    assert pairs.fakes["ours_full"]["inside"].path == (copy / "real" / "img000.png").resolve()
    assert len(pairs.skipped) == 3 and all(str(copy) in s for s in pairs.skipped)
    for table in [pairs.real, *pairs.fakes.values()]:
        assert all(f.path.is_relative_to(copy.resolve()) for f in table.values())


# --------------------------------------------------------------------------------------------------- protocol

def test_session_plan_is_the_papers_protocol():
    cfg = ProtocolConfig()
    assert (N_PRACTICE, N_TEST, DISPLAY_MS, cfg.n_attention) == (10, 40, 1000, 4)  # 10% of 40 test trials
    ids = [f"m{i}" for i in range(60)]
    left, positions = 0, set()
    for s in range(200):
        trials = plan_session("ours_full", ids, [f"m{i}" for i in range(60)], random.Random(s), cfg)
        assert [t.index for t in trials] == list(range(50))
        assert [t.is_practice for t in trials] == [True] * 10 + [False] * 40
        checks = [t for t in trials if t.is_attention_check]
        assert len(checks) == 4 and all(t.fake_source == "random" and not t.is_practice for t in checks)
        assert all(t.fake_source == "ours_full" for t in trials if not t.is_attention_check)
        assert len({t.image_id for t in trials}) == 50  # enough images: no photo is seen twice
        left += sum(t.fake_side == "left" for t in trials)
        positions |= {t.index for t in checks}
    assert abs(left / (200 * 50) - 0.5) < 0.02  # fair coin per trial: 4 sigma = 0.02
    assert positions == set(range(10, 50))  # attention checks land anywhere among the test trials
    few = plan_session("l2", ["a", "b", "c"], ["a"], random.Random(0), cfg)  # a pilot folder: ids cycle
    assert len(few) == 50 and {t.image_id for t in few} == {"a", "b", "c"}


def test_method_assignment_is_balanced():
    rng = random.Random(0)
    load = {"ours_full": 0, "ours_class": 0, "l2": 0, "random": 0}
    for _ in range(40):
        load[choose_method(load, rng)] += 1
    assert set(load.values()) == {10}
    assert choose_method({"a": 3, "b": 1, "c": 2}, rng) == "b"


# ------------------------------------------------------------------------------------------------------ store

def test_answers_are_committed_at_once_and_survive_a_new_connection(tmp_path):
    db = tmp_path / "answers.sqlite"
    cfg = ProtocolConfig(n_practice=1, n_test=2, attention_fraction=0.0)
    store = AnswerStore(db)
    plan = lambda m, seed: plan_session(m, ["x", "y"], ["x"], random.Random(seed), cfg)  # noqa: E731
    session = store.create_session("participant-1", ["ours_full"], lambda load: "ours_full", plan, cfg, seed=1)
    with pytest.raises(sqlite3.IntegrityError):  # one session per participant, enforced by the database
        store.create_session("participant-1", ["ours_full"], lambda load: "ours_full", plan, cfg, seed=2)
    trial = store.current_trial(session.session_id)
    store.issue_trial(trial)
    store.record_answer(session, trial, "left", 812.5, 1900.0)
    # Another connection sees the answer while the server's connection is still open (commit per answer, WAL).
    other = sqlite3.connect(db)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = other.execute("SELECT participant_id, method, image_id, fake_side, clicked_side, is_practice, "
                        "response_ms FROM answers").fetchall()
    assert row == [("participant-1", "ours_full", trial.image_id, trial.fake_side, "left", 1, 812.5)]
    other.close()
    store.close()
    with AnswerStore(db, create=False) as reopened:
        assert len(reopened.answers()) == 1
        assert reopened.current_trial(session.session_id).index == 1
        assert not reopened.session_for("participant-1").completed
    (tmp_path / "foreign.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(UserError, match="foreign.sqlite"):
        AnswerStore(tmp_path / "foreign.sqlite", create=False)
    with pytest.raises(UserError, match="no such answers database"):
        AnswerStore(tmp_path / "missing.sqlite", create=False)


# ----------------------------------------------------------------------------------------------- statistics

def _answers(participant: str, method: str, fooled: int, counted: int = 36, attention_correct: int = 4,
             attention: int = 4, practice: int = 10) -> list[Answer]:
    """One participant's session: practice trials (all fooled, to show they are excluded), attention checks and
    ``counted`` test trials of which ``fooled`` labelled the real photo fake."""
    rows, idx = [], 0

    def add(fake_side: str, clicked: str, is_practice: bool, is_attention: bool) -> None:
        nonlocal idx
        rows.append(Answer(participant, f"s-{participant}", method, idx, f"i{idx}",
                           "random" if is_attention else method, fake_side, clicked, is_practice, is_attention,
                           900.0, 2000.0, 1, 0.0))
        idx += 1

    for _ in range(practice):
        add("left", "right", True, False)
    for k in range(attention):
        add("right", "right" if k < attention_correct else "left", False, True)
    for k in range(counted):
        add("left", "right" if k < fooled else "left", False, False)
    return rows


def test_fool_rate_excludes_practice_and_attention_trials():
    answers = [a for p in range(4) for a in _answers(f"p{p}", "ours_class", fooled=9, attention_correct=3)]
    s = summarize(answers, n_boot=500, seed=0)
    fool = s["methods"]["ours_class"]["fool_rate"]
    assert fool["rate"] == 0.25 and fool["trials"] == 4 * 36 and fool["participants"] == 4
    assert fool["se"] == 0.0  # identical participants: every bootstrap replicate is 0.25
    assert s["attention_accuracy"]["rate"] == 0.75
    table = markdown(s)
    assert "| Ours (class) | `ours_class` | 4 | 144 | 25.0 ± 0.0 | 25.2 ± 2.7 |" in table
    assert "| Ours (full) | `ours_full` | 0 | 0 | — | 32.3 ± 2.2 |" in table
    assert "paper: 87%" in table


def test_bootstrap_se_matches_the_independent_estimates():
    rng = np.random.default_rng(7)
    n_participants, n_trials, p = 40, 36, 0.3  # the paper's 40 participants per method, 36 counted trials each
    hits = rng.binomial(n_trials, p, size=n_participants)
    totals = np.full(n_participants, n_trials)
    est = bootstrap_rate(hits, totals, n_boot=20_000, rng=np.random.default_rng(0))
    r = hits / n_trials
    assert est.rate == pytest.approx(r.mean())
    plug_in = np.sqrt(((r - r.mean()) ** 2).sum()) / n_participants  # ideal bootstrap SE of a mean
    assert est.se == pytest.approx(plug_in, rel=0.03)
    assert est.se == pytest.approx(np.sqrt(p * (1 - p) / (n_participants * n_trials)), rel=0.25)
    again = bootstrap_rate(hits, totals, n_boot=20_000, rng=np.random.default_rng(0))
    assert again.se == est.se  # seeded
    # Between-participant spread (some people are harder to fool) widens the SE, as resampling people should.
    spread = np.r_[np.full(20, 4), np.full(20, 20)]
    wide = bootstrap_rate(spread, totals, n_boot=5000, rng=np.random.default_rng(1))
    assert wide.se > 2 * np.sqrt(wide.rate * (1 - wide.rate) / (n_participants * n_trials))
    assert per_participant(_answers("a", "l2", 5) + _answers("b", "l2", 7), attention=False)[0].tolist() == [5, 7]
    assert set(PAPER_AMT) >= {"ours_full", "ours_class", "l2", "l2_ft", "larsson", "dahl", "random"}


# -------------------------------------------------------------------------------------- server: the protocol

def _play(app: TuringApp, participant: str | None, pick=lambda trial: "left") -> tuple[str, list[dict]]:
    """A whole session through the app; returns the participant id and the answer replies."""
    reply = app.start(participant)
    assert reply.status == 200, reply.body
    data = json.loads(reply.body)
    pid, trial, replies = data["participant"], data["trial"], []
    while trial is not None:
        assert set(trial) == {"index", "practice", "number", "of", "images"}  # nothing about the fake
        time.sleep(app.cfg.display_ms / 1000 + 0.001)
        r = app.answer(pid, {"index": trial["index"], "clicked": pick(trial), "response_ms": 500})
        assert r.status == 200, r.body
        replies.append(json.loads(r.body))
        trial = replies[-1]["trial"]
    return pid, replies


def test_server_runs_the_protocol_and_refuses_a_second_session(tmp_path, pairs_dir):
    store = AnswerStore(tmp_path / "a.sqlite")
    app = TuringApp(scan_pairs(pairs_dir), store, cfg=ProtocolConfig(display_ms=5), seed=0)
    assert app.methods == ["l2", "ours_full", "random"]  # Random is tested as a method too (Table 1)
    pid, replies = _play(app, "worker-0001")
    assert [r["feedback"] is not None for r in replies] == [True] * 10 + [False] * 40  # feedback: practice only
    assert replies[-1]["completion_code"] == store.session_for(pid).completion_code
    rows = store.answers()
    assert len(rows) == 50 and sum(a.is_attention_check for a in rows) == 4
    assert [r["feedback"]["correct"] for r in replies[:10]] == [a.fake_side == "left" for a in rows[:10]]
    refused = app.start(pid)
    assert refused.status == 409 and json.loads(refused.body)["error"] == "already_completed"
    # Balanced assignment: the next two participants get the two methods not yet tested.
    first = store.session_for(pid).method
    others = {store.session_for(_play(app, None)[0]).method for _ in range(2)}
    assert others == set(app.methods) - {first}
    store.close()


def test_server_validates_answers_against_the_trial_record(tmp_path, pairs_dir):
    store = AnswerStore(tmp_path / "a.sqlite")
    app = TuringApp(scan_pairs(pairs_dir), store, cfg=ProtocolConfig(display_ms=200), seed=1)
    data = json.loads(app.start("worker-0002").body)
    ok = {"index": 0, "clicked": "right", "response_ms": 700}
    assert app.answer("worker-0002", ok).status == 409  # before the 200 ms display is over
    assert app.answer("nobody-000", ok).status == 403
    for bad in ({**ok, "clicked": "middle"}, {**ok, "index": "0"}, {**ok, "response_ms": -1},
                {**ok, "response_ms": float("nan")}, {"clicked": "left"}):
        assert app.answer("worker-0002", bad).status == 400
    time.sleep(0.2)
    assert app.answer("worker-0002", {**ok, "index": 1}).status == 409  # not the current trial
    assert app.answer("worker-0002", ok).status == 200
    assert app.answer("worker-0002", ok).status == 409  # answered already
    assert len(store.answers()) == 1 and data["trial"]["index"] == 0
    store.close()


# -------------------------------------------------------------------------------------- server: security

@pytest.fixture()
def live(tmp_path, pairs_dir):
    """A server on a free port over a copy of the pairs folder holding a symlink to a secret outside it."""
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(secret)
    pairs = tmp_path / "pairs"
    shutil.copytree(pairs_dir, pairs)
    os.symlink(secret, pairs / "real" / "leak.png")
    os.symlink(secret, pairs / "ours_full" / "leak.png")
    server = build_server(pairs, tmp_path / "answers.sqlite", port=0, cfg=ProtocolConfig(display_ms=1),
                          methods=["ours_full"], seed=2, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, secret
    server.shutdown()
    server.server_close()
    server.app.store.close()


def _request(server: TuringHTTPServer, method: str, target: str, body: dict | None = None,
             headers: dict | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    payload = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, target, body=payload, headers={**hdrs, **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, resp


def test_nothing_outside_the_current_trials_images_can_be_read(live, tmp_path):
    server, secret = live
    db_name = "answers.sqlite"
    for target in ["/../answers.sqlite", "/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2fpyproject.toml",
                   "/static/../../../../etc/passwd", "/etc/passwd", "//etc/passwd", f"/{db_name}",
                   f"/{db_name}-wal", f"/{tmp_path}/{db_name}", "/pairs.json", "/real/img000.png",
                   "/ours_full/leak.png", "/img/../real/img000.png", "/img/%2e%2e%2freal%2fimg000.png",
                   "/img/" + "A" * 32, "/img/" + "A" * 32 + "/../../etc/passwd", "/static/", "/static",
                   "/api/answer", "/static/app.js/..", "/static/%61pp.js", f"http://evil{tmp_path}/{db_name}"]:
        status, data, _ = _request(server, "GET", target)
        assert status == 404, target
        assert b"root:" not in data and b"SQLite" not in data
    assert _request(server, "DELETE", "/")[0] == 501
    assert _request(server, "POST", "/api/session", headers={"Content-Type": "text/plain"})[0] in (411, 415)
    _, page, resp = _request(server, "GET", "/")
    assert b"/static/app.js" in page and resp.getheader("Cache-Control") == "no-store"
    assert "script-src 'self'" in resp.getheader("Content-Security-Policy")

    # A whole session over HTTP: every image served is one of the enumerated pairs-folder files, each token
    # works once, and the secret behind the symlinks never comes out.
    allowed = {p.read_bytes() for p in Path(server.app.pairs.root).rglob("*.png") if not p.is_symlink()}
    status, data, resp = _request(server, "POST", "/api/session", {})
    assert status == 200 and "HttpOnly" in resp.getheader("Set-Cookie")
    session = json.loads(data)
    pid, trial, served = session["participant"], session["trial"], 0
    while trial is not None:
        for url in trial["images"].values():
            status, image, resp = _request(server, "GET", url)
            assert status == 200 and image in allowed and image != secret.read_bytes()
            assert resp.getheader("Content-Type") == "image/png"
            assert _request(server, "GET", url)[0] == 404  # one fetch per token
            served += 1
        time.sleep(0.002)
        status, data, _ = _request(server, "POST", "/api/answer",
                                   {"participant": pid, "index": trial["index"], "clicked": "right",
                                    "response_ms": 300})
        assert status == 200
        old, trial = trial, json.loads(data)["trial"]
        assert _request(server, "GET", old["images"]["left"])[0] == 404  # answered: tokens revoked
    assert served == 100
    assert all(a.image_id != "leak" for a in server.app.store.answers())


def test_database_inside_the_pairs_folder_is_refused(pairs_dir):
    with pytest.raises(UserError, match="must not be inside the pairs folder"):
        build_server(pairs_dir, pairs_dir / "answers.sqlite", port=0)


# ----------------------------------------------------------------------------------------------------- CLI

def test_cli_report_and_clear_errors(tmp_path, pairs_dir, capsys):
    store = AnswerStore(tmp_path / "answers.sqlite")
    app = TuringApp(scan_pairs(pairs_dir), store, methods=["ours_full"], cfg=ProtocolConfig(display_ms=1), seed=0)
    _play(app, "worker-0003", pick=lambda trial: "right")
    _play(app, "worker-0004", pick=lambda trial: "left")
    store.close()
    assert cli_main(["turing-test", "report", "--db", str(tmp_path / "answers.sqlite"), "--json",
                     "--bootstrap", "200", "--out", str(tmp_path / "rep")]) == 0
    out = json.loads(capsys.readouterr().out)
    fool = out["methods"]["ours_full"]["fool_rate"]
    assert fool["participants"] == 2 and fool["trials"] == 72 and out["sessions"]["completed"] == 2
    assert "Ours (full)" in (tmp_path / "rep" / "turing_report.md").read_text()
    assert json.loads((tmp_path / "rep" / "turing_report.json").read_text())["config"]["bootstrap"] == 200
    assert cli_main(["turing-test", "report", "--db", str(tmp_path / "nope.sqlite")]) == 2
    assert "nope.sqlite: no such answers database" in capsys.readouterr().err
    assert cli_main(["turing-test", "serve", "--pairs", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "missing: pairs folder not found" in capsys.readouterr().err
