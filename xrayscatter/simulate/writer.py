"""Write a simulated data set as sharded TFRecords, resumably and in parallel.

Layout (TFDS style)::

    tfrecords/<dataset>/<dataset>-<split>.tfrecord-<i:05d>-of-<n:05d>
    tfrecords/<dataset>/shard_index/<shard file name>.json   # per-shard summary
    tfrecords/<dataset>/manifest.json

(names and folder: ``xrayscatter/dataset.py``, which every reader of the data set goes through).

Splits are made *by run* (all images of a run land in one split). A shard is written to a
temporary name and renamed when complete, after its summary, so a shard file that exists
is complete; a killed run, started again, skips complete shards and writes the rest. Each
image depends only on (seed, image index), so the output is byte-identical whatever the
number of processes, the order of shards or the interruptions.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.config import PipelineConfig, SimulateConfig, stored_view_size
from xrayscatter.dataset import INDEX_DIR, MANIFEST, SPLITS, dataset_dir, shard_name
from xrayscatter.errors import XrayscatterError
from xrayscatter.files import atomic_path, progress_bar, write_atomically
from xrayscatter.provenance import package_versions
from xrayscatter.simulate.generator import SIMULATOR_VERSION, simulate_image_from_config
from xrayscatter.simulate.runs import STREAM_SPLIT, rng_for


@dataclass(frozen=True)
class ShardSpec:
    """One shard: its global number (over all splits, for job arrays), split, file name, images."""

    number: int
    split: str
    index: int
    count: int
    image_ids: tuple[int, ...]

    def filename(self, dataset: str) -> str:
        return shard_name(dataset, self.split, self.index, self.count)


def split_runs(sim: SimulateConfig, seed: int) -> dict[str, list[int]]:
    """Runs of each split: a seeded permutation of the runs, test first, then val, the rest train.
    Every non-zero fraction gets at least one run (when there are enough runs)."""
    num_runs = math.ceil(sim.num_images / sim.images_per_run)
    order = rng_for(seed, STREAM_SPLIT, 0).permutation(num_runs)
    n_test = max(1, round(sim.test_fraction * num_runs)) if sim.test_fraction > 0 and num_runs >= 3 else 0
    n_val = max(1, round(sim.val_fraction * num_runs)) if sim.val_fraction > 0 and num_runs >= 3 else 0
    return {
        "test": sorted(int(r) for r in order[:n_test]),
        "val": sorted(int(r) for r in order[n_test:n_test + n_val]),
        "train": sorted(int(r) for r in order[n_test + n_val:]),
    }


def plan_shards(config: PipelineConfig) -> list[ShardSpec]:
    """Every shard of the data set, numbered train first, then val, then test."""
    sim = config.simulate
    runs = split_runs(sim, config.seed)
    shards = []
    for split in SPLITS:
        ids = [i for r in runs[split] for i in range(r * sim.images_per_run, min((r + 1) * sim.images_per_run, sim.num_images))]
        count = math.ceil(len(ids) / sim.shard_size)
        for k in range(count):
            chunk = tuple(ids[k * sim.shard_size:(k + 1) * sim.shard_size])
            shards.append(ShardSpec(len(shards), split, k, count, chunk))
    return shards


def parse_shard_range(text: str) -> list[int]:
    """'3' → [3]; '0-9' → [0, …, 9]; '0-3,7' → [0, 1, 2, 3, 7]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise XrayscatterError(f"--shards: cannot read '{text}' (use e.g. '3', '0-9' or '0-3,7')") from None
    return sorted(set(out))


def _fingerprint(config: PipelineConfig) -> str:
    """Hash of what determines the images: a shard from another configuration is never reused."""
    sim = config.simulate
    key = {"seed": config.seed, "num_images": sim.num_images, "images_per_run": sim.images_per_run,
           "image_size": sim.image_size, "val_fraction": sim.val_fraction, "test_fraction": sim.test_fraction,
           "shard_size": sim.shard_size, "saxs_fraction": sim.saxs_fraction, "simulator_version": SIMULATOR_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Let this process reuse the memory of freed image-sized arrays instead of returning it to the system.

    The generator makes dozens of full-frame temporaries per image (4 MB each at 1024²). By default glibc
    may serve such a block from fresh ``mmap`` pages, or give the top of its heap back when freed, so a
    temporary can pay a page fault per 4 kB page again; with the mmap threshold at its 32 MB maximum and
    trimming off, freed arrays stay in the heap and are reused: 0.311 → 0.294 CPU s per 1024² image in
    one process on the 2-core development VM. Returns whether glibc took the settings (False elsewhere:
    nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def _write_shard(config: PipelineConfig, shard: ShardSpec, progress_queue=None) -> dict:
    """Simulate and write one shard (runs in a worker process). Returns its summary."""
    from xrayscatter.tf_runtime import import_tensorflow

    keep_freed_memory()

    tf = import_tensorflow()  # quietly, once per worker
    from xrayscatter.schema import encode_mask, serialize_example

    resized_size = stored_view_size(config)  # what training reads, stored when the image is larger
    out_dir = dataset_dir(config)
    final = out_dir / shard.filename(config.simulate.dataset)
    counts = np.zeros(len(ATTRIBUTES), dtype=np.int64)
    runs = set()
    with atomic_path(final) as tmp:  # the shard appears only at the end of the block, complete
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            mask_of_run = (None, b"")  # (run, its mask's PNG): the images of a run share their detector mask
            for image_id in shard.image_ids:
                image = simulate_image_from_config(config.simulate, config.seed, image_id)
                if mask_of_run[0] != image.run_id:
                    mask_of_run = (image.run_id, encode_mask(image.valid))
                writer.write(serialize_example(image.counts, image.labels, image.run_id, image.image_id,
                                               image.params, mask=image.valid, beam_xy=image.beam_xy,
                                               resized_size=resized_size, mask_png=mask_of_run[1]))
                counts += np.asarray(image.labels)
                runs.add(image.run_id)
                if progress_queue is not None:
                    progress_queue.put(1)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        summary = {"file": final.name, "split": shard.split, "number": shard.number,
                   "num_images": len(shard.image_ids), "first_image_id": shard.image_ids[0],
                   "last_image_id": shard.image_ids[-1], "runs": sorted(runs),
                   "attribute_counts": {a: int(c) for a, c in zip(ATTRIBUTES, counts)}, "sha256": digest,
                   "fingerprint": _fingerprint(config)}
        write_atomically(out_dir / INDEX_DIR / f"{final.name}.json", json.dumps(summary, indent=1, sort_keys=True))
    return summary


def _shard_done(config: PipelineConfig, shard: ShardSpec) -> bool:
    out_dir = dataset_dir(config)
    final = out_dir / shard.filename(config.simulate.dataset)
    index = out_dir / INDEX_DIR / f"{final.name}.json"
    if not final.exists():
        return False
    try:
        summary = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):
        return False  # a shard without its summary is rewritten
    if summary.get("fingerprint") != _fingerprint(config):
        raise XrayscatterError(
            f"{final}: written with a different configuration (seed, sizes or simulator version changed); "
            f"remove {out_dir} or choose another simulate.dataset name")
    return True


def _remove_stale_temporaries(out_dir: Path, dataset: str, shards: list[ShardSpec]) -> None:
    """Remove what a killed run left of *these* shards only: other hosts of a job array may be
    writing other shards into the same folder right now."""
    for shard in shards:
        for p in out_dir.glob(f".{shard.filename(dataset)}.tmp-*"):
            p.unlink(missing_ok=True)


def simulate_dataset(config: PipelineConfig, shard_selection: list[int] | None = None,
                     processes: int | None = None, progress: bool = True) -> Path:
    """Simulate the data set of ``config`` into ``tfrecords/<dataset>/``.

    Args:
        shard_selection: global shard numbers to write (job arrays); None → all, then the manifest.
        processes: worker processes (None → config, 0 → all cores; 1 → in this process).
    Returns:
        The data set folder.
    """
    out_dir = dataset_dir(config)
    (out_dir / INDEX_DIR).mkdir(parents=True, exist_ok=True)
    shards = plan_shards(config)
    if shard_selection is not None:
        bad = [n for n in shard_selection if not 0 <= n < len(shards)]
        if bad:
            raise XrayscatterError(f"--shards: {bad} outside 0-{len(shards) - 1} (this data set has {len(shards)} shards)")
        shards = [shards[n] for n in shard_selection]
    todo = [s for s in shards if not _shard_done(config, s)]
    _remove_stale_temporaries(out_dir, config.simulate.dataset, todo)
    n_proc = config.simulate.processes if processes is None else processes
    n_proc = n_proc or os.cpu_count() or 1
    n_proc = max(1, min(n_proc, len(todo))) if todo else 1
    total = sum(len(s.image_ids) for s in todo)

    skipped = len(shards) - len(todo)
    description = f"{config.simulate.dataset} ({len(todo)} shards, {skipped} already complete, {n_proc} processes)"
    with progress_bar("simulate", fields=("unit",), elapsed=True, disable=not progress) as bar:
        task = bar.add_task(description, total=total, unit="images")
        if n_proc == 1:
            for shard in todo:
                _write_shard(config, shard)
                bar.advance(task, len(shard.image_ids))
        else:
            context = multiprocessing.get_context("spawn")  # no fork after threads/TensorFlow
            with context.Manager() as manager:
                queue = manager.Queue()
                with ProcessPoolExecutor(n_proc, mp_context=context) as pool:
                    futures = [pool.submit(_write_shard, config, shard, queue) for shard in todo]
                    while not all(f.done() for f in futures):
                        try:
                            bar.advance(task, queue.get(timeout=0.2))
                        except Exception:  # noqa: BLE001 - queue.Empty, raised through the manager proxy
                            pass
                    for f in futures:
                        f.result()  # re-raise a worker's error (complete shards are kept)
        bar.update(task, completed=total)
    if shard_selection is None or all(_shard_done(config, s) for s in plan_shards(config)):
        finalize_dataset(config)
    elif progress:
        print(f"wrote shards {shard_selection[0]}-{shard_selection[-1]}; run 'xrayscatter simulate finalize' "
              f"when every job has finished")
    return out_dir


def finalize_dataset(config: PipelineConfig) -> Path:
    """Check that every shard and its summary are present, then write manifest.json (atomically).

    Raises:
        XrayscatterError: listing the missing shards.
    """
    from xrayscatter.schema import SCHEMA_DESCRIPTION

    out_dir = dataset_dir(config)
    shards = plan_shards(config)
    missing = [s.number for s in shards if not _shard_done(config, s)]
    if missing:
        raise XrayscatterError(f"{out_dir}: {len(missing)} of {len(shards)} shards missing (numbers {missing[:20]}"
                               f"{'…' if len(missing) > 20 else ''}); run 'xrayscatter simulate run --shards …' for them")
    splits = {}
    for split in SPLITS:
        mine = [s for s in shards if s.split == split]
        summaries = [json.loads((out_dir / INDEX_DIR / f"{s.filename(config.simulate.dataset)}.json").read_text()) for s in mine]
        counts = {a: sum(x["attribute_counts"][a] for x in summaries) for a in ATTRIBUTES}
        splits[split] = {"num_images": sum(x["num_images"] for x in summaries), "num_shards": len(mine),
                         "files": [x["file"] for x in summaries],
                         "runs": sorted({r for x in summaries for r in x["runs"]}),
                         "attribute_counts": counts}
    manifest = {
        "dataset": config.simulate.dataset, "attributes": list(ATTRIBUTES), "splits": splits,
        "num_images": config.simulate.num_images, "image_size": config.simulate.image_size,
        "images_per_run": config.simulate.images_per_run, "seed": config.seed,
        "config": config.to_dict(), "schema": SCHEMA_DESCRIPTION,
        "versions": package_versions(("numpy", "scipy", "tensorflow"), python=True,
                                     extra={"simulator": SIMULATOR_VERSION}),
        "fingerprint": _fingerprint(config),
    }
    return write_atomically(out_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
