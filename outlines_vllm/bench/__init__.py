"""Structured-generation throughput benchmarks, online (a vLLM server) and offline (an embedded
engine), raw and through this package, with every answer judged by ``outlines_vllm.types``.

``workloads`` builds the requests, ``load`` sends them (concurrency, Poisson rate, warm-up),
``paths`` is the four ways a request travels, ``validate`` judges answers, ``stats`` summarises
runs and ratios, ``report`` writes JSON, Markdown and plots, ``runner`` ties a scenario together.
Nothing heavy is imported here.
"""
