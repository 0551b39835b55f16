"""vLLM server replicas on Ray Serve behind one OpenAI-compatible ingress (``server/README.md``).

``build_app`` (for ``serve run``/``serve deploy``/KubeRay) and ``run`` (``outlines-vllm serve``)
live in :mod:`outlines_vllm.server.app`; importing this package does not import Ray.
"""

from .config import AppConfig, ModelConfig

__all__ = ["AppConfig", "ModelConfig"]
