"""The openai backend against a real OpenAI-compatible HTTP server on 127.0.0.1 that injects
faults: 500s, 429 with Retry-After, timeouts, garbage bodies, 400s. Retries must end in success,
exhausted retries and client errors in rejects with a reason; k>1 votes per seed."""
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from sbs.config import load_config
from sbs.datasets import get_dataset
from sbs.teacher.config import TeacherConfig
from sbs.teacher.pipeline import execute

KEY = "sk-test-not-a-real-key-123"
SVAMP = {e.id: e for e in get_dataset("svamp").load("train", limit=12)}
BY_INPUT = {e.input: e for e in SVAMP.values()}
# Per example: what the server does on attempt 1, 2, ... (the last entry repeats).
SCRIPT = {"svamp-train-00001": ["500", "ok"], "svamp-train-00002": ["429", "ok"], "svamp-train-00003": ["slow", "ok"],
          "svamp-train-00006": ["garbage", "ok"], "svamp-train-00007": ["500"], "svamp-train-00008": ["400"],
          "svamp-train-00010": ["nomarker"], "svamp-train-00011": ["ok"]}
# k=3 voting: the answer each seed gives ("gold" or a wrong equation).
VOTES = {"svamp-train-00011": ["(1 + 1)", "gold", "gold"], "svamp-train-00001": ["(7 + 7)", "(7 + 7)", "gold"]}


class Server:
    def __init__(self):
        self.log: dict[tuple[str, int], list[float]] = defaultdict(list)
        self.paths: set[str] = set()
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body, headers=()):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                srv.paths.add(self.path)
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, {"error": "bad key"})
                chat = self.path.endswith("/chat/completions")
                text = body["messages"][-1]["content"] if chat else body["prompt"].rsplit("Q: ", 1)[1][:-len("\nA:")]
                ex = BY_INPUT[text]
                seed = body["seed"]
                srv.log[(ex.id, seed)].append(time.time())
                steps = SCRIPT[ex.id]
                act = steps[min(len(srv.log[(ex.id, seed)]), len(steps)) - 1]
                if chat:
                    act = "ok"
                if act == "500":
                    return self._send(500, {"error": "boom"})
                if act == "429":
                    return self._send(429, {"error": "slow down"}, [("Retry-After", "1")])
                if act == "400":
                    return self._send(400, {"error": "bad request"})
                if act == "garbage":
                    return self._send(200, "{not json")
                if act == "slow":
                    time.sleep(1.5)
                ans = ex.label
                if chat and ex.id in VOTES:
                    v = VOTES[ex.id][seed]
                    ans = ex.label if v == "gold" else v
                out = "I just know." if act == "nomarker" else f"Work it out (seed {seed}). The answer is {ans}."
                choice = {"message": {"role": "assistant", "content": out}} if chat else {"text": out}
                return self._send(200, {"choices": [choice], "usage": {"prompt_tokens": 100, "completion_tokens": 7}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("SBS_TEST_OPENAI_KEY", KEY)
    s = Server()
    yield s
    s.httpd.shutdown()


def _cfg(out, url, *extra):
    return load_config(TeacherConfig, None, [
        f"out={out}", "dataset=svamp", "split=train", "limit=12", "backend=openai", f"openai.base_url={url}",
        "openai.model=fake", "openai.api_key_env=SBS_TEST_OPENAI_KEY", "openai.timeout_s=0.5", "openai.max_retries=2",
        "openai.backoff_s=0.05", "openai.max_concurrency=4", "batch_size=4", "shard_size=6", "progress=false", *extra])


def test_retries_then_success_and_rejects_when_exhausted(ray_local, tmp_path, server):
    stats = execute(_cfg(tmp_path / "o", server.url))
    acc = {r["id"]: r for r in pq.read_table(tmp_path / "o" / "accepted").to_pylist()}
    rej = {r["id"]: r for r in pq.read_table(tmp_path / "o" / "rejects").to_pylist()}
    assert set(acc) == {"svamp-train-00001", "svamp-train-00002", "svamp-train-00003", "svamp-train-00006",
                        "svamp-train-00011"}
    exemplars = {i for i, r in rej.items() if r["reason"] == "exemplar"}
    assert exemplars == {"svamp-train-00000", "svamp-train-00004", "svamp-train-00005", "svamp-train-00009"}
    assert not any(i in exemplars for i, _ in server.log), "an exemplar was sent to the teacher"
    assert rej["svamp-train-00007"]["reason"] == "teacher_error" and "gave up after 3 tries" in rej["svamp-train-00007"]["detail"]
    assert len(server.log[("svamp-train-00007", 0)]) == 3
    assert rej["svamp-train-00008"]["reason"] == "teacher_error" and "HTTP 400 (not retried)" in rej["svamp-train-00008"]["detail"]
    assert len(server.log[("svamp-train-00008", 0)]) == 1
    assert rej["svamp-train-00010"]["reason"] == "no_answer_marker"
    t = server.log[("svamp-train-00002", 0)]
    assert len(t) == 2 and t[1] - t[0] >= 0.95, "Retry-After: 1 was not honoured"
    assert len(server.log[("svamp-train-00001", 0)]) == 2 and len(server.log[("svamp-train-00006", 0)]) == 2
    assert len(server.log[("svamp-train-00003", 0)]) == 2  # the first attempt timed out
    assert stats["examples_in"] == 12 and stats["counts_add_up"] and stats["tokens_out"] == 7 * 6
    assert server.paths == {"/v1/completions"}
    blob = (tmp_path / "o" / "stats.json").read_text() + json.dumps(list(rej.values()))
    assert KEY not in blob, "the API key leaked into the outputs"


def test_chat_endpoint_and_self_consistency_vote(ray_local, tmp_path, server):
    stats = execute(_cfg(tmp_path / "c", server.url, "openai.chat=true", "sampling.k=3", "sampling.temperature=0.7",
                         "limit=2", "dataset=svamp"))  # ids 00000 (exemplar) and 00001
    rej = {r["id"]: r for r in pq.read_table(tmp_path / "c" / "rejects").to_pylist()}
    assert rej["svamp-train-00001"]["reason"] == "gold_mismatch" and "2/3 votes" in rej["svamp-train-00001"]["detail"]
    assert server.paths == {"/v1/chat/completions"} and stats["samples"] == 3


def test_k3_majority_keeps_agreeing_rationales(ray_local, tmp_path, server):
    SCRIPT_IDS = "svamp-train-00011"
    stats = execute(_cfg(tmp_path / "v", server.url, "openai.chat=true", "sampling.k=3", "sampling.temperature=0.7",
                         "limit=12", "shard_size=12"))
    acc = {r["id"]: r for r in pq.read_table(tmp_path / "v" / "accepted").to_pylist()}
    row = acc[SCRIPT_IDS]
    assert (row["votes"], row["samples"]) == (2, 3) and len(row["rationales"]) == 2
    assert row["rationale"] == "Work it out (seed 1)." and row["rationales"][1] == "Work it out (seed 2)."
    assert stats["accepted"] + stats["rejected"] == 12


def test_missing_api_key_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("SBS_TEST_OPENAI_KEY", raising=False)
    with pytest.raises(ValueError, match="SBS_TEST_OPENAI_KEY is not set"):
        execute(_cfg(tmp_path / "k", "http://127.0.0.1:9/v1"))
