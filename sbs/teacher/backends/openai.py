"""`openai`: any OpenAI-compatible endpoint (/completions or /chat/completions) from Ray actors.

Each actor sends its batch's requests concurrently (at most `max_concurrency` in flight) with
aiohttp. Timeouts, connection errors, 408/429/5xx and unparseable bodies are retried with
exponential backoff (`backoff_s * 2**attempt`, capped), honouring `Retry-After`; 4xx client errors
are not retried. A request that still fails becomes a row with `error` set (then a reject with
reason teacher_error): one bad request never fails its batch. Why not
`ray.data.llm.HttpRequestProcessorConfig`: see docs/teacher.md.

The API key is read from the environment variable NAMED by `openai.api_key_env`, in the driver
(so a missing key fails before any work) and handed to the actors; it never appears in configs,
rows, stats or error messages.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from typing import Any, ClassVar

import pyarrow as pa

from sbs.teacher.backends.base import Result, TeacherBackend, map_with_actor_pool, resolve_chat, with_outputs

RETRY_STATUS = {408, 409, 429} | set(range(500, 600))


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Retryable(Exception):
    def __init__(self, msg: str, wait: float | None = None):
        super().__init__(msg)
        self.wait = wait


class OpenAIClient:
    """The actor: one aiohttp session per batch, a semaphore for the concurrency limit."""

    def __init__(self, cfg_json: str, chat: bool, api_key: str | None):
        from sbs.teacher.config import TeacherConfig

        self.cfg = TeacherConfig.model_validate_json(cfg_json)
        self.o, self.chat = self.cfg.openai, chat
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _body(self, row: dict[str, Any]) -> dict[str, Any]:
        s = self.cfg.sampling
        body: dict[str, Any] = {"model": self.o.model, "max_tokens": s.max_tokens, "temperature": s.temperature,
                                "top_p": s.top_p, "seed": s.seed + int(row["sample"]), "n": 1}
        if s.stop:
            body["stop"] = s.stop[:4]  # the OpenAI API accepts at most 4 stop strings
        if self.chat:
            body["messages"] = json.loads(row["messages"])
        else:
            body["prompt"] = row["prompt"]
        return body

    def _parse(self, payload: Any) -> tuple[str, int, int]:
        choice = payload["choices"][0]
        text = choice["message"]["content"] if self.chat else choice["text"]
        if not isinstance(text, str):
            raise TypeError(f"choices[0] text is {type(text).__name__}")
        usage = payload.get("usage") or {}
        return text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)

    async def _once(self, session, url: str, body: dict[str, Any]) -> tuple[str, int, int]:
        import aiohttp

        try:
            async with session.post(url, json=body, headers=self.headers,
                                    timeout=aiohttp.ClientTimeout(total=self.o.timeout_s)) as r:
                raw = await r.text()
                if r.status in RETRY_STATUS:
                    raise _Retryable(f"HTTP {r.status}: {raw[:200]}", retry_after_s(r.headers.get("Retry-After")))
                if r.status >= 400:
                    raise RuntimeError(f"HTTP {r.status} (not retried): {raw[:300]}")
        except (asyncio.TimeoutError, aiohttp.ClientError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}"[:300]) from None
        try:
            return self._parse(json.loads(raw))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"unparseable response ({type(e).__name__}: {e}): {raw[:200]!r}") from None

    async def _one(self, session, sem: asyncio.Semaphore, row: dict[str, Any]) -> Result:
        url = f"{self.o.base_url}/{'chat/completions' if self.chat else 'completions'}"
        body = self._body(row)
        last = ""
        for attempt in range(self.o.max_retries + 1):
            try:
                async with sem:
                    return await self._once(session, url, body)
            except _Retryable as e:
                last = str(e)
                if attempt == self.o.max_retries:
                    break
                wait = e.wait if e.wait is not None else self.o.backoff_s * 2 ** attempt
                await asyncio.sleep(min(wait, self.o.max_backoff_s))
            except Exception as e:
                return f"openai: {e}"[:2000]
        return f"openai: gave up after {self.o.max_retries + 1} tries; last: {last}"[:2000]

    async def _all(self, rows: list[dict[str, Any]]) -> list[Result]:
        import aiohttp

        sem = asyncio.Semaphore(self.o.max_concurrency)
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(self._one(session, sem, r) for r in rows))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return with_outputs(batch, asyncio.run(self._all(batch.to_pylist())))


class OpenAIBackend(TeacherBackend):
    name: ClassVar[str] = "openai"

    def __init__(self, cfg):
        super().__init__(cfg)
        if not cfg.openai.model:
            raise ValueError("openai.model: set the model name the endpoint serves")
        env = cfg.openai.api_key_env
        self._key = os.environ.get(env) if env else None
        if env and not self._key:
            raise ValueError(f"openai.api_key_env: environment variable {env} is not set "
                             f"(set it, or openai.api_key_env=null for an endpoint without auth)")
        self.wants_chat = resolve_chat(cfg, cfg.openai.chat)

    def generate(self, ds):
        c = self.cfg
        return map_with_actor_pool(ds, OpenAIClient, c, fn_constructor_kwargs={
            "cfg_json": c.model_dump_json(), "chat": self.wants_chat, "api_key": self._key})

    def describe(self) -> str:
        return f"openai/{self.cfg.openai.model}"
