"""What the operator commands print: rich tables and lines from the gateway's fleet view.

Pure: a ``FleetView`` (or a load's progress event) and a clock in, a rich renderable out.
``cortex.ops`` fetches the view and prints these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cortex.protocol.fleet import FleetActionResult, FleetProgress, FleetView
from cortex.protocol.lifecycle import DeviceInfo, ModelRecord

STATE_STYLES = dict(
    ready="green", sleeping="blue", loading="yellow", unloading="magenta", failed="bold red"
)


def human_bytes(n: int | None) -> str:
    """``1288490189`` → ``"1.2 GiB"`` (binary units, one decimal)."""
    if n is None:
        return "—"
    if abs(n) < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1023.95:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def ago(ts: float | None, now: float) -> str:
    """``"3s ago"``, ``"5m ago"``, ``"2h ago"``, ``"4d ago"``; ``"never"`` for no time."""
    if ts is None:
        return "never"
    s = max(0, int(now - ts))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, "dim"))


def device_text(device: DeviceInfo) -> Text:
    """``cuda:0 3.4 GiB / 24.0 GiB``, then dim lines: the models' share and the budget."""
    label = "cpu" if device.kind == "cpu" else f"cuda:{device.index}"
    used = max(0, device.memory_total - device.memory_free)
    text = Text(f"{label} {human_bytes(used)} / {human_bytes(device.memory_total)}")
    extras = []
    if device.memory_used_by_models:
        extras.append(f"models {human_bytes(device.memory_used_by_models)}")
    if device.memory_budget is not None:
        extras.append(f"budget {human_bytes(device.memory_budget)}")
    if extras:
        text.append("".join(f"\n  {extra}" for extra in extras), style="dim")
    return text


def _table(
    title: str, *columns: str, right: tuple[str, ...] = (), whole: Iterable[str] = ()
) -> Table:
    """Columns in ``right`` are right-aligned; they and ``whole`` ones never wrap. When the
    terminal is narrow, the other columns fold: nothing is ever cut off."""
    table = Table(title=title, title_justify="left", title_style="bold")
    keep = {*right, *whole}
    for column in columns:
        justify: Literal["left", "right"] = "right" if column in right else "left"
        table.add_column(column, justify=justify, no_wrap=column in keep, overflow="fold")
    return table


def render_nodes(view: FleetView, now: float) -> RenderableType:
    if not view.nodes:
        return Text("No nodes: the gateway knows no neuron.", style="dim")
    columns = ["Node", "State", "Memory used / total", "Models", "Last seen"]
    show_error = any(node.error for node in view.nodes)
    whole = ("State", "Memory used / total", "Last seen")
    errors = ["Error"] if show_error else []
    table = _table("Nodes", *columns, *errors, right=("Models",), whole=whole)
    for node in view.nodes:
        cells = [
            Text.assemble(
                (node.name, "bold"), (f"\n{node.endpoint.removeprefix('http://')}", "dim")
            ),
            Text("up", style="green") if node.up else Text("down", style="bold red"),
            Text("\n").join(device_text(d) for d in node.devices) or Text("—"),
            Text(str(len(node.models))),
            Text(ago(node.last_seen, now)),
        ]
        if show_error:
            cells.append(Text(node.error or "", style="red"))
        table.add_row(*cells)
    return table


def render_loaded(view: FleetView, now: float) -> RenderableType:
    """One row per model per node, with the catalogue's pin and priority."""
    order = {node.name: i for i, node in enumerate(view.nodes)}
    rows = sorted(
        ((record, node.name) for node in view.nodes for record in node.models),
        key=lambda row: (row[0].id, order[row[1]]),
    )
    if not rows:
        return Text("No models loaded.", style="dim")
    catalogue = {entry.id: entry for entry in view.models}
    # Short headers: at 80 columns the names must fit whole; "Last used" folds instead.
    numeric = ("Running", "Waiting", "Memory", "KV", "Prio")
    columns = ("Model", "Node", "State", *numeric[:4], "Last used", "Pin", "Prio")
    table = _table("Models", *columns, right=numeric, whole=("Model", "Node", "State"))
    for record, node_name in rows:
        entry = catalogue.get(record.id)
        state = state_text(record.state)
        if record.error:
            state.append(f" ({record.error})", style="red")
        if record.engine:  # which engine runs it, under its state
            state.append(f"\n{record.engine}", style="dim")
        figures = (record.in_flight, record.queued, human_bytes(record.memory_bytes or None))
        pinned = ("yes" if entry.pinned else "", entry.priority) if entry else ("", "")
        last_used = ago(record.last_used_at, now)
        cells = [*map(Text, map(str, figures)), kv_text(record)]
        cells += map(Text, map(str, (last_used, *pinned)))
        table.add_row(model_text(record), Text(node_name), state, *cells)
    return table


def kv_text(record: ModelRecord) -> Text:
    """``12/512`` KV cache blocks in use, and under it the prefix cache's hit ratio
    (``hit 75%``); ``—`` for a model without a paged cache (yet)."""
    if record.kv_blocks_total <= 0:
        return Text("—")
    text = Text(f"{record.kv_blocks_used}/{record.kv_blocks_total}")
    text.append(f"\nhit {record.prefix_cache_hit_ratio:.0%}", style="dim")
    return text


def model_text(record: ModelRecord) -> Text:
    """The model's id, and under it the tool-call and reasoning formats the neuron found."""
    text = Text(record.id, style="bold")
    found = record.capabilities
    formats = [
        f"{what}: {name}"
        for what, name in (("tools", found.tool_format), ("reasoning", found.reasoning_format))
        if name != "none"
    ]
    if formats:
        text.append("\n" + " · ".join(formats), style="dim")
    return text


def render_status(view: FleetView, now: float) -> RenderableType:
    """What ``cortex status`` prints: nodes, loaded models, loads in progress, strategy."""
    parts: list[RenderableType] = [render_nodes(view, now), Text(), render_loaded(view, now)]
    if view.loads:
        loads = _table("Loads in progress", "Model", "Node", "Started", "Evicting")
        for load in view.loads:
            cells = (load.model, load.node, ago(load.started_at, now), ", ".join(load.evicting))
            loads.add_row(*map(Text, cells))
        parts += [Text(), loads]
    footer = f"eviction strategy: {view.strategy}"
    available = sum(1 for entry in view.models if entry.state == "available")
    if available:
        footer += f" · {available} more model(s) available to load (cortex models)"
    parts += [Text(), Text(footer, style="dim")]
    return Group(*parts)


def render_models(view: FleetView) -> RenderableType:
    """What ``cortex models`` prints: the gateway's catalogue."""
    if not view.models:
        return Text("The catalogue is empty: no neuron offers a model.", style="dim")
    columns = ("Model", "State", "Loaded on", "Placeable on", "Aliases", "Pin", "Prio")
    table = _table("Catalogue", *columns, right=("Prio",))
    for entry in view.models:
        lists = (
            Text(", ".join(ns) or "—") for ns in (entry.nodes, entry.placeable_on, entry.aliases)
        )
        pin = (Text("yes" if entry.pinned else ""), Text(str(entry.priority)))
        table.add_row(Text(entry.id, style="bold"), state_text(entry.state), *lists, *pin)
    return table


def progress_line(event: FleetProgress) -> Text:
    """One printed line per ``progress`` event of a load."""
    line = Text.assemble((f"{event.stage:<9}", "bold cyan"), " ", (event.node, "bold"), "  ")
    line.append(event.message)
    if event.needed_bytes is not None:
        line.append(f" (needs {human_bytes(event.needed_bytes)})", style="dim")
    return line


def result_line(result: FleetActionResult) -> Text:
    where = ", ".join(result.nodes) or "no node"
    if result.state == "unloaded":
        line = Text(f"{result.model} unloaded from {where}")
    else:
        line = Text.assemble(f"{result.model} is ", state_text(result.state), f" on {where}")
    return with_message(line, result.message)


def with_message(line: Text, message: str | None) -> Text:
    if message and message not in line.plain:  # the gateway's words, unless they repeat ours
        line.append(f" ({message})", style="dim")
    return line
