"""The dashboard's JSON API over real backends, its guards (token, Host, actions) and its CLI.

The app is driven in process through httpx's ASGI transport with readings taken explicitly
(``Dashboard.sample``), so every number is checked exactly; one test runs the real CLI
(uvicorn and the background samplers) as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from typing import Any

import httpx
import pytest

import unifiedq
from unifiedq.cli.dashboard import dashboard_main
from unifiedq.dashboard import Dashboard, Settings, create_app, make_sources, mask_url
from unifiedq.fair import FairQueue


def _name() -> str:
    return f"dash-{uuid.uuid4().hex[:10]}"


def _call(dash: Dashboard, method: str, path: str, *, host: str = "127.0.0.1",
          **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=dash.app())
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as c:
            return await c.request(method, path, **kw)

    return asyncio.run(go())


def _sample(dash: Dashboard) -> None:
    async def go() -> None:
        for i in range(len(dash.sources)):
            await dash.sample(i)

    asyncio.run(go())


def _view(dash: Dashboard, i: int = 0) -> dict[str, Any]:
    r = _call(dash, "GET", f"/api/queues/{i}")
    assert r.status_code == 200, r.text
    return dict(r.json())


# -- masking ---------------------------------------------------------------------------------
def test_mask_url_hides_passwords_and_secret_options() -> None:
    assert mask_url("redis://:s3cret@localhost:6379/0?queue=a") == \
        "redis://:***@localhost:6379/0?queue=a"
    assert mask_url("amqp://guest:pw@h:5672/v?queue=q") == "amqp://guest:***@h:5672/v?queue=q"
    shown = mask_url("quic://h:4433?queue=q&token=abc&api_key=k&cafile=/x")
    assert "abc" not in shown and "=k" not in shown and "cafile=/x" in shown
    assert mask_url("redis://h/0?queue=jobs.{tenant}") == "redis://h/0?queue=jobs.{tenant}"


# -- per-driver readings -----------------------------------------------------------------------
def test_memory_depth_oldest_age_and_net_flow() -> None:
    url = f"memory://{_name()}"
    with unifiedq.connect(url) as q:
        dash = create_app([url])
        _sample(dash)
        assert _view(dash)["fields"]["depth"] == 0
        q.enqueue(b"a")
        q.enqueue(b"b")
        time.sleep(0.05)
        _sample(dash)
        v = _view(dash)
        assert v["error"] is None and v["driver"] == "memory"
        assert v["fields"]["depth"] == 2
        assert v["fields"]["oldest_age"] >= 0.04
        assert v["fields"]["dead"] is None  # memory keeps no dead letters: unknown, not 0
        assert v["rates"]["net"] > 0 and v["rates"]["settle"] is None
        dead = _call(dash, "GET", "/api/queues/0/dead").json()
        assert dead == {"supported": False, "jobs": []}


def test_shm_depth() -> None:
    url = f"shm://{_name()}?capacity=64&slot_size=128"
    with unifiedq.connect(url) as q:
        try:
            dash = create_app([url])
            q.enqueue(b"x")
            _sample(dash)
            v = _view(dash)
            assert v["error"] is None, v["error"]
            assert v["fields"]["depth"] == 1
        finally:
            for s in dash.sources:
                s.close()
            q.purge()


def test_redis_counts_rates_and_dead_letter_actions(redis_url: str) -> None:
    import redis

    name = _name()
    url = f"{redis_url}?queue={name}"
    dash = create_app([url], Settings(allow_actions=True))
    with unifiedq.connect(url) as q:
        _sample(dash)
        t0 = dash.history[0][-1].t
        for i in range(5):
            q.enqueue(f"job-{i}".encode())
        jobs = q.dequeue_many(3, timeout=1)
        q.ack(jobs[0])
        q.nack(jobs[1], requeue=False)  # dead (asynq's archived set)
        q.nack(jobs[2], requeue=False)
        _sample(dash)
        dt = dash.history[0][-1].t - t0
        v = _view(dash)
        f = v["fields"]
        assert (f["depth"], f["pending"], f["active"], f["dead"]) == (2, 2, 0, 2)
        # 5 enqueued, 3 attempts settled (1 ack + 2 dead) between the two readings.
        assert v["rates"]["enqueue"] * dt == pytest.approx(5, rel=1e-6)
        assert v["rates"]["settle"] * dt == pytest.approx(3, rel=1e-6)

        dead = _call(dash, "GET", "/api/queues/0/dead").json()
        assert dead["supported"] is True
        ids = {d["id"] for d in dead["jobs"]}
        assert ids == {jobs[1].id, jobs[2].id}
        row = next(d for d in dead["jobs"] if d["id"] == jobs[1].id)
        assert row["preview"] == "job-1" and row["size"] == 5 and row["attempts"] == 1
        assert "requeue=False" in row["error"]

        confirm = {"X-Unifiedq-Confirm": "yes"}
        r = _call(dash, "POST", f"/api/queues/0/dead/{jobs[1].id}/retry")
        assert r.status_code == 403  # no confirmation header: refused
        r = _call(dash, "POST", f"/api/queues/0/dead/{jobs[1].id}/retry", headers=confirm)
        assert r.status_code == 200 and r.json()["ok"] is True
        r = _call(dash, "POST", f"/api/queues/0/dead/{jobs[1].id}/retry", headers=confirm)
        assert r.status_code == 404  # not dead any more
        r = _call(dash, "POST", f"/api/queues/0/dead/{jobs[2].id}/delete", headers=confirm)
        assert r.status_code == 200
        f = _view(dash)["fields"]  # the action took a fresh reading
        assert (f["pending"], f["dead"]) == (3, 0)

        # The retried job is handed out again, same id and body; the deleted one is gone.
        got = q.dequeue_many(3, timeout=1)
        assert jobs[1].id in {j.id for j in got}
        assert next(j for j in got if j.id == jobs[1].id).body == b"job-1"
        q.ack_many(got)
        raw = redis.Redis.from_url(redis_url)
        try:
            assert raw.exists(f"asynq:{{{name}}}:t:{jobs[2].id}") == 0
        finally:
            raw.close()
        assert _call(dash, "POST", "/api/queues/9/dead/x/retry", headers=confirm).status_code == 404


def test_actions_are_refused_when_not_allowed(redis_url: str) -> None:
    url = f"{redis_url}?queue={_name()}"
    with unifiedq.connect(url) as q:
        q.enqueue(b"x")
        job = q.dequeue(timeout=1)
        assert job is not None
        q.nack(job, requeue=False)
        dash = create_app([url])  # read-only by default
        assert _call(dash, "GET", "/api/config").json()["actions"] is False
        assert len(_call(dash, "GET", "/api/queues/0/dead").json()["jobs"]) == 1
        for what in ("retry", "delete"):
            r = _call(dash, "POST", f"/api/queues/0/dead/{job.id}/{what}",
                      headers={"X-Unifiedq-Confirm": "yes"})
            assert r.status_code == 403
        assert len(_call(dash, "GET", "/api/queues/0/dead").json()["jobs"]) == 1


def test_backend_error_shows_per_queue_without_the_password(redis_url: str) -> None:
    port = _free_port()  # nothing listens there
    bad = f"redis://:hunter2secret@127.0.0.1:{port}/0?queue=x&socket_connect_timeout=0.5"
    good = f"memory://{_name()}"
    dash = create_app([bad, good])
    _sample(dash)
    r = _call(dash, "GET", "/api/queues")
    assert r.status_code == 200
    assert "hunter2secret" not in r.text
    data = r.json()["queues"]
    assert data[0]["error"] and "BackendConnectionError" in data[0]["error"]
    assert data[0]["label"].startswith("redis://:***@127.0.0.1")
    assert data[1]["error"] is None and data[1]["fields"]["depth"] == 0


def test_fair_template_tenants_weights_and_shares(redis_url: str) -> None:
    base = _name()
    template = f"{redis_url}?queue={base}.{{tenant}}"
    weights = {"vip": 3.0, "free": 1.0}
    with FairQueue(template, weights=weights) as fq:
        dash = create_app(make_sources([template], weights=weights), Settings(share_window=10))
        for _ in range(4):
            fq.enqueue(b"v", tenant="vip")
            fq.enqueue(b"f", tenant="free")
        with unifiedq.connect(f"{redis_url}?queue={base}.other") as other:
            other.enqueue(b"o")  # found on the server (asynq:queues), not named anywhere
            _sample(dash)
            got = fq.dequeue_many(4, timeout=1)
            fq.ack_many(got)
            _sample(dash)
            v = _view(dash)
            rows = {r["tenant"]: r for r in v["tenants"]}
            assert set(rows) >= {"vip", "free", "other"}
            assert rows["other"]["weight"] == 1.0 and rows["other"]["depth"] == 1
            # Expected share among backlogged tenants: weight / sum of their weights.
            backlogged = [t for t in rows if rows[t]["depth"]]
            total_w = sum(rows[t]["weight"] for t in backlogged)
            for t in backlogged:
                assert rows[t]["expected_share"] == pytest.approx(rows[t]["weight"] / total_w)
            # Observed share of settled attempts, from asynq's per-queue counters.
            settled = {t: rows[t]["settled"] for t in ("vip", "free")}
            assert sum(settled.values()) == 4
            assert rows["vip"]["observed_share"] == pytest.approx(settled["vip"] / 4)
            assert v["fields"]["depth"] == 8 + 1 - 4
            other.purge()
        fq.purge()


@pytest.mark.server("rabbitmq")
def test_amqp_depth(amqp_url: str) -> None:
    url = f"{amqp_url}?queue={_name()}"
    with unifiedq.connect(url) as q:
        dash = create_app([url])
        try:
            q.enqueue(b"a")
            q.enqueue(b"b")
            deadline = time.monotonic() + 10
            while True:  # RabbitMQ's message count trails a publish by a moment
                _sample(dash)
                v = _view(dash)
                if v["fields"]["depth"] == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert v["error"] is None and v["fields"]["depth"] == 2
            secret = urllib.parse.urlsplit(amqp_url).password
            if secret:
                assert f":{secret}@" not in v["label"] and ":***@" in v["label"]
        finally:
            for s in dash.sources:
                s.close()
            q.purge()


@pytest.mark.server("faktory")
def test_faktory_depth_and_server_wide_dead(faktory_url: str) -> None:
    url = f"{faktory_url}?queue={_name()}"
    with unifiedq.connect(url) as q:
        dash = create_app([url])
        try:
            q.enqueue(b"a")
            _sample(dash)
            v = _view(dash)
            assert v["error"] is None
            assert v["fields"]["depth"] == 1 and v["fields"]["dead"] is None
            assert isinstance(v["fields"]["server_dead"], int)
        finally:
            for s in dash.sources:
                s.close()
            q.purge()


# -- guards ------------------------------------------------------------------------------------
def test_token_guards_every_api_route_but_not_the_page() -> None:
    dash = create_app([f"memory://{_name()}"], Settings(token="t" * 20))
    assert _call(dash, "GET", "/").status_code == 200
    assert _call(dash, "GET", "/static/app.js").status_code == 200
    for path in ("/api/config", "/api/queues", "/api/queues/0", "/api/queues/0/dead"):
        assert _call(dash, "GET", path).status_code == 401
        bad = {"Authorization": "Bearer " + "u" * 20}
        assert _call(dash, "GET", path, headers=bad).status_code == 401
        ok = {"Authorization": "Bearer " + "t" * 20}
        assert _call(dash, "GET", path, headers=ok).status_code == 200


def test_loopback_server_answers_loopback_host_names_only() -> None:
    dash = create_app([f"memory://{_name()}"])
    assert _call(dash, "GET", "/api/queues", host="localhost:8089").status_code == 200
    assert _call(dash, "GET", "/api/queues", host="[::1]:8089").status_code == 200
    # DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends its own Host.
    assert _call(dash, "GET", "/api/queues", host="evil.example:8089").status_code == 421
    open_dash = create_app([f"memory://{_name()}"], Settings(loopback_only=False))
    assert _call(open_dash, "GET", "/api/queues", host="evil.example").status_code == 200


def test_page_is_served_with_a_strict_content_security_policy() -> None:
    dash = create_app([f"memory://{_name()}"])
    r = _call(dash, "GET", "/")
    assert r.status_code == 200 and "static/app.js" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert _call(dash, "GET", "/static/nope.js").status_code == 404
    assert _call(dash, "GET", "/static/.hidden.js").status_code == 404


def test_cli_refuses_actions_on_a_non_loopback_address_without_token(
        capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    assert dashboard_main(["memory://x", "--host", "0.0.0.0", "--allow-actions"]) == 2
    assert "refusing" in capsys.readouterr().err
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert dashboard_main(["memory://x", "--token-file", str(short)]) == 2
    assert dashboard_main(["memory://x", "--token-env", "UNIFIEDQ_NO_SUCH_VAR_42"]) == 2
    assert dashboard_main(["memory://x", "--weight", "vip"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serves_samples_in_background_and_masks_its_log(redis_url: str,
                                                           tmp_path: Any) -> None:
    port = _free_port()
    token = "s" * 24
    (tmp_path / "tok").write_text(token + "\n")
    url = f"{redis_url}?queue={_name()}"
    bad = f"redis://:topsecretpw@127.0.0.1:{_free_port()}/0?queue=x&socket_connect_timeout=0.3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unifiedq", "dashboard", url, bad, "--port", str(port),
         "--interval", "0.2", "--token-file", str(tmp_path / "tok")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        auth = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 15
        with unifiedq.connect(url) as q:
            q.enqueue(b"x")
            while True:
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/api/queues", headers=auth, timeout=2)
                    data = r.json()["queues"]
                    if data[0]["fields"].get("depth") == 1 and data[1]["error"]:
                        break
                except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError):
                    pass
                assert time.monotonic() < deadline, "the dashboard never showed depth 1"
                time.sleep(0.1)
            assert "topsecretpw" not in r.text
            assert httpx.get(f"http://127.0.0.1:{port}/api/queues", timeout=2).status_code == 401
            q.purge()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert "topsecretpw" not in out + err
    assert ":***@127.0.0.1" in err


def test_rate_figures_span_the_window_and_the_chart_each_interval(redis_url: str) -> None:
    url = f"{redis_url}?queue={_name()}"
    dash = create_app([url], Settings(rate_window=60.0))
    with unifiedq.connect(url) as q:
        _sample(dash)
        q.enqueue_many([b"a"] * 5)
        _sample(dash)
        q.enqueue_many([b"b"] * 3)
        q.ack_many(q.dequeue_many(4, timeout=1))
        _sample(dash)
        t = [s.t for s in dash.history[0]]
        v = _view(dash)
        assert v["rates"]["seconds"] == pytest.approx(t[2] - t[0])
        assert v["rates"]["enqueue"] * (t[2] - t[0]) == pytest.approx(8, rel=1e-6)
        assert v["rates"]["settle"] * (t[2] - t[0]) == pytest.approx(4, rel=1e-6)
        first, second = v["series"]
        assert first["enqueue"] * (t[1] - t[0]) == pytest.approx(5, rel=1e-6)
        assert second["enqueue"] * (t[2] - t[1]) == pytest.approx(3, rel=1e-6)
        assert second["settle"] * (t[2] - t[1]) == pytest.approx(4, rel=1e-6)
        assert first["depth"] == 5 and second["depth"] == 4
        q.purge()
    short = create_app([url], Settings(rate_window=0.0))
    _sample(short)
    _sample(short)
    _sample(short)
    t = [s.t for s in short.history[0]]
    assert _view(short)["rates"]["seconds"] == pytest.approx(t[2] - t[1])
