"""`hfkd convert`: a released CIFAR-100 teacher checkpoint into a folder that `--teacher` loads.

    hfkd convert download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth \
        --arch resnet32x4 --output_dir teachers/resnet32x4

What it does and writes: `hfkd.models.convert`.
"""

from __future__ import annotations

from hfkd.commands.cli import CommandParser
from hfkd.models.convert import RELEASE_NAME, TEACHER_ARCHS, convert_checkpoint
from hfkd.models.provenance import describe_provenance, teacher_provenance
from hfkd.utils.errors import UsageError


def main(argv: list[str] | None = None) -> int:
    accepted = ", ".join(f"{reference} / {name}" for reference, name in TEACHER_ARCHS.items())
    parser = CommandParser(
        prog="hfkd convert",
        description="Convert a released CIFAR-100 teacher checkpoint (RepDistiller / mdistiller cifar_teachers.tar) "
        "into a folder that --teacher loads.",
        epilog="example: hfkd convert cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth "
        "--arch resnet32x4 --output_dir teachers/resnet32x4",
    )
    parser.add_argument("checkpoint", help="The .pth file: {'model': state_dict} or a bare state dict.")
    parser.add_argument("--arch", required=True, help=f"The teacher, reference or hfkd name: {accepted}.")
    parser.add_argument("--output_dir", required=True, help="Folder to write (absent or empty unless --overwrite).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output_dir.")
    parser.add_argument("--release", default=RELEASE_NAME, help="Release the file comes from, for the provenance.")
    args = parser.parse_args(argv)
    try:
        output = convert_checkpoint(
            args.checkpoint, args.arch, args.output_dir, overwrite=args.overwrite, release=args.release
        )
    except UsageError as error:
        parser.error(str(error))
    provenance = teacher_provenance(output) or {}
    sha = provenance.get("source_sha256", "")[:12]
    print(f"Wrote {output}: {describe_provenance(provenance)}, sha256 {sha}...; use it with --teacher {output}")
    return 0
