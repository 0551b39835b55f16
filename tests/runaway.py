"""Prompts whose greedy continuation is a run of one digit: under a schema that does not bound
the number's digits, the default model writes digits until ``max_tokens``."""

NUMBER = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
RUNAWAY = [('{"n":' + digit * 40 + "}\n") * 3 for digit in "17"]
# What compact JSON makes of them: 16 digits, as many as a float64 holds.
BOUNDED = ['{"n":1111111111111111}', '{"n":7777777777777777}']
