"""The CSV logger: Lightning's, except that it continues an existing `metrics.csv` (a resumed run)
where Lightning's deletes it, and that a full disk leaves the file as it was."""

import csv
import os
from typing import Any

from pytorch_lightning.core.saving import save_hparams_to_yaml
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from vae_lit.persistence.atomic_write import atomic_path, atomic_write


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, minus the deletion of an existing `metrics.csv`: its rows stay, and
    new rows are appended under its header (widened when new metrics appear)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.header_on_disk: list[str] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.header_on_disk = next(csv.reader(file), [])
            self.metrics_keys = list(self.header_on_disk)

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes `metrics.csv` here; a resumed run continues it instead."""

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        with atomic_path(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)) as partial:
            save_hparams_to_yaml(partial, self.hparams)

    def save(self) -> None:
        """Append the pending rows. A file written to the end (a full disk) is cut back to its
        previous length, so it never holds half a row."""
        if not self.metrics:
            return
        path = self.metrics_file_path
        self.metrics_keys = sorted(set(self.metrics_keys).union(*self.metrics))
        exists = os.path.isfile(path)
        if exists and self.metrics_keys != self.header_on_disk:
            self._rewrite_with_new_header(self.metrics_keys)
        size = os.path.getsize(path) if exists else 0
        try:
            with open(path, "a" if exists else "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                if not exists:
                    writer.writeheader()
                writer.writerows(self.metrics)
        except OSError:
            if exists:
                os.truncate(path, size)
            else:
                os.unlink(path)
            raise
        self.header_on_disk = list(self.metrics_keys)
        self.metrics = []

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as file:
            rows = list(csv.DictReader(file))
        with atomic_write(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        self.header_on_disk = list(fieldnames)


class AppendingCSVLogger(CSVLogger):
    """`CSVLogger` that keeps an existing `metrics.csv`: a resumed run adds its rows to the rows
    of the run it continues (Lightning's deletes the file when it starts)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
