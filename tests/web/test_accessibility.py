"""Every form control on the SME pages has a label (WCAG 1.3.1 / 4.1.2), checked on the HTML."""

from html.parser import HTMLParser

import pytest

from marketplace.services import reservation_create
from tests.factories import DemandFactory

pytestmark = pytest.mark.django_db

SKIP_TYPES = {"hidden", "submit", "button", "reset", "image"}


class _Controls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.labels: set[str] = set()
        self.controls: list[dict[str, str | None]] = []
        self._label_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self._label_depth += 1
            if a.get("for"):
                self.labels.add(str(a["for"]))
        elif tag in ("input", "select", "textarea"):
            if tag == "input" and (a.get("type") or "text") in SKIP_TYPES:
                return
            self.controls.append({**a, "_tag": tag, "_wrapped": str(self._label_depth > 0)})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._label_depth:
            self._label_depth -= 1

    def unlabelled(self) -> list[dict[str, str | None]]:
        return [
            c
            for c in self.controls
            if c["_wrapped"] != "True"
            and c.get("id") not in self.labels
            and not c.get("aria-label")
            and not c.get("aria-labelledby")
        ]


@pytest.fixture
def booked(buyer, offer):  # type: ignore[no-untyped-def]
    demand = DemandFactory.create(buyer=buyer)
    return reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_every_control_on_the_sme_pages_has_a_label(client, buyer_user, booked, language):
    client.force_login(buyer_user)
    pages = [
        "/dashboard/",
        "/offers/",
        "/demands/new/",
        "/vouchers/",
        "/statement/",
        f"/reservations/{booked.pk}/",
        f"/reservations/{booked.pk}/cancel/",
        f"/demands/{booked.demand_id}/",
    ]
    for path in pages:
        response = client.get(path, headers={"accept-language": language})
        assert response.status_code == 200, path
        parser = _Controls()
        parser.feed(response.content.decode())
        assert parser.controls or path.startswith(("/demands/", "/reservations/")), path
        assert parser.unlabelled() == [], path


def test_signup_and_login_controls_have_labels(client):
    for path in ("/signup/", "/login/"):
        parser = _Controls()
        parser.feed(client.get(path).content.decode())
        assert parser.controls, path
        assert parser.unlabelled() == [], path
