"""Accounts API serializers: token login and organisations."""

from __future__ import annotations

from rest_framework import serializers

from accounts.models import ApiToken, Organisation
from marketplace.api.base import StrictSerializer
from marketplace.models import Site


class TokenInputSerializer(StrictSerializer):
    """Username and password of an existing user; ``name`` labels the token in lists."""

    username = serializers.CharField(max_length=150)
    password = serializers.CharField(
        max_length=256, trim_whitespace=False, style={"input_type": "password"}
    )
    name = serializers.CharField(max_length=100, allow_blank=True, default="")


class TokenInfoSerializer(serializers.ModelSerializer):
    """A token without its secret: ``prefix`` is its first 10 characters."""

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at"]


class TokenSerializer(TokenInfoSerializer):
    """A new API token. ``token`` is the secret, shown only in this response: send it as
    ``Authorization: Token <token>``."""

    token = serializers.CharField(read_only=True)

    class Meta(TokenInfoSerializer.Meta):
        fields = ["token", *TokenInfoSerializer.Meta.fields]


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
