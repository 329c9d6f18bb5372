"""The GCP auth profile shared by Google Cloud drivers: a project and service-account fields.

Dapr's GCP components take the fields of a service-account key file one by one
(``privateKey``, ``clientEmail`` …). When ``privateKey`` and ``clientEmail`` are given they
make the credentials; otherwise the SDK's default credentials apply (GOOGLE_APPLICATION_
CREDENTIALS, the metadata server). An emulator needs none (``emulator_credentials``).
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from mechakit.core.errors import MetadataError
from mechakit.core.metadata import Settings, setting


class GcpSettings(Settings):
    project_id: str = setting(
        ..., name="projectID", aliases=("projectId",), description="GCP project id.",
        example="my-project",
    )  # fmt: skip
    type: str = setting("service_account", description="Credential type of the key fields.")
    identity_project_id: str = setting(
        "", name="identityProjectID", description="Project of the service account, if another."
    )
    private_key_id: str = setting("", name="privateKeyID", description="Service-account key id.")
    private_key: SecretStr | None = setting(
        None, description="Service-account private key (PEM), with clientEmail."
    )
    client_email: str = setting("", description="Service-account e-mail, with privateKey.")
    client_id: str = setting("", name="clientID", description="Service-account client id.")
    auth_uri: str = setting(
        "https://accounts.google.com/o/oauth2/auth", name="authURI", description="OAuth auth URI."
    )
    token_uri: str = setting(
        "https://oauth2.googleapis.com/token", name="tokenURI", description="OAuth token URI."
    )
    auth_provider_x509_cert_url: str = setting(
        "https://www.googleapis.com/oauth2/v1/certs",
        name="authProviderX509CertUrl",
        description="OAuth provider certificate URL.",
    )
    client_x509_cert_url: str = setting(
        "", name="clientX509CertUrl", description="Service-account certificate URL."
    )

    def service_account_credentials(self, component: str) -> Any:
        """Credentials from the key fields, or None for the SDK's defaults; a half-given
        pair (privateKey without clientEmail) is a MetadataError."""
        if self.private_key is None and not self.client_email:
            return None
        if self.private_key is None or not self.client_email:
            field = "privateKey" if self.private_key is None else "clientEmail"
            raise MetadataError(
                "metadata 'privateKey' and 'clientEmail' go together (a service-account key)",
                component=component,
                field=field,
            )
        from google.oauth2 import service_account

        info = {
            "type": self.type or "service_account",
            "project_id": self.identity_project_id or self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key.get_secret_value().replace("\\n", "\n"),
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": self.auth_uri,
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": self.auth_provider_x509_cert_url,
            "client_x509_cert_url": self.client_x509_cert_url,
        }
        try:
            return service_account.Credentials.from_service_account_info(info)  # type: ignore[no-untyped-call]
        except (ValueError, KeyError) as exc:
            raise MetadataError(
                f"the service-account key is not usable: {exc}",
                component=component,
                field="privateKey",
            ) from None


__all__ = ["GcpSettings"]
