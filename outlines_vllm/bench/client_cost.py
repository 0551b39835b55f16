"""``outlines-vllm bench client``: what this package's client costs in CPU, against the raw openai SDK.

A client layer must earn its place: on a GPU a request's server time shrinks, and client CPU
per request does not. This measures it alone, free of server noise: a stand-in OpenAI server
(a subprocess, so its CPU is not counted) answers every request at once with the same compact
JSON, and both paths send the same structured request to it.

- ``first call``: a fresh process imports the client and makes one structured call (what a
  script or a serverless function pays), ours (``import outlines_vllm`` + ``model(prompt, T)``)
  and raw (``import openai`` + ``create`` with the same body), several processes each.
- ``per request``: steady state in one process, blocks of requests alternating raw and ours.

CPU time is ``time.process_time()``: waiting for the server is not counted.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from .report import save

STUB_SERVER = textwrap.dedent(
    """
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ANSWER = {"id": "x", "object": "chat.completion", "created": 0, "model": "stub",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": '{"name":"Rex","legs":4}'}}],
              "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            self._send({"version": "0.32.0"} if self.path == "/version"
                       else {"object": "list", "data": [{"id": "stub", "object": "model"}]})
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(ANSWER)
        def _send(self, payload):
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)

# One structured call, ours or raw, after the imports it needs; prints the CPU seconds it took.
FIRST_CALL = {
    "ours": textwrap.dedent(
        """
        import sys, time
        start = time.process_time()
        import openai, outlines_vllm
        from pydantic import BaseModel
        class Pet(BaseModel):
            name: str
            legs: int
        model = outlines_vllm.from_vllm(openai.OpenAI(base_url=sys.argv[1], api_key="-"))
        model.parse("Describe a pet.", Pet, max_tokens=50)
        print(time.process_time() - start)
        """
    ),
    "raw": textwrap.dedent(
        """
        import json, sys, time
        start = time.process_time()
        import openai
        from pydantic import BaseModel
        class Pet(BaseModel):
            name: str
            legs: int
        client = openai.OpenAI(base_url=sys.argv[1], api_key="-")
        response = client.chat.completions.create(
            model="stub", messages=[{"role": "user", "content": "Describe a pet."}], max_tokens=50,
            extra_body={"structured_outputs": {"json": Pet.model_json_schema()}})
        Pet.model_validate_json(response.choices[0].message.content)
        print(time.process_time() - start)
        """
    ),
}


def run(out: Path, *, processes: int = 5, requests: int = 200, blocks: int = 6) -> dict[str, Any]:
    """Measure both paths against a stand-in server; write results.json, results.md and a plot."""
    server = subprocess.Popen([sys.executable, "-c", STUB_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        base_url = f"http://127.0.0.1:{server.stdout.readline().strip()}/v1"  # type: ignore[union-attr]
        first = {path: [] for path in FIRST_CALL}
        for i in range(processes):
            for path in list(FIRST_CALL)[:: 1 if i % 2 else -1]:  # alternate which goes first
                done = subprocess.run(
                    [sys.executable, "-c", FIRST_CALL[path], base_url],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                first[path].append(float(done.stdout.strip()))
        steady = _steady(base_url, requests, blocks)
    finally:
        server.terminate()
        server.wait()
    results = {
        "first_call_cpu_ms": {path: _spread([s * 1000 for s in values]) for path, values in first.items()},
        "per_request_cpu_ms": {path: _spread(values) for path, values in steady.items()},
        "processes": processes,
        "requests_per_block": requests,
        "blocks": blocks,
        "python": sys.version.split()[0],
    }
    print(markdown(results))
    save(out, results, markdown(results), lambda path: _plot(results, path), "client_cpu.png")
    return results


def _steady(base_url: str, requests: int, blocks: int) -> dict[str, list[float]]:
    """CPU milliseconds per request, one value per block, blocks alternating raw and ours."""
    import openai
    from pydantic import BaseModel

    from ..models.online import from_vllm

    class Pet(BaseModel):
        name: str
        legs: int

    client = openai.OpenAI(base_url=base_url, api_key="-")
    model = from_vllm(client)
    body = {"structured_outputs": {"json": Pet.model_json_schema()}}
    messages = [{"role": "user", "content": "Describe a pet."}]

    def raw() -> None:
        response = client.chat.completions.create(
            model="stub", messages=messages, max_tokens=50, extra_body=body
        )
        Pet.model_validate_json(response.choices[0].message.content)

    def ours() -> None:
        model.parse("Describe a pet.", Pet, max_tokens=50)

    paths = {"raw": raw, "ours": ours}
    for call in paths.values():  # warm both: connections, caches
        for _ in range(10):
            call()
    per_request: dict[str, list[float]] = {path: [] for path in paths}
    for i in range(blocks):
        for path in list(paths)[:: 1 if i % 2 else -1]:
            start = time.process_time()
            for _ in range(requests):
                paths[path]()
            per_request[path].append((time.process_time() - start) * 1000 / requests)
    return per_request


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| measure | raw openai SDK | outlines-vllm | difference (median) |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("first_call_cpu_ms", "import + first structured call"),
        ("per_request_cpu_ms", "per request, steady"),
    ):
        raw, ours = results[key]["raw"], results[key]["ours"]
        cells = [f"{s['median']:.1f} ms ({s['min']:.1f}-{s['max']:.1f})" for s in (raw, ours)]
        rows.append(f"| {label} | {cells[0]} | {cells[1]} | {ours['median'] - raw['median']:+.1f} ms |")
    return (
        "# Client CPU: outlines-vllm against the raw openai SDK\n\n"
        f"CPU time of the client process (median, min-max), against a stand-in server that answers at "
        f"once: {results['processes']} fresh processes per path for the first call, "
        f"{results['blocks']} alternating blocks of {results['requests_per_block']} requests per path "
        "for the steady state. Both paths send the same structured request and validate the answer "
        "with Pydantic.\n\n" + "\n".join(rows) + "\n"
    )


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (key, title) in zip(
        axes,
        (("first_call_cpu_ms", "import + first call"), ("per_request_cpu_ms", "per request")),
        strict=True,
    ):
        stats = results[key]
        names = ["raw", "ours"]
        medians = [stats[n]["median"] for n in names]
        errors = [[m - stats[n]["min"] for n, m in zip(names, medians, strict=True)],
                  [stats[n]["max"] - m for n, m in zip(names, medians, strict=True)]]  # fmt: skip
        ax.bar(
            ["raw openai SDK", "outlines-vllm"], medians, yerr=errors, capsize=4, color=["#999", "#4477aa"]
        )
        ax.set_title(f"client CPU, {title}")
        ax.set_ylabel("ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
