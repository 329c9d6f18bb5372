"""nameresolution.kubernetes and nameresolution.nameformat: an app id's address computed
from the request, Dapr's defaults and template syntaxes, and settings errors that name the
component and the field."""

from __future__ import annotations

import pytest

from mechakit.components.nameresolution.kubernetes import KubernetesNameResolver
from mechakit.components.nameresolution.nameformat import NameFormatResolver
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import InvalidRequestError, MetadataError
from mechakit.core.nameresolution import NameRegistry, ResolveRequest
from mechakit.core.registry import Registry

ORDERS = ResolveRequest("orders", "prod", 50002)


async def kubernetes(**properties: str) -> KubernetesNameResolver:
    resolver = KubernetesNameResolver()
    await resolver.init(ComponentMetadata("nr", "nameresolution.kubernetes", properties))
    return resolver


async def nameformat(**properties: str) -> NameFormatResolver:
    resolver = NameFormatResolver()
    await resolver.init(ComponentMetadata("nr", "nameresolution.nameformat", properties))
    return resolver


async def test_kubernetes_names_the_sidecar_service_of_the_app_id() -> None:
    assert await (await kubernetes()).resolve(ORDERS) == (
        "orders-dapr.prod.svc.cluster.local:50002"
    )
    custom = await kubernetes(clusterDomain="corp.example")
    assert await custom.resolve(ORDERS) == "orders-dapr.prod.svc.corp.example:50002"


async def test_a_kubernetes_template_fills_id_namespace_and_port() -> None:
    resolver = await kubernetes(template="{{.ID}}-{{ .Namespace }}.internal:{{.Port}}")
    assert await resolver.resolve(ORDERS) == "orders-prod.internal:50002"


async def test_nameformat_fills_the_app_id_and_a_fixed_format_is_one_address() -> None:
    resolver = await nameformat(format="service-{appid}.{namespace}.svc:{port}")
    assert await resolver.resolve(ORDERS) == "service-orders.prod.svc:50002"
    static = await nameformat(format="127.0.0.1:50123")
    assert await static.resolve(ResolveRequest("anyone")) == "127.0.0.1:50123"


async def test_an_address_that_needs_the_port_is_refused_without_one() -> None:
    resolver = await kubernetes()
    with pytest.raises(InvalidRequestError, match="nameresolution.kubernetes 'nr'.*port"):
        await resolver.resolve(ResolveRequest("orders"))


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({}, "metadata 'format' is required"),
        ({"format": " "}, "metadata 'format' is invalid: must not be empty"),
        ({"format": "{app}.svc"}, r"metadata 'format' is invalid: unknown placeholder '\{app\}'"),
        ({"format": "{appid.svc"}, "metadata 'format' is invalid: has an unmatched brace"),
    ],
)
async def test_nameformat_settings_errors_name_the_component_and_field(
    properties: dict[str, str], message: str
) -> None:
    with pytest.raises(MetadataError, match=f"nameresolution.nameformat 'nr': {message}"):
        await nameformat(**properties)


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({"template": "{{.Data.region}}.internal"}, "metadata 'template' is invalid: unknown"),
        ({"template": "{{.ID}.internal"}, "metadata 'template' is invalid: has an unmatched"),
        ({"clusterDomain": "a..b"}, "metadata 'clusterDomain' is invalid: must be a DNS domain"),
    ],
)
async def test_kubernetes_settings_errors_name_the_component_and_field(
    properties: dict[str, str], message: str
) -> None:
    with pytest.raises(MetadataError, match=f"nameresolution.kubernetes 'nr': {message}"):
        await kubernetes(**properties)


@pytest.mark.parametrize(
    ("type_name", "driver"),
    [
        ("nameresolution.kubernetes", KubernetesNameResolver),
        ("nameresolution.nameformat", NameFormatResolver),
    ],
)
def test_the_registry_knows_the_types_and_nothing_registers_with_them(
    type_name: str, driver: type
) -> None:
    assert Registry().resolve(type_name, "v1").load() is driver
    assert not issubclass(driver, NameRegistry)
