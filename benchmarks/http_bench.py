"""Our OpenAI-compatible actor vs `ray.data.llm.HttpRequestProcessorConfig`, same local server.

Used by `teacher_bench.py --http`: a 127.0.0.1 server answers /v1/completions after a fixed
latency (a stand-in for a remote model); both clients send the same N requests from one actor.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LATENCY_S = 0.05
N = 256


class _H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(LATENCY_S)
        data = json.dumps({"choices": [{"text": " The answer is (1 + 1)."}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 7}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default listen backlog of 5 drops SYNs under 64 concurrent clients
    daemon_threads = True


def bench_http(work) -> dict:
    import ray.data
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    from sbs.config import load_config
    from sbs.teacher.backends.openai import OpenAIBackend
    from sbs.teacher.config import TeacherConfig

    httpd = _Server(("127.0.0.1", 0), _H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    rows = [{"id": str(i), "sample": 0, "prompt": f"Q: {i}\nA:", "messages": ""} for i in range(N)]
    try:
        cfg = load_config(TeacherConfig, None, [
            "backend=openai", f"openai.base_url={url}", "openai.model=fake", "openai.api_key_env=null",
            "openai.max_concurrency=64", "batch_size=64", "num_actors=1"])
        t = time.time()
        ours = OpenAIBackend(cfg).generate(ray.data.from_items(rows)).take_all()
        ours_s = time.time() - t
        assert len(ours) == N and all(r["text"] for r in ours)
        proc = build_processor(
            HttpRequestProcessorConfig(url=f"{url}/completions", batch_size=64, concurrency=1, qps=1000,
                                       max_retries=2),
            preprocess=lambda r: {"payload": {"model": "fake", "prompt": r["prompt"], "max_tokens": 16}},
            postprocess=lambda r: {"id": r["id"], "text": r["http_response"]["choices"][0]["text"]})
        t = time.time()
        theirs = proc(ray.data.from_items(rows)).take_all()
        theirs_s = time.time() - t
        assert len(theirs) == N
    finally:
        httpd.shutdown()
    return {"requests": N, "server_latency_s": LATENCY_S, "ours_s": round(ours_s, 2),
            "ours_req_per_s": round(N / ours_s, 1), "http_processor_s": round(theirs_s, 2),
            "http_processor_req_per_s": round(N / theirs_s, 1), "ratio_ours_over_processor": round(theirs_s / ours_s, 2)}
