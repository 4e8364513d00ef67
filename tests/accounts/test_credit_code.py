"""GB 32100-2015 unified social credit codes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounts.credit_code import (
    ALPHABET,
    CreditCodeError,
    make_credit_code,
    validate_credit_code,
)


@pytest.mark.parametrize("code", ["91350100M000100Y43", "91110000600037341L", "91440300708461136T"])
def test_real_codes_validate(code):
    assert validate_credit_code(code) == code


def test_lower_case_and_spaces_are_normalised():
    assert validate_credit_code(" 91350100m000100y43 ") == "91350100M000100Y43"


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("91350100M000100Y44", "check character"),
        ("91350100M000100Y4", "18 characters"),
        ("91350100M000100I43", "alphabet"),
        ("", "18 characters"),
    ],
)
def test_bad_codes_are_refused_with_the_reason(code, why):
    with pytest.raises(CreditCodeError, match=why):
        validate_credit_code(code)


first17 = st.text(alphabet=ALPHABET, min_size=17, max_size=17)


@given(first17)
def test_a_completed_code_always_validates(body):
    assert validate_credit_code(make_credit_code(body)) == make_credit_code(body)


@given(first17, st.integers(0, 16), st.sampled_from(ALPHABET))
def test_any_single_substitution_is_caught(body, position, char):
    code = make_credit_code(body)
    changed = code[:position] + char + code[position + 1 :]
    if changed != code:
        with pytest.raises(CreditCodeError):
            validate_credit_code(changed)
