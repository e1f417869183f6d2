"""Schemathesis hooks for tests/app/test_schema.py: genuine state tokens where the schema allows a token.

A schema cannot tell a genuine state token from any other string of its alphabet (only the signing server
can), so for "schema-valid data is accepted" every schema-valid ``state``/``rnnlm_state`` string becomes one of
the tokens the server under test has made (``RNNLM_TEST_STATE_TOKENS``, comma-separated); strings the schema
refuses stay as drawn. That any other string is refused with a 400 is tests/app/test_state_tokens.py's."""

import os
import re

import schemathesis
from hypothesis import strategies as st

TOKENS = os.environ["RNNLM_TEST_STATE_TOKENS"].split(",")
ALPHABET = re.compile(r"[A-Za-z0-9_-]*")  # the schema's pattern for a token

schemathesis.openapi.format("rnnlm-state-token", st.sampled_from(TOKENS))


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        for field in ("state", "rnnlm_state"):
            value = body.get(field)
            if isinstance(value, str) and ALPHABET.fullmatch(value):
                body[field] = TOKENS[len(value) % len(TOKENS)]
    return body
