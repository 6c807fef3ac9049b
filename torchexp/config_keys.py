"""The key paths of a configuration (`training.lr`): the check that a schema declares one,
and, when it does not, the declared path nearest to it, for the sentence that refuses it.

`--set` overrides and a search space's keys are both checked here.
"""

import difflib

from torchexp.errors import ConfigError


def check_key_declared(schema: dict, keys: list[str]) -> None:
    """Raise ConfigError unless the schema declares the key path.

    The sentence names the first key the schema lacks, and the declared path nearest to the
    whole path when there is one: `trainig.lr` -> did you mean 'training.lr'?
    """
    node = schema
    for depth, key in enumerate(keys):
        properties = node.get("properties", {}) if isinstance(node, dict) else {}
        if key not in properties:
            nearest = find_nearest_key(schema, keys)
            hint = f" (did you mean {nearest!r}?)" if nearest else ""
            raise ConfigError(f"unknown config key {'.'.join(keys[: depth + 1])}: the schema does not declare it{hint}")
        node = properties[key]


def find_nearest_key(schema: dict, keys: list[str]) -> str | None:
    """Return the declared key path nearest to `keys`, key by key: each key as it is where
    the schema declares it, else the declared key beside it nearest in spelling (difflib's);
    None when a key has none near it.

    Matched key by key rather than as whole paths: every key of a section shares the
    section's name, which would make any of them look near.
    """
    node, found = schema, []
    for key in keys:
        properties = node.get("properties", {}) if isinstance(node, dict) else {}
        near = [key] if key in properties else difflib.get_close_matches(key, list(properties), n=1)
        if not near:
            return None
        found.append(near[0])
        node = properties[near[0]]
    return ".".join(found)
