"""Unified social credit code (统一社会信用代码) validation, GB 32100-2015.

An 18-character code: registration authority (1), organisation kind (1), administrative division
(6), organisation code (9, the last of which is its own GB 11714 check), and a check character
computed over the first 17 characters with the weights of GB 32100-2015 §4.3 modulo 31.
"""

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 characters: no I, O, S, V, Z
WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


class CreditCodeError(ValueError):
    """The code is not a valid unified social credit code; ``str(error)`` says why."""


def check_character(first17: str) -> str:
    """Return the GB 32100-2015 check character for the first 17 characters of a code."""
    total = sum(ALPHABET.index(ch) * w for ch, w in zip(first17, WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def validate_credit_code(code: str) -> str:
    """Normalise (strip, upper-case) and validate a code; return it.

    Raises ``CreditCodeError`` for a wrong length, a character outside the GB 32100 alphabet,
    or a wrong check character.
    """
    code = (code or "").strip().upper()
    if len(code) != 18:
        raise CreditCodeError("must be 18 characters")
    bad = [ch for ch in code if ch not in ALPHABET]
    if bad:
        raise CreditCodeError(f"contains characters outside the GB 32100-2015 alphabet: {bad[0]!r}")
    if check_character(code[:17]) != code[17]:
        raise CreditCodeError("check character does not match (GB 32100-2015)")
    return code


def make_credit_code(first17: str) -> str:
    """Complete 17 characters with their check character (for reference data and tests)."""
    return first17 + check_character(first17)
