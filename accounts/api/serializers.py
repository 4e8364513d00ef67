"""Accounts API serializers: token login and organisations."""

from __future__ import annotations

from rest_framework import serializers

from accounts.models import Organisation
from marketplace.api.base import StrictSerializer
from marketplace.models import Site


class TokenInputSerializer(StrictSerializer):
    """Username and password of an existing user."""

    username = serializers.CharField(max_length=150)
    password = serializers.CharField(
        max_length=256, trim_whitespace=False, style={"input_type": "password"}
    )


class TokenSerializer(serializers.Serializer):
    """The API token: send it as ``Authorization: Token <token>``."""

    token = serializers.CharField()


class OrganisationRegisterInputSerializer(StrictSerializer):
    """A new organisation: ``credit_code`` is its 18-character unified social credit code
    (GB 32100-2015, check character validated); ``home_site`` the UUID of a reference site
    (the origin of its demands' locality tiers)."""

    name = serializers.CharField(max_length=200)
    credit_code = serializers.CharField(max_length=18, min_length=18)
    kind = serializers.ChoiceField(choices=Organisation.Kind.choices)
    home_site = serializers.PrimaryKeyRelatedField(
        queryset=Site.objects.filter(provider__isnull=True), required=False, allow_null=True
    )


class OrganisationSerializer(serializers.ModelSerializer):
    """An organisation; ``status`` is ``pending`` until an operator approves it."""

    home_site: serializers.SlugRelatedField[Site] = serializers.SlugRelatedField(
        slug_field="code", read_only=True, allow_null=True
    )

    class Meta:
        model = Organisation
        fields = ["id", "name", "credit_code", "kind", "status", "home_site", "created_at"]
