"""ComfyUI workflows: the UI format (what ComfyUI's page saves and loads: nodes with positions,
widget values, links) made from the API format (what its ``/prompt`` endpoint takes: node id ->
class and inputs), given the nodes' definitions from a running ComfyUI's ``/object_info``.

The example workflows under ``examples/comfyui/`` are written in the API format (``*.api.json``)
and their UI format (``*.json``) generated from it, so the two never disagree; tests/comfyui/
test_server.py checks the committed UI files against this conversion.

    python -m devtools.comfyui_workflow http://127.0.0.1:8188 examples/comfyui/demo_txt2img.api.json

writes ``examples/comfyui/demo_txt2img.json`` next to it. Widgets follow the inputs' order in the
node's definition, a seed-like input (``control_after_generate``) gets its "fixed" control widget
after it, as the page lays them out (so does any input named ``seed`` or ``noise_seed``); nodes go
in columns by their distance from the sources. A widget input the API file leaves out gets its
default, as the page would give it.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["api_to_ui"]

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}  # the page gives these a control widget even unflagged
COLUMN, ROW = 460, 260  # layout pitch in page pixels (long titles widen a node)
NODE_SIZE = [320, 200]


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _default(spec: list) -> Any:
    """The value the page gives a widget the workflow does not set: its default, else a combo's first
    choice (so a widget input added to a node later, optional ones included, keeps the file's values
    where they belong: the page fills widgets by position)."""
    options = spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    if isinstance(spec[0], list) and spec[0]:
        return spec[0][0]
    return {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False, "STRING": ""}.get(spec[0])


def _columns(api: dict[str, Any]) -> dict[str, int]:
    """Each node's column: 0 for a node with no linked input, else one past its furthest source."""
    column: dict[str, int] = {}

    def place(node: str, seen: tuple[str, ...] = ()) -> int:
        if node in seen:
            raise ValueError(f"workflow: a cycle through node {node}")
        if node not in column:
            sources = [v[0] for v in api[node]["inputs"].values() if isinstance(v, list)]
            column[node] = 1 + max((place(s, (*seen, node)) for s in sources), default=-1)
        return column[node]

    for node in api:
        place(node)
    return column


def api_to_ui(api: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The UI-format workflow of an API-format one (node ids and titles kept)."""
    column = _columns(api)
    rows: dict[int, int] = {}
    nodes, links = [], []
    outputs: dict[tuple[str, int], list[int]] = {}
    for order, node_id in enumerate(sorted(api, key=lambda n: (column[n], int(n)))):
        node = api[node_id]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for section in ("required", "optional"):
            for name in info.get("input_order", {}).get(section, []):
                spec = info["input"][section][name]
                if name not in node["inputs"] and not _is_widget(spec):
                    continue
                value = node["inputs"][name] if name in node["inputs"] else _default(spec)
                if _is_widget(spec):
                    if isinstance(value, list):
                        raise ValueError(f"node {node_id}: linked widget input {name!r} is not supported")
                    widgets.append(value)
                    if name in SEED_NAMES or (len(spec) > 1 and spec[1].get("control_after_generate")):
                        widgets.append("fixed")
                else:
                    link = len(links) + 1
                    source, slot = value
                    links.append([link, int(source), slot, int(node_id), len(inputs), spec[0]])
                    outputs.setdefault((source, slot), []).append(link)
                    inputs.append({"name": name, "type": spec[0], "link": link})
        row = rows.get(column[node_id], 0)
        rows[column[node_id]] = row + 1
        nodes.append(
            {
                "id": int(node_id),
                "type": node["class_type"],
                "pos": [50 + COLUMN * column[node_id], 50 + ROW * row],
                "size": NODE_SIZE,
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": inputs,
                "outputs": [],
                "title": node.get("_meta", {}).get("title", info["display_name"]),
                "properties": {"Node name for S&R": node["class_type"]},
                "widgets_values": widgets,
            }
        )
    for entry in nodes:
        info = object_info[entry["type"]]
        entry["outputs"] = [
            {"name": name, "type": kind, "links": outputs.get((str(entry["id"]), slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))
        ]
    return {
        "last_node_id": max(int(n) for n in api),
        "last_link_id": len(links),
        "nodes": sorted(nodes, key=lambda n: n["id"]),
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def main(argv: list[str]) -> None:
    url, *paths = argv
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=60) as response:
        object_info = json.loads(response.read())
    for path in map(Path, paths):
        if not path.name.endswith(".api.json"):
            raise ValueError(f"{path}: expected an API-format workflow named *.api.json")
        ui = api_to_ui(json.loads(path.read_text()), object_info)
        target = path.with_name(path.name.removesuffix(".api.json") + ".json")
        target.write_text(json.dumps(ui, indent=2) + "\n")
        print(target)


if __name__ == "__main__":
    main(sys.argv[1:])
