"""The model summary printed when fitting starts: layers and parameters, nothing that reads 0.

Lightning's `RichModelSummary` always prints a FLOPs column and a "Total FLOPs" line, which stay 0
unless the module defines `example_input_array`, and a train/eval mode column that says "train" on
every row. This one prints the columns that carry information.
"""

import warnings
from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.utilities.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)

ALWAYS_HIDDEN = ("Mode",)


class CompactModelSummary(RichModelSummary):
    """Name, type and parameters per layer (FLOPs and sizes only where Lightning measured them)."""

    def _summary(self, trainer: Trainer, pl_module: LightningModule):
        # Lightning knows no byte size for mixed precision and warns that it falls back to 32 bits;
        # under mixed precision the parameters are float32, so the fallback is the right size.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"Precision \S+-mixed is not supported by the model summary"
            )
            return super()._summary(trainer, pl_module)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        hidden = set(ALWAYS_HIDDEN) | ({"FLOPs"} if not total_flops else set())
        columns = [(name, values) for name, values in summary_data if name not in hidden]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            justify = "left" if name in ("Name", "Type") else "right"
            table.add_column(name, justify=justify, style="dim" if name == " " else None)
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)

        grid = Table.grid()
        grid.add_row(f"[bold]Parameters[/]: {get_human_readable_count(int(total_parameters))}")
        frozen = total_parameters - trainable_parameters
        if frozen:
            grid.add_row(f"[bold]Frozen[/]: {get_human_readable_count(int(frozen))}")
        grid.add_row(f"[bold]Parameter size (MB)[/]: {get_formatted_model_size(model_size)}")
        if total_flops:
            grid.add_row(
                f"[bold]FLOPs, one forward pass[/]: {get_human_readable_count(total_flops)}"
            )
        console = get_console()
        console.print(table)
        console.print(grid)
