"""One switch: the same prompt and output type give the same text online (the real vLLM server)
and offline (the embedded engine) under greedy decoding, on the default model.

Both sides render the chat with the same template (the model folder's), so the prompts are the
same tokens; only the process differs.
"""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from outlines_vllm import VLLM, AsyncVLLM, Regex, UnsupportedModelError, from_vllm, from_vllm_offline, load

from ..conftest import SERVED_NAME


class Pet(BaseModel):
    name: str
    species: str
    age: int


PROMPTS = ["Describe a pet.", "Tell me about an animal you like.", "Invent a pet for a child."]
KINDS = {
    "json": Pet,
    "regex": Regex(r"[A-Z][a-z]{2,9}"),
    "choice": Literal["cat", "dog", "fish"],
}


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_text_is_the_same_online_and_offline(kind, llm, openai_client):
    online = from_vllm(openai_client, SERVED_NAME)
    offline = from_vllm_offline(llm)
    output_type = KINDS[kind]
    for prompt in PROMPTS:
        expected = online(prompt, output_type, max_tokens=96, temperature=0)
        assert offline(prompt, output_type, max_tokens=96, temperature=0) == expected, prompt


def test_load_switches_on_the_target(vllm_server, model_path):
    model = load(vllm_server.base_url, model_name=SERVED_NAME)
    assert isinstance(model, VLLM)
    assert isinstance(load(vllm_server.base_url + "/v1/", async_=True), AsyncVLLM)
    assert model("Pick one.", Literal["cat", "dog"], max_tokens=4, temperature=0) in ("cat", "dog")
    # A local folder gives the offline model (started for real by the async_llm fixture and the
    # offline job tests); anything else is refused with what to pass instead.
    with pytest.raises(UnsupportedModelError, match="server URL"):
        load(model_path / "no-such-folder")
