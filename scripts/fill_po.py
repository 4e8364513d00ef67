"""Fill ``locale/zh_Hans/LC_MESSAGES/django.po`` from ``locale/zh_hans_strings.py``.

Exits non-zero listing every msgid without a translation, so no string is left in English.
Run by ``make messages`` after ``makemessages``; then ``compilemessages`` writes the ``.mo``.
"""

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PO = ROOT / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
sys.path.insert(0, str(ROOT / "locale"))
from zh_hans_strings import ZH  # noqa: E402

TABLE: dict[str, Any] = ZH

STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _join(lines: str) -> str:
    return "".join(json.loads(s) for s in STRING.findall(lines))


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def main() -> int:
    head, *blocks = PO.read_text(encoding="utf-8").split("\n\n")
    head = head.replace('"Language: \\n"', '"Language: zh_Hans\\n"').replace("#, fuzzy\n", "")
    head = re.sub(
        r'"Plural-Forms: .*?\\n"', lambda _m: '"Plural-Forms: nplurals=1; plural=0;\\n"', head
    )
    missing, out = [], [head]
    for block in blocks:
        if not block.strip():
            continue
        comments = [line for line in block.splitlines() if line.startswith("#")]
        comments = [c for c in comments if c != "#, fuzzy"]
        msgid_m = re.search(r"^msgid ((?:\".*\"\n?)+)", block, re.M)
        assert msgid_m is not None, block
        msgid = _join(msgid_m.group(1))
        plural_m = re.search(r"^msgid_plural ((?:\".*\"\n?)+)", block, re.M)
        value = TABLE.get(msgid)
        if value is None:
            missing.append(msgid)
            continue
        lines = [*comments, f"msgid {_quote(msgid)}"]
        if plural_m:
            lines.append(f"msgid_plural {_quote(_join(plural_m.group(1)))}")
            lines.append(f"msgstr[0] {_quote(value[0] if isinstance(value, list) else value)}")
        else:
            lines.append(f"msgstr {_quote(value if isinstance(value, str) else value[0])}")
        out.append("\n".join(lines))
    PO.write_text("\n\n".join(out) + "\n", encoding="utf-8")
    for msgid in missing:
        print(f"untranslated: {msgid!r}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
