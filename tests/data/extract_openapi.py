"""Extract the schemas the sandbox tests validate against into openai-openapi-subset.json.

Source: openai/openai-openapi, branch main, commit f85dbe2 (openapi.yaml), and branch
manual_spec (for BatchRequestOutput, the batch file line schema). MIT licence.

    python tests/data/extract_openapi.py [SHARED_REFERENCE_DIR]

The subset is committed, so the tests need neither the 2.8 MB spec nor ../shared.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOTS = (
    "CreateChatCompletionResponse", "Batch", "OpenAIFile", "ListBatchesResponse",
    "ListFilesResponse", "DeleteFileResponse", "ErrorResponse", "ListModelsResponse", "Model",
    "Response", "CreateResponse", "CreateEmbeddingResponse",
)  # fmt: skip
MANUAL_ROOTS = ("BatchRequestOutput",)


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _strip(node: Any, names: bool = False) -> Any:
    """Drop documentation-only keys; they are large and validators ignore them.

    ``names`` marks a ``properties`` map, whose keys are field names (one may be "description").
    """
    if isinstance(node, dict):
        return {
            k: _strip(v, names=k == "properties" and not names)
            for k, v in node.items()
            if names
            or k not in ("description", "example", "examples", "x-oaiMeta", "x-oaiTypeLabel")
        }
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """``roots`` and every schema they ``$ref`` transitively."""
    out: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out[name] = _strip(schemas[name])
        todo.extend(_refs(out[name]) - set(out))
    return dict(sorted(out.items()))


def main() -> None:
    """Write openai-openapi-subset.json from the reference specs."""
    ref = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "reference"
    if not ref.exists():
        ref = Path("/work/shared/reference")
    spec = yaml.safe_load((ref / "openai-openapi.yaml").read_text(encoding="utf-8"))
    manual = yaml.safe_load((ref / "openai-openapi-manual-spec.yaml").read_text(encoding="utf-8"))
    subset = {
        "x-source": (
            "openai/openai-openapi commit f85dbe2 (openapi.yaml, MIT licence); "
            "BatchRequestOutput from branch manual_spec. Extracted by "
            "tests/data/extract_openapi.py; descriptions and examples dropped."
        ),
        "openapi": spec["openapi"],
        "components": {"schemas": closure(spec["components"]["schemas"], ROOTS)},
        "x-manual-spec": {
            "components": {"schemas": closure(manual["components"]["schemas"], MANUAL_ROOTS)}
        },
    }
    target = HERE / "openai-openapi-subset.json"
    target.write_text(json.dumps(subset, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {target} ({target.stat().st_size:,} bytes, "
          f"{len(subset['components']['schemas'])} schemas)")  # fmt: skip


if __name__ == "__main__":
    main()
