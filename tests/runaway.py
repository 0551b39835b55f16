"""Schemas and prompts that tell the forms of compact JSON apart.

RUNAWAY: prompts whose greedy continuation is a run of one digit: under a schema that does not
bound the number's digits, the default model writes digits until ``max_tokens``."""

NUMBER = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
RUNAWAY = [('{"n":' + digit * 40 + "}\n") * 3 for digit in "17"]
# What compact JSON makes of them: 16 digits, as many as a float64 holds.
BOUNDED = ['{"n":1111111111111111}', '{"n":7777777777777777}']


def nested(depth: int) -> dict:
    """A schema of ``depth`` objects one inside the other: beyond 32, its JSON nests deeper than
    the 64 levels vLLM 0.32 checks schemas for, while its regex form is a flat string."""
    schema: dict = {"type": "integer", "minimum": 0, "maximum": 9}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema
