"""Text cells of the CSV files the product hands out (statements, ledger exports).

A spreadsheet application reads a cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return as a formula, so a name an organisation chose at signup (``=HYPERLINK(…)``)
would run when an operator opens a statement. Free text is written through ``cell_text``,
which prefixes such a value with an apostrophe (the OWASP "CSV injection" advice); amounts,
ids and times are written as they are (a negative amount must stay a number).
"""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell_text(value: str) -> str:
    """``value`` safe to open in a spreadsheet: unchanged unless it begins like a formula, then
    with a leading ``'``."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value
