"""Round tokens: bound to run, round, client and helper; forgeries refused."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret, sign_token

SECRET = new_run_secret()
RUN, ROUND, HELPER = 41, 3, 7
KEY = helper_key(SECRET, RUN, HELPER)
CLIENTS = ["11", "12"]
FORGED_EXAMPLES = 2000  # random and mutated tokens tried by the property test below


def _verifier(**kwargs):
    args = {"run_id": RUN, "server_round": ROUND, "helper": HELPER, "clients": CLIENTS}
    return TokenVerifier(KEY, **{**args, **kwargs})


def test_the_servers_token_admits_its_client_only():
    verifier = _verifier()
    token = sign_token(KEY, RUN, ROUND, 11, HELPER)
    assert token == verifier.token_for("11")
    assert verifier.check("11", token) is None
    assert "not its own" in verifier.check("12", token)


REFUSED = [
    ("99", sign_token(KEY, RUN, ROUND, 99, HELPER), "not served by this helper"),
    ("11", "", "no round token"),
    ("11", "secret", "malformed"),
    ("11", sign_token(KEY, RUN, ROUND - 1, 11, HELPER), "for round 2, not 3"),
    ("11", sign_token(KEY, RUN + 1, ROUND, 11, HELPER), "another run"),
    (
        "11",
        sign_token(helper_key(SECRET, RUN, 8), RUN, ROUND, 11, 8),
        "for another helper (8)",
    ),
    (
        "11",
        sign_token(helper_key(new_run_secret(), RUN, HELPER), RUN, ROUND, 11, HELPER),
        "not its own",
    ),
    ("11", sign_token(SECRET, RUN, ROUND, 11, HELPER), "not its own"),  # the run secret itself
]


# The tokens are signed with a random secret: test ids without them are the same in every
# process (pytest-xdist's workers must collect the same tests).
@pytest.mark.parametrize(
    ("client", "token", "reason"), REFUSED,
    ids=[f"{i}-{client}-{reason}" for i, (client, _, reason) in enumerate(REFUSED)],
)  # fmt: skip
def test_tokens_for_anything_else_are_refused(client, token, reason):
    assert reason in _verifier().check(client, token)


def test_helper_keys_differ_per_helper_and_run():
    keys = {helper_key(SECRET, r, h) for r in (1, 2) for h in (7, 8)}
    assert len(keys) == 4 and len(KEY) == 32


def test_reasons_and_repr_hold_no_secret_material():
    verifier = _verifier()
    token = verifier.token_for("11")
    mac = token.rsplit(".", 1)[1]
    texts = [repr(verifier), verifier.check("12", token), verifier.check("11", token[:-2] + "AA")]
    for text in texts:
        assert mac not in text and KEY.hex() not in text
        assert base64.urlsafe_b64encode(KEY).decode().rstrip("=") not in text


def _mutations(token: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda i, c: token[: i % len(token)] + c + token[i % len(token) + 1 :],
            st.integers(0, 200),
            st.characters(codec="ascii"),
        ),
        st.builds(lambda n: token[: n % len(token)], st.integers(0, 200)),
        st.builds(lambda s: token + s, st.text(min_size=1, max_size=8)),
        st.builds(
            lambda r, h, c: sign_token(KEY, RUN, r, c, h),
            st.integers(0, 6),
            st.sampled_from([HELPER, 8, "7 ", "07"]),
            st.sampled_from(["12", "11 ", "011", ""]),
        ),
    )


@settings(max_examples=FORGED_EXAMPLES, deadline=None, database=None)
@given(st.data())
def test_forged_and_mutated_tokens_are_refused(data):
    verifier = _verifier()
    good = verifier.token_for("11")
    token = data.draw(_mutations(good))
    if token == good:
        return
    assert verifier.check("11", token) is not None
