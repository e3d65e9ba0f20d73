"""The driver's live view of a training run: one progress bar (or, off a terminal, a line every
tenth of the run), eval lines and the resume line, read from the metrics rank 0 logs to MLflow.

The workers' own output stays in Ray's logs (pipelines/console.py routes it); the driver learns
what it shows from the same store the MLflow UI reads, so the view is the same for local mode,
N workers on one machine and a cluster with an MLflow server.

    [vae_digits] ████████████░░░░░░░░ 1200/2000 | 2,410 ex/s | loss 0.2134 | lr 8.1e-04 | eta 0m41s
    [vae_digits] eval step 1000: loss 0.2170 | kid_digits 0.0412 | fd_digits_n256 5.12
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

BAR = 20


class TrainingProgress:
    def __init__(self, uri: str, run_id: str, name: str, total: int, *, stream: TextIO | None = None,
                 period_s: float = 2.0):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id, self.name, self.total, self.period_s = run_id, name, total, period_s
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.seen_eval: set[int] = set()
        self.seen_resume: set[int] = set()
        self.last_tenth = -1
        self.bar_shown = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="genray-progress", daemon=True)

    def __enter__(self) -> "TrainingProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()  # the last window and the final eval
        if self.bar_shown:
            self.stream.write("\n")
            self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.poll()
            except Exception:  # a store hiccup must never stop training; the next poll retries
                pass

    # -- what is shown --------------------------------------------------------------------------

    def poll(self) -> None:
        for m in self.client.get_metric_history(self.run_id, "resumed_from_step"):
            if m.value > 0 and m.step not in self.seen_resume:
                self.seen_resume.add(m.step)
                self._line(f"[{self.name}] resumed from step {int(m.value)}")
        latest = self.client.get_run(self.run_id).data.metrics
        rates = self.client.get_metric_history(self.run_id, "train/examples_per_s")
        if rates:
            step = max(m.step for m in rates)
            self._bar(step, latest)
        evals = sorted(self.client.get_metric_history(self.run_id, "eval/loss"), key=lambda m: m.step)
        for m in evals:
            if m.step not in self.seen_eval:
                self.seen_eval.add(m.step)
                if m is evals[-1]:  # earlier ones' other metrics are gone from `latest`
                    shown = " | ".join(f"{k[5:]} {v:.4g}" for k, v in sorted(latest.items()) if k.startswith("eval/"))
                else:
                    shown = f"loss {m.value:.4g}"
                self._line(f"[{self.name}] eval step {m.step}: {shown}")

    def _bar(self, step: int, latest: dict[str, float]) -> None:
        rate = latest.get("train/examples_per_s", 0.0)
        losses = " | ".join(f"{k[6:]} {v:.4f}" for k, v in sorted(latest.items())
                            if k.startswith("train/") and k.endswith("loss"))
        eta = ""
        if latest.get("train/steps_per_s", 0.0) > 0:
            left = max(self.total - step, 0) / latest["train/steps_per_s"]
            eta = f" | eta {int(left // 60)}m{int(left % 60):02d}s"
        lr = f" | lr {latest['train/lr']:.1e}" if "train/lr" in latest else ""
        filled = int(BAR * min(step, self.total) / max(self.total, 1))
        text = (f"[{self.name}] {'█' * filled}{'░' * (BAR - filled)} {step}/{self.total} | {rate:,.0f} ex/s"
                f"{' | ' + losses if losses else ''}{lr}{eta}")
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self.bar_shown = True
            return
        tenth = 10 * step // max(self.total, 1)
        if tenth > self.last_tenth:  # off a terminal: one line per tenth of the run
            self.last_tenth = tenth
            self._line(text)

    def _line(self, text: str) -> None:
        if self.tty and self.bar_shown:
            self.stream.write("\r\033[K")
            self.bar_shown = False
        self.stream.write(text + "\n")
        self.stream.flush()
