"""Rich renderings of chain data for the CLI and the demo (the metagraph table)."""

from __future__ import annotations

from rich import box
from rich.table import Table

from chain.base import Metagraph


def short(address: str, keep: int = 6) -> str:
    """A shortened ss58 address for tables: first and last ``keep`` characters."""
    return address if len(address) <= 2 * keep + 1 else f"{address[:keep]}…{address[-keep:]}"


#: Terminal width from which the table adds trust, consensus and coldkey columns.
WIDE_TABLE_COLUMNS = 130


def metagraph_table(graph: Metagraph, *, network: str = "devnet", width: int = 80) -> Table:
    """The metagraph as ``btcli subnets metagraph`` shows it: one row per uid, fitted to ``width``."""
    wide = width >= WIDE_TABLE_COLUMNS
    table = Table(
        title=f"Subnet {graph.netuid} · {network} · block {graph.block} · {len(graph)} uids",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        padding=(0, 1),
    )
    columns = ["UID", "STAKE τ"] + (["TRUST", "CONSENSUS"] if wide else []) + [
        "INCENT", "DIVS", "EMIT τ", "VAL", "UPD", "AXON", "HOTKEY"
    ] + (["COLDKEY"] if wide else [])
    for column in columns:
        table.add_column(column, justify="left" if column in ("AXON", "HOTKEY", "COLDKEY") else "right", no_wrap=True)
    keep = 6 if wide else 4
    for neuron in graph.neurons:
        row = [str(neuron.uid), f"{neuron.stake:,.2f}"]
        if wide:
            row += [f"{neuron.trust:.4f}", f"{neuron.consensus:.4f}"]
        row += [
            f"{neuron.incentive:.4f}",
            f"{neuron.dividends:.4f}",
            f"{neuron.emission:.3f}",
            "*" if neuron.validator_permit else "",
            str(graph.block - neuron.last_update),
            f"{neuron.axon.ip}:{neuron.axon.port}" if neuron.axon is not None and neuron.is_serving else "-",
            short(neuron.hotkey, keep),
        ]
        if wide:
            row.append(short(neuron.coldkey, keep))
        table.add_row(*row)
    return table
