"""``queuenet predict [--url URL] PATH...``: classify files, folders and globs.

Prints a table (file, top label, probability) or ``--json``; a progress bar on a terminal;
a summary line (count, failures, images/s). Exit status: 0 every image answered, 1 any
image failed or a target matched nothing, 2 bad usage.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from client._client import DEFAULT_URL, Prediction, QueueNetClient
from client._exceptions import PredictError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}
)


@dataclass(frozen=True)
class Outcome:
    path: str
    predictions: tuple[Prediction, ...] = ()
    error: str = ""


def expand(targets: Iterable[str]) -> tuple[list[str], list[str]]:
    """Files to send, and the targets that matched nothing."""
    files: list[str] = []
    missing: list[str] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            found = [target]
        else:
            found = sorted(p for p in glob.glob(target, recursive=True) if Path(p).is_file())
        if found:
            files.extend(found)
        else:
            missing.append(target)
    return files, missing


class Progress:
    """A one-line bar on a terminal; silent otherwise."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.enabled = enabled and total > 1
        self.lock = threading.Lock()

    def step(self) -> None:
        with self.lock:
            self.done += 1
            if self.enabled:
                filled = int(30 * self.done / self.total)
                bar = "#" * filled + "." * (30 - filled)
                self.stream.write(f"\r[{bar}] {self.done}/{self.total}")
                if self.done == self.total:
                    self.stream.write("\n")
                self.stream.flush()


def classify(
    client: QueueNetClient,
    path: str,
    top_k: int | None,
    model: str | None = None,
    version: str | None = None,
) -> Outcome:
    try:
        return Outcome(path, tuple(client.predict(path, top_k=top_k, model=model, version=version)))
    except (PredictError, OSError) as exc:
        return Outcome(path, error=str(exc))


def write_table(outcomes: Sequence[Outcome], out: TextIO) -> None:
    width = max([len("file")] + [len(o.path) for o in outcomes])
    out.write(f"{'file':<{width}}  {'top label':<28} probability\n")
    for o in outcomes:
        if o.error:
            out.write(f"{o.path:<{width}}  ERROR: {o.error}\n")
        else:
            top = o.predictions[0]
            out.write(f"{o.path:<{width}}  {top.label:<28} {top.probability:.4f}\n")


def write_json(outcomes: Sequence[Outcome], out: TextIO) -> None:
    rows = [
        {"file": o.path, "error": o.error}
        if o.error
        else {"file": o.path, "predictions": [p.__dict__ for p in o.predictions]}
        for o in outcomes
    ]
    json.dump(rows, out, indent=2)
    out.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="queuenet predict", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument(
        "--url", default=os.environ.get("QUEUENET_URL", DEFAULT_URL), help="server base URL"
    )
    parser.add_argument("--top-k", type=int, default=None, help="labels per image (default 5)")
    parser.add_argument("--model", help="the model to ask (default: the server's default model)")
    parser.add_argument("--version", help="a version of --model (default: its serving version)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--api-key", default=os.environ.get("QUEUENET_API_KEY"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.version and not args.model:
        parser.error("--version needs --model")

    files, missing = expand(args.paths)
    for target in missing:
        sys.stderr.write(f"queuenet predict: no image matches {target!r}\n")
    progress = Progress(len(files), sys.stderr, sys.stderr.isatty() and not args.no_progress)
    started = time.monotonic()
    with QueueNetClient(args.url, timeout_s=args.timeout_s, api_key=args.api_key) as client:

        def one(path: str) -> Outcome:
            outcome = classify(client, path, args.top_k, args.model, args.version)
            progress.step()
            return outcome

        with ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
            outcomes = list(pool.map(one, files))
    elapsed_s = max(time.monotonic() - started, 1e-9)
    (write_json if args.json else write_table)(outcomes, sys.stdout)
    failures = sum(1 for o in outcomes if o.error) + len(missing)
    sys.stderr.write(
        f"{len(outcomes)} image(s), {failures} failed, {len(outcomes) / elapsed_s:.1f} images/s\n"
    )
    return 1 if failures or not files else 0
