"""Which addresses an outbound request may reach: one policy for image_url fetches and webhook deliveries.

Every address a host resolves to falls in at most one category of `CATEGORIES` (the first whose predicate holds);
an address in no category is public. An IPv6 address that carries an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`) is judged by that IPv4 address:
it is where the packets end up. Public addresses are always allowed; loopback, private and shared (CGNAT) space only
where a setting says so (`allow_private`); metadata, link-local, unspecified, multicast and reserved space never:
no setting opens them, because a cloud's credentials live there.
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import Callable, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class Category(str, Enum):
    METADATA = "metadata"
    LINK_LOCAL = "link-local"
    UNSPECIFIED = "unspecified"
    MULTICAST = "multicast"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    SHARED = "shared"
    RESERVED = "reserved"


# Cloud instance metadata and control endpoints (AWS IMDS, ECS and EKS Pod Identity, IPv6 IMDS, Alibaba, Azure
# WireServer, Oracle); most are link-local, some are not (the IPv6 ones are unique-local, Azure's is public).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23", "100.100.100.200",
    "168.63.129.16", "192.0.0.192"))

_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")   # RFC 6598 carrier-grade NAT (also Alibaba's metadata, above)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")     # RFC 6052 well-known prefix: the last 32 bits are the IPv4


def _in(*networks: ipaddress._BaseNetwork) -> Callable[[IPAddress], bool]:
    return lambda addr: any(addr in net for net in networks if net.version == addr.version)


# category -> predicate, in order: the first that holds names the address
CATEGORIES: tuple[tuple[Category, Callable[[IPAddress], bool]], ...] = (
    (Category.METADATA, lambda addr: addr in METADATA_ADDRESSES),
    (Category.LINK_LOCAL, lambda addr: addr.is_link_local),                      # 169.254/16, fe80::/10
    (Category.UNSPECIFIED, lambda addr: addr.is_unspecified),                    # 0.0.0.0, ::
    (Category.MULTICAST, lambda addr: addr.is_multicast),                        # 224/4, ff00::/8
    (Category.LOOPBACK, lambda addr: addr.is_loopback),                          # 127/8, ::1
    (Category.PRIVATE, _in(*_PRIVATE)),                                          # RFC 1918, unique-local
    (Category.SHARED, _in(_SHARED)),
    (Category.RESERVED, lambda addr: addr.is_reserved or not addr.is_global),    # documentation, 240/4, 0/8, ...
)

# what `allow_private` opens; everything else that is not public stays closed whatever the settings say
PRIVATE_CATEGORIES = frozenset({Category.LOOPBACK, Category.PRIVATE, Category.SHARED})
NEVER = frozenset(Category) - PRIVATE_CATEGORIES


def embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that carry one."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64 or (int(addr) >> 32 == 0 and int(addr) > 1):    # NAT64, or IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def categorize(address: str | IPAddress) -> Category | None:
    """The address's category, or None when it is public."""
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        addr = ipaddress.IPv6Address(int(addr))   # fd00:ec2::254%eth0 is still the metadata address
    inner = embedded_ipv4(addr)
    if inner is not None:
        return categorize(inner)
    return next((category for category, holds in CATEGORIES if holds(addr)), None)


def allowed_categories(allow_private: bool) -> frozenset[Category]:
    """The non-public categories a policy lets through."""
    return PRIVATE_CATEGORIES if allow_private else frozenset()


def refusal(address: str, allow_private: bool) -> Category | None:
    """The category that forbids `address` under the setting, or None when it may be reached."""
    category = categorize(address)
    return None if category is None or category in allowed_categories(allow_private) else category


__all__ = ["CATEGORIES", "Category", "METADATA_ADDRESSES", "NEVER", "PRIVATE_CATEGORIES", "allowed_categories",
           "categorize", "embedded_ipv4", "refusal"]
