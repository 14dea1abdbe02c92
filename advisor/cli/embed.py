"""``advisor embed`` and the ``advisor cache`` group: embeddings to a file, and the embedding cache."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..cli_options import (
    dataset_options,
    device_option,
    emit_json,
    import_torch,
    json_option,
    model_options,
    print_table,
)


@click.command(name="embed")
@model_options
@dataset_options
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@device_option
@click.option("--num-workers", type=click.IntRange(min=0), default=None, show_default="auto",
              help="DataLoader worker processes for image files (auto: from the CPU count and the decoding cost).")
@click.option("--layers", "with_layers", is_flag=True, help="Also keep pooled per-layer states of both towers.")
@click.option("--no-cache", is_flag=True, help="Re-embed even when cached embeddings exist (and do not write the cache).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None, metavar="OUT.npz",
              help="Write image, text, labels (+ layers) for `advisor signals --from-embeddings`.")
@json_option
def embed_command(model: str, pretrained: str | None, image_size: int | None, weights_dir: str | None, dataset: Any,
                  shots: int | None, seed: int, max_images: int | None, split: str, batch_size: int, device: str,
                  num_workers: int | None, with_layers: bool, no_cache: bool, quiet: bool, output: str | None,
                  as_json: bool) -> None:
    """Embed one split of a dataset with one model (one batched pass, cached on disk).

    \b
    advisor embed --model lit-offline --dataset mnist-5k --split test
    advisor embed --model ViT-B-32 --pretrained openai --dataset folder:./images -o emb.npz
    """
    from ..embed import embed
    from ..embeddings_file import write as write_embeddings
    from ..specs import ModelSpec
    from ..terminal import set_quiet

    set_quiet(quiet)
    import_torch()

    if shots is not None and shots < 1:
        raise click.BadParameter("must be at least 1", param_hint="--shots")
    if max_images is not None and max_images < 1:
        raise click.BadParameter("must be at least 1", param_hint="--max-images")
    if output:
        from ..atomic import check_target

        check_target(output)  # a missing folder or a directory: one line before embedding
    emb = embed(ModelSpec(model, pretrained, image_size, weights_dir), dataset, split=split, shots=shots,
                seed=seed, max_images=max_images, device=device, batch_size=batch_size, num_workers=num_workers,
                use_cache=not no_cache, with_layers=with_layers, quiet=quiet)
    if output:
        write_embeddings(emb, output)
    m = emb.meta
    summary = {
        "model": model, "model_identity": m.get("model_identity"), "dataset": m.get("dataset"), "split": split,
        "split_hash": m.get("split_hash"), "n": int(emb.image.shape[0]), "d": int(emb.image.shape[1]),
        "classes": len(emb.class_names), "image_size": m.get("image_size"),
        "layers": [len(emb.image_layers or []), len(emb.text_layers or [])] if with_layers else None,
        "seconds": m.get("seconds"), "images_per_s": m.get("images_per_s"), "cache_hit": m.get("cache_hit"),
        "cache_key": m.get("cache_key"), "output": output,
    }
    if as_json:
        emit_json(summary)
        return
    print_table([{k: v for k, v in summary.items() if v is not None and k not in ("model_identity", "cache_key")}])


@click.group(name="cache")
def cache_group() -> None:
    """The embedding cache (.npz files; `--no-cache` on embed/signals bypasses it)."""


@cache_group.command(name="path")
@json_option
def cache_path(as_json: bool) -> None:
    """Print the embedding cache directory (under the user cache dir; env ADVISOR_CACHE moves it,
    ADVISOR_CACHE_MAX_GB caps its size, least recently used files going first)."""
    from ..cache import embeddings_dir, max_bytes, usage

    folder = embeddings_dir()
    if as_json:
        files, size = usage()
        emit_json({"path": str(folder), "files": files, "bytes": size, "max_bytes": max_bytes()})
        return
    click.echo(str(folder))


@cache_group.command(name="list")
@json_option
def cache_list(as_json: bool) -> None:
    """List cached embeddings: model, dataset, split, N x d, size."""
    from ..cache import entries

    rows = entries()
    if as_json:
        emit_json(rows)
        return
    print_table([{**r, "key": r["key"][:12]} for r in rows],
                ["key", "model", "dataset", "split", "shots", "seed", "n", "d", "with_layers", "image_size", "bytes",
                 "last_used"])


def _interactive() -> bool:
    """Whether a person can answer a question: stdin (and stderr, where it is asked) are terminals."""
    try:
        return sys.stdin is not None and sys.stdin.isatty() and sys.stderr.isatty()
    except (ValueError, AttributeError):  # closed streams
        return False


@cache_group.command(name="clear")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed without a terminal).")
@click.option("--older-than", "older_than", default=None, metavar="DURATION",
              help="Only embeddings not used for this long: 7d, 12h, 90m, 1d12h (no confirmation asked).")
@json_option
def cache_clear(yes: bool, older_than: str | None, as_json: bool) -> None:
    """Delete cached embeddings: all of them, or those unused for --older-than.

    Deleting all of them asks for confirmation on a terminal; without one (a script, a closed
    stdin) it is refused unless --yes is given."""
    from ..cache import clear, embeddings_dir, parse_duration

    seconds = parse_duration(older_than) if older_than is not None else None
    folder = embeddings_dir()
    if seconds is None and not yes:
        if not _interactive():
            raise click.ClickException(f"refusing to delete every cached embedding in {folder} without confirmation: "
                                   "pass --yes (no terminal to ask on)")
        click.confirm(f"Delete all cached embeddings in {folder}?", abort=True, err=True)
    n, freed = clear(older_than=seconds)
    if as_json:
        emit_json({"path": str(folder), "removed": n, "bytes_freed": freed, "older_than_s": seconds})
        return
    click.echo(f"Removed {n} file(s), {freed / 1e6:.1f} MB")
