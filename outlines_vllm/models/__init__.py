"""Models: online (a vLLM server through the openai SDK) and offline (an embedded vLLM engine)."""
