"""Schemathesis hooks for tests/app/test_schema.py: genuine state tokens where the schema allows a token.

A schema cannot tell a genuine state token from any other string of its alphabet (only the signing server
can), so for "schema-valid data is accepted" every schema-valid ``state``/``rnnlm_state`` string but "" (no
state) becomes one of the tokens the server under test has made (``RNNLM_TEST_STATE_TOKENS``, comma-separated);
strings the schema refuses stay as drawn. That any other string is refused with a 400 is
tests/app/test_state_tokens.py's."""

import os
import re

import schemathesis
from hypothesis import strategies as st

TOKENS = os.environ["RNNLM_TEST_STATE_TOKENS"].split(",")
ALPHABET = re.compile(r"[A-Za-z0-9_-]*")  # the schema's pattern for a token

schemathesis.openapi.format("rnnlm-state-token", st.sampled_from(TOKENS))


@schemathesis.hook
def map_case(ctx, case):  # (map_case, not map_body: it runs in the coverage phase too)
    body = case.body
    if isinstance(body, dict):
        for field in ("state", "rnnlm_state"):
            value = body.get(field)
            if isinstance(value, str) and value and ALPHABET.fullmatch(value):  # "" is no state: kept
                body[field] = TOKENS[len(value) % len(TOKENS)]
    return case
