"""``lit-vision optimize``: a split tree -> litdata chunks per split (folder or s3/gs/azure URL)."""

from __future__ import annotations

from lit_vision.commands.parsing import command_parser


def main(args: list[str]) -> int:
    """Parse ``--data.root ROOT --output DIR_OR_URL`` (and chunking options); write the streams."""
    from lit_vision.stream import optimize_tree  # numpy, PIL and litdata: only when it runs

    parser = command_parser("optimize", "Write each split of ROOT as a litdata stream.")
    parser.add_argument("--data.root", required=True, help="Split tree: train/, val/, [test/].")
    parser.add_argument("--output", required=True, help="Folder or s3://, gs://, azure:// URL.")
    parser.add_argument("--image_size", type=int, default=64, help="Side images are stored at.")
    parser.add_argument("--num_workers", type=int, default=2, help="Decoding processes.")
    parser.add_argument("--chunk_bytes", type=str, default="64MB", help="Size of a chunk file.")
    parser.add_argument(
        "--compression", type=str | None, default=None, help="None (raw pixels) or zstd."
    )
    cfg = parser.parse_args(args)
    written = optimize_tree(
        cfg["data.root"],
        cfg.output,
        image_size=cfg.image_size,
        num_workers=cfg.num_workers,
        chunk_bytes=cfg.chunk_bytes,
        compression=cfg.compression,
    )
    print(
        f"lit_vision optimize: {', '.join(f'{k} {n}' for k, n in written.items())} images "
        f"-> {cfg.output} ({cfg.image_size}px)"
    )
    return 0
