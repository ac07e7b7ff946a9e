"""``tether models prepare NAME``: convert/build a model alias once into the cache."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="prepare the built-in models (smollm2, tiny-llama)")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    prepare = sub.add_parser("prepare", help="convert a model alias or .gguf file into a cached safetensors folder")
    prepare.add_argument("name", help="smollm2, tiny-llama, or a path to a .gguf file")
    prepare.set_defaults(func=_prepare)


def _prepare(args) -> int:
    from tether.models.registry import resolve_model

    print(resolve_model(args.name))
    return 0
