"""Benchmark workloads: the requests each run sends, built from a fixed seed.

Every request carries two specs: ``spec`` is what is sent (its constraint; ``None`` for the
unconstrained baseline) and ``check`` is what the answer is judged against, always through
``outlines_vllm.types``. The unconstrained baseline sends the JSON workload's prompts with no
constraint and is judged by the same schema, so "constrained vs unconstrained" compares valid
objects, not just tokens.

Grammar caches: each run gets its own salt, added to the schema as an optional property the
model never needs. The first request of a run therefore compiles a new grammar (measured
apart), the rest of a fixed-schema run hits the warm cache, and ``json_unique`` salts every
request so each one compiles (cold cache).
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..datasets import jsonschemabench
from ..errors import InvalidSchemaError
from ..types import CFG, Choice, OutputSpec, Regex, output_spec

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 40},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 4},
    },
    "required": ["name", "age", "city", "skills"],
    "additionalProperties": False,
}
OCCUPATIONS = ["baker", "pilot", "nurse", "painter", "farmer", "chemist", "sailor", "teacher"]
CITIES = ["Lyon", "Osaka", "Lima", "Oslo", "Accra", "Perth", "Quebec", "Dublin", "Pune", "Turin"]
TOPICS = ["the first moon landing", "the fall of the Berlin Wall", "a famous treaty", "an eclipse"]
REVIEWS = [
    "The battery died after two days and support never answered.",
    "Works exactly as described, I would buy it again.",
    "It arrived on time. Nothing special about it.",
    "Absolutely love the colour and the fit!",
    "The lid cracked the first time I used it.",
    "Does the job, the price is fair.",
]
SENTIMENTS = ("positive", "negative", "neutral")
DATE_REGEX = r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
# A Lark grammar whose language is regular, so a regex judges it (types.CFG has no parser).
# At most four numbers: an unbounded expression runs on to max_tokens on the default model.
ARITHMETIC_GRAMMAR = r"""
start: expr
expr: NUMBER | NUMBER OP NUMBER | NUMBER OP NUMBER OP NUMBER | NUMBER OP NUMBER OP NUMBER OP NUMBER
NUMBER: /[1-9][0-9]{0,3}/
OP: " + " | " - " | " * "
"""
ARITHMETIC_REGEX = r"[1-9][0-9]{0,3}(( \+ | - | \* )[1-9][0-9]{0,3}){0,3}"


@dataclass(frozen=True)
class Request:
    """One request: chat messages, what is sent (``spec``) and what the answer must be (``check``)."""

    messages: list[dict[str, str]]
    spec: OutputSpec
    check: OutputSpec

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class Workload:
    """The requests of one run: ``first`` (timed alone), ``warmup`` (not counted), ``measured``."""

    name: str
    kind: str  # the constraint kind sent ("none" for the baseline)
    first: Request
    warmup: list[Request]
    measured: list[Request]
    notes: dict[str, Any] = field(default_factory=dict)


def _chat(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _salted(schema: dict[str, Any], salt: str) -> dict[str, Any]:
    """The schema plus an optional property named after ``salt``: a new grammar for the engine,
    and the same answers (the model seldom fills the extra property; when it does, the answer
    is still valid for the schema it was generated under)."""
    return {**schema, "properties": {**schema["properties"], f"x_{salt}": {"type": "boolean"}}}


def _person_prompts(n: int, rng: random.Random) -> list[str]:
    return [
        f"Create the profile of a fictional {rng.choice(OCCUPATIONS)} from {rng.choice(CITIES)} "
        "as a JSON object with a name, an age, a city and up to four skills."
        for _ in range(n)
    ]


def _json(n: int, rng: random.Random, salt: str, *, compact: bool, unique: bool) -> list[Request]:
    """Person profiles; each answer is judged by the (salted) schema it was generated under."""
    shared = output_spec(_salted(PERSON_SCHEMA, salt), compact=compact)
    requests = []
    for i, prompt in enumerate(_person_prompts(n, rng)):
        spec = output_spec(_salted(PERSON_SCHEMA, f"{salt}_{i}"), compact=compact) if unique else shared
        requests.append(Request(_chat(prompt), spec, spec))
    return requests


def _none(n: int, rng: random.Random, salt: str) -> list[Request]:
    check = output_spec(PERSON_SCHEMA)
    return [Request(_chat(p), output_spec(None), check) for p in _person_prompts(n, rng)]


def _regex(n: int, rng: random.Random, salt: str) -> list[Request]:
    spec = output_spec(Regex(DATE_REGEX))
    return [
        Request(_chat(f"On which date did {rng.choice(TOPICS)} happen? Answer as YYYY-MM-DD."), spec, spec)
        for _ in range(n)
    ]


def _choice(n: int, rng: random.Random, salt: str) -> list[Request]:
    spec = output_spec(Choice(SENTIMENTS))
    return [
        Request(_chat(f"Is this review positive, negative or neutral? {rng.choice(REVIEWS)}"), spec, spec)
        for _ in range(n)
    ]


def _grammar(n: int, rng: random.Random, salt: str) -> list[Request]:
    spec, check = output_spec(CFG(ARITHMETIC_GRAMMAR)), output_spec(Regex(ARITHMETIC_REGEX))
    return [
        Request(_chat(f"Write an arithmetic expression whose result is {rng.randint(10, 999)}."), spec, check)
        for _ in range(n)
    ]


def load_jsonschemabench(
    sets: list[str], n: int, rng: random.Random, *, max_chars: int = 1200
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``n`` real schemas sampled from JSONSchemaBench ``sets``, and counts of those skipped.

    A schema is skipped when our client-side checks reject it (invalid schema, no compact
    grammar, a validator that cannot run) or when its text is longer than ``max_chars`` (it
    would crowd the prompt of a small model).
    """
    rows = [row for name in sets for row in jsonschemabench(name)]
    rng.shuffle(rows)
    chosen: list[dict[str, Any]] = []
    skipped = {"rejected": 0, "too_long": 0}
    for row in rows:
        if len(chosen) == n:
            break
        schema = row["schema"]
        if len(json.dumps(schema)) > max_chars:
            skipped["too_long"] += 1
            continue
        try:
            spec = output_spec(schema)
            spec.constraint.structured_outputs()  # compiles the compact grammar
            _probe(spec)
        except (InvalidSchemaError, Exception):  # any client-side rejection skips the schema
            skipped["rejected"] += 1
            continue
        chosen.append({"id": row.get("id"), "schema": schema})
    return chosen, skipped


def _probe(spec: OutputSpec) -> None:
    """Run the validator once: schemas whose validator itself fails (remote $ref) are rejected."""
    from ..errors import OutputValidationError

    with contextlib.suppress(OutputValidationError):
        spec.parse("{}")


def _bench_requests(
    schemas: list[dict[str, Any]],
) -> Callable[[int, random.Random, str], list[Request]]:
    """Requests for sampled real schemas; object schemas are salted per request, so a raw run
    does not warm the grammar cache for the package run that follows it (or the reverse)."""

    def build(n: int, rng: random.Random, salt: str) -> list[Request]:
        requests = []
        for i in range(n):
            schema = schemas[rng.randrange(len(schemas))]["schema"]
            salted = isinstance(schema.get("properties"), dict)
            spec = output_spec(_salted(schema, f"{salt}_{i}") if salted else schema)
            prompt = (
                "Generate one realistic JSON instance of this JSON schema. Reply with the JSON only.\n"
                + json.dumps(schema)  # the prompt shows the schema without the salt
            )
            requests.append(Request(_chat(prompt), spec, spec))
        return requests

    return build


BUILDERS: dict[str, tuple[str, Callable[[int, random.Random, str], list[Request]]]] = {
    "json_fixed": ("json", lambda n, rng, salt: _json(n, rng, salt, compact=True, unique=False)),
    "json_free_whitespace": ("json", lambda n, rng, salt: _json(n, rng, salt, compact=False, unique=False)),
    "json_unique": ("json", lambda n, rng, salt: _json(n, rng, salt, compact=True, unique=True)),
    "regex": ("regex", _regex),
    "choice": ("choice", _choice),
    "grammar": ("grammar", _grammar),
    "none": ("none", _none),
}
WORKLOADS = [*BUILDERS, "jsonschemabench"]


def build(
    name: str,
    *,
    requests: int,
    warmup: int,
    seed: int,
    salt: str,
    jsonschemabench: dict[str, Any] | None = None,
) -> Workload:
    """The requests of workload ``name``; the same ``seed`` gives the same prompts."""
    rng = random.Random(f"{seed}:{name}")
    notes: dict[str, Any] = {}
    if name == "jsonschemabench":
        options = {"sets": ["Glaiveai2K", "Github_easy"], "schemas": 32, **(jsonschemabench or {})}
        schemas, skipped = load_jsonschemabench(options["sets"], options["schemas"], rng)
        if not schemas:
            raise InvalidSchemaError(f"no usable schema in JSONSchemaBench sets {options['sets']}")
        kind, builder = "json", _bench_requests(schemas)
        notes = {"sets": options["sets"], "schemas_used": len(schemas), "schemas_skipped": skipped}
    elif name in BUILDERS:
        kind, builder = BUILDERS[name]
    else:
        raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")
    items = builder(1 + warmup + requests, rng, salt)
    return Workload(name, kind, items[0], items[1 : 1 + warmup], items[1 + warmup :], notes)
