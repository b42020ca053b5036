"""Selecting images through the registry's catalog and tags APIs (Link pagination, `"tags": null`).

The scan lists the catalog with `repositories`, then each repository's tags with `tags`, concurrently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, List, Mapping, Optional, Sequence

from .errors import ManifestInvalid, NotFound
from .model import EmptySelection, Selection
from .options import DiscoveryOptions
from .reference import TAG_RE, ImageRef, validate_repository

if TYPE_CHECKING:  # the client pulls in requests and tenacity: not at start-up
    from .client import RegistryClient

MAX_PAGES = 1000  # a million names: beyond that a registry is looping us


def repositories(wanted: DiscoveryOptions, client: RegistryClient) -> List[str]:
    """The catalog's repositories under `wanted`'s prefixes, in its order."""
    return [validate_repository(name) for name in _pages(client, "/v2/_catalog", "repositories")
            if wanted.wants(name)]


def tags(wanted: DiscoveryOptions, client: RegistryClient, repository: str) -> List[ImageRef]:
    """The tags of one repository that `wanted` selects, as images."""
    try:
        names = list(_pages(client, f"/v2/{repository}/tags/list", "tags"))
    except NotFound:  # distribution 2.8: NAME_UNKNOWN for a repository holding only untagged manifests
        names = []
    found = []
    for tag in names:
        if not TAG_RE.fullmatch(tag):
            raise ManifestInvalid(f"tags of {repository}: invalid tag {tag[:80]!r}")
        if wanted.tag_pattern is None or wanted.tag_pattern.fullmatch(tag):
            found.append(ImageRef(None, repository, tag))
    return found


def empty_selections(wanted: DiscoveryOptions, registry: str, listed: Mapping[str, Sequence[ImageRef]]
                     ) -> List[EmptySelection]:
    """Each prefix under which `registry`'s catalog listed no repository, or whose repositories have no tag that
    `wanted` selects (`listed`: each repository under the prefixes and the images it gave). One prefix that
    matches nothing is a typo however many others match."""
    empty = []
    for prefix in wanted.prefixes:
        under = tuple(repository for repository in listed if DiscoveryOptions((prefix,)).wants(repository))
        if not under:
            empty.append(EmptySelection(Selection.REPOSITORY, prefix, registry))
        elif not any(listed[repository] for repository in under):
            pattern = wanted.tag_pattern
            empty.append(EmptySelection(Selection.TAG_PATTERN if pattern else Selection.ALL_TAGS,
                                        pattern.pattern if pattern else "", prefix, under))
    return empty


def _pages(client: RegistryClient, path: str, key: str) -> Iterator[str]:
    """Every name of a listing, page by page along its Link headers.

    No `n` is sent: distribution answers 400 PAGINATION_NUMBER_INVALID to an `n` above its catalog.maxentries,
    and without one it pages by its own size and links the rest."""
    next_path: Optional[str] = path
    for _ in range(MAX_PAGES):
        if next_path is None:
            return
        page, next_path = client.get_page(next_path)
        names = page.get(key)
        if names is None:  # distribution answers {"tags": null} for a repository whose tags were all deleted
            names = []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ManifestInvalid(f"{path.split('?')[0]}: expected {key!r} to be a list of names")
        yield from names
    raise ManifestInvalid(f"{path.split('?')[0]}: more than {MAX_PAGES} pages")

